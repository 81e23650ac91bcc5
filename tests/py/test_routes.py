"""The daemon's route table and openapi.yaml describe the same API.

`sparsityd serve --print-routes` prints the table that drives dispatch; every route
must be an operation of openapi.yaml and every operation a route, so the document
cannot drift from the code.
"""
import os
import subprocess

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_route_table_matches_openapi(sparsityd):
    out = subprocess.run([sparsityd, "serve", "--print-routes"], capture_output=True,
                         text=True, check=True).stdout
    routes = {tuple(line.split(" ", 1)) for line in out.splitlines() if line}
    assert routes, "no routes printed"
    with open(os.path.join(ROOT, "openapi.yaml")) as f:
        spec = yaml.safe_load(f)
    ops = set()
    for path, item in spec["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "delete", "patch"):
                ops.add((method.upper(), path))
    assert routes == ops, f"only in code: {routes - ops}; only in openapi.yaml: {ops - routes}"
