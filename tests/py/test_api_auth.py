"""Tenants and tokens: a request without a valid token is 401, one tenant's jobs are
404 to another everywhere (get, log, artifacts, cancel, delete, record_from, long-poll,
list), tokens are stored hashed, the Bearer scheme is case-insensitive, and a
non-loopback listen address needs a token and TLS, or --insecure.
"""

import os
import re
import subprocess

import daemon as D
from daemon import CFG, CHAIN, assert_problem, run_ok


def test_tenants(daemons, contract, serve_bin):
    data = daemons.data_dir()
    ta = D.token_create(serve_bin, data, "alice")
    tb = D.token_create(serve_bin, data, "bob")
    assert ta != tb
    dmn = daemons.new(data_dir=data, token=ta)
    # no token / a wrong token: 401
    for tok in ("", "sdt_" + "0" * 64):
        hdr = {"Authorization": "Bearer " + tok} if tok else {}
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")):
            r = dmn.request(method, path, auth=False, headers=hdr)
            assert_problem(r, 401)
            contract.check(r)
        r = dmn.submit("check", model=CHAIN, auth=False, headers=hdr)
        assert_problem(r, 401)
    assert dmn.get("/healthz", auth=False).status == 200
    # alice's jobs
    ja = run_ok(dmn, contract, "insert", model=CHAIN, config=CFG, outputs="out")
    jb = dmn.run_job("check", model=CHAIN, token=tb)
    assert jb["state"] == "succeeded"
    # bob cannot see alice's job: 404 (not 403) everywhere
    for method, path in (("GET", "/v1/jobs/" + ja["id"]), ("GET", "/v1/jobs/%s/log" % ja["id"]),
                         ("GET", "/v1/jobs/%s/artifacts/model" % ja["id"]),
                         ("POST", "/v1/jobs/%s/cancel" % ja["id"]),
                         ("DELETE", "/v1/jobs/" + ja["id"])):
        r = dmn.request(method, path, token=tb)
        assert_problem(r, 404, "not-found")
    r = dmn.submit("export", model=CHAIN, record_from=ja["id"], outputs="out", token=tb)
    assert_problem(r, 404, "not-found")
    r = dmn.get("/v1/jobs/%s?wait=5" % ja["id"], token=tb)
    assert_problem(r, 404, "not-found")
    assert r.elapsed < 1, "a long-poll on another tenant's job waited %.1f s" % r.elapsed
    for q in ("?state=succeeded", "?stage=insert", "?cursor=" + jb["id"], "?limit=1"):
        seen = [j["id"] for j in dmn.get("/v1/jobs" + q, token=tb).json()["jobs"]]
        assert ja["id"] not in seen, "tenant bob sees alice's job with %s" % q
    ids_b = [j["id"] for j in dmn.get("/v1/jobs", token=tb).json()["jobs"]]
    ids_a = [j["id"] for j in dmn.get("/v1/jobs", token=ta).json()["jobs"]]
    assert ids_b == [jb["id"]] and ids_a == [ja["id"]], (ids_a, ids_b)
    # alice still has her job
    assert dmn.get("/v1/jobs/" + ja["id"]).status == 200
    # tokens are stored hashed, never in plain text
    for fn in os.listdir(data):
        if fn.startswith("sparsityd.db"):
            with open(os.path.join(data, fn), "rb") as f:
                blob = f.read()
            assert ta.encode() not in blob and ta[4:].encode() not in blob, (
                "a plain token is stored in %s" % fn)


def test_non_loopback_refused_without_insecure(serve_bin, tmp_path):
    port = D.free_port()
    data = str(tmp_path / "d")
    p = subprocess.run([serve_bin, "serve", "--listen", "0.0.0.0:%d" % port, "--data-dir", data],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode != 0, "serve --listen 0.0.0.0 without tokens or --insecure must refuse"
    assert p.stderr.strip(), "refusal without a message"
    assert re.search(r"insecure|loopback|token", p.stderr, re.I), p.stderr
    # with --insecure it starts
    dmn = D.Daemon(serve_bin, data, args=["--insecure"], port=port)
    dmn.argv = lambda: [serve_bin, "serve", "--listen", "0.0.0.0:%d" % port, "--data-dir",
                        data, "--insecure"]
    try:
        dmn.start()
        assert dmn.get("/healthz").status == 200
    finally:
        assert dmn.stop() == 0
    # a token alone is not enough beyond loopback: TLS is needed too (test_tls.py starts
    # one with both)
    D.token_create(serve_bin, data, "t")
    p = subprocess.run([serve_bin, "serve", "--listen", "0.0.0.0:%d" % port, "--data-dir", data],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and "without TLS" in p.stderr, (p.returncode, p.stderr)


def test_bearer_scheme_case_insensitive(daemons, serve_bin):
    """The auth scheme is case-insensitive (RFC 9110 11.1): 'bearer' works like 'Bearer'."""
    data = daemons.data_dir()
    tok = D.token_create(serve_bin, data, "t")
    dmn = daemons.new(data_dir=data, token=tok)
    r = dmn.get("/v1/jobs", auth=False, headers={"Authorization": "bearer " + tok})
    assert r.status == 200, r.describe()
