"""The daemon answers as openapi.yaml says: the document it serves is the repository's,
sound as JSON Schema, and every documented route and method is served; other routes
and methods get 404 and 405 with an Allow header; problems carry the documented codes
and no uninitialised members.

Every response is checked against openapi.yaml (documented status, content type, JSON
schema) by the contract fixture; the daemons are started by conftest.py's fixtures.
"""

import yaml

import daemon as D
from daemon import CHAIN, assert_problem, run_ok


def test_openapi_served(d, contract):
    r = d.get("/openapi.yaml", auth=False)
    assert r.status == 200, r.describe()
    contract.check(r)
    served = yaml.safe_load(r.body)
    assert served == contract.doc, "GET /openapi.yaml differs from the repository's openapi.yaml"
    assert served["openapi"].startswith("3.1")


def test_openapi_etag_304(d, contract):
    """The document is compiled in and served like the dashboard's page: its own ETag
    answers 304 with no body, another tag the whole document."""
    r = d.get("/openapi.yaml", auth=False)
    etag = r.header("etag")
    assert etag and etag.startswith('"'), r.describe()
    assert r.header("cache-control") == "no-cache", r.describe()
    r304 = d.get("/openapi.yaml", auth=False, headers={"If-None-Match": etag})
    assert r304.status == 304 and r304.body == b"", r304.describe()
    contract.check(r304)
    other = d.get("/openapi.yaml", auth=False, headers={"If-None-Match": '"other"'})
    assert other.status == 200 and other.body == r.body, other.describe()


def test_openapi_document_sound(contract):
    """Every $ref resolves, every schema is a valid JSON Schema 2020-12, every operation
    has an operationId and documents its error responses as problem+json."""
    from jsonschema import Draft202012Validator
    doc = contract.doc
    refs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref" and isinstance(v, str):
                    refs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    for ref in refs:
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            assert part in node, "unresolved $ref %s" % ref
            node = node[part]
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    ops = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            assert op.get("operationId") and op["operationId"] not in ops, (path, method)
            ops.add(op["operationId"])
            for status, resp in op["responses"].items():
                resp = contract._resolve(resp)
                if status[0] in "45" and status != "503" or status == "default":
                    assert "application/problem+json" in resp.get("content", {}), (
                        path, method, status)


def test_unknown_route_404(d, contract):
    for path in ("/nope", "/v1/nope", "/v1/jobs/x/y/z/w"):
        r = d.get(path)
        assert_problem(r, 404)


def test_wrong_method_405(d):
    for method, path, must in (("DELETE", "/v1/jobs", {"GET", "POST"}),
                               ("PUT", "/healthz", {"GET"}),
                               ("GET", "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", {"POST"}),
                               ("POST", "/metrics", {"GET"})):
        r = d.request(method, path)
        assert_problem(r, 405)
        allow = {m.strip().upper() for m in (r.header("allow") or "").split(",") if m.strip()}
        assert must <= allow, "%s %s: Allow %r lacks %s" % (method, path, r.header("allow"), must)


def test_openapi_routes_match_daemon(d, contract):
    """Every path and method of openapi.yaml is served (its answer is a documented one);
    every other method on those paths is 405 with an Allow listing exactly the documented
    methods (HEAD/OPTIONS tolerated)."""
    fake = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    problems = []
    for template, item in contract.doc["paths"].items():
        path = template.replace("{id}", fake).replace("{name}", "model")
        documented = {m.upper() for m in item if m in ("get", "post", "put", "delete", "patch")}
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if (method, template) == ("GET", "/v1/events"):
                continue  # a stream that never ends: test_events.py reads it
            body, hdr = None, {}
            if method in ("POST", "PUT", "PATCH"):
                ctype, body = D.multipart([], [])
                hdr = {"Content-Type": ctype}
            r = d.request(method, path, body=body, headers=hdr)
            try:
                if method in documented:
                    assert r.status != 405, "documented method answered 405"
                    contract.check(r)
                else:
                    assert_problem(r, 405)
                    allow = {m.strip().upper() for m in (r.header("allow") or "").split(",")
                             if m.strip()} - {"HEAD", "OPTIONS"}
                    assert allow == documented, "Allow %r, documented %s" % (
                        r.header("allow"), sorted(documented))
            except AssertionError as e:
                problems.append("%s %s -> %d: %s" % (method, path, r.status,
                                                     str(e).splitlines()[0]))
    assert not problems, "\n".join(problems)


def test_problem_members_clean(d, contract):
    """Problems carry no uninitialised extension members (line/column/node)."""
    job = run_ok(d, contract, "check", model=CHAIN)
    fake = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    rs = [d.get("/v1/jobs/" + fake), d.get("/v1/jobs/%s/log" % fake),
          d.get("/v1/jobs/%s/artifacts/model" % fake),
          d.get("/v1/jobs/%s/artifacts/nope" % job["id"]),
          d.request("POST", "/v1/jobs/%s/cancel" % job["id"]),
          d.request("DELETE", "/v1/jobs/" + fake),
          d.get("/v1/jobs?state=bogus"), d.get("/v1/jobs?limit=0"), d.get("/nope"),
          d.submit("compress", model=CHAIN)]
    bad = []
    for r in rs:
        assert r.status >= 400, r.describe()
        bad += D.problem_members_clean(r)
    assert not bad, "\n".join(bad)


def test_protocol_problem_codes(daemons, serve_bin):
    """The problem codes openapi.yaml documents for the HTTP-level errors (the type URI
    names the problem, so a 401 is not a 'bad-request')."""
    data = daemons.data_dir()
    tok = D.token_create(serve_bin, data, "t")
    dmn = daemons.new(data_dir=data, token=tok)
    job = dmn.run_job("check", model=CHAIN)
    size = [a for a in job["artifacts"] if a["name"] == "report"][0]["size"]
    cases = [
        (dmn.get("/v1/jobs", auth=False), 401, "unauthorized"),
        (dmn.request("DELETE", "/v1/jobs"), 405, "method-not-allowed"),
        (dmn.get("/nope"), 404, "not-found"),
        (dmn.get("/v1/jobs/%s/artifacts/report" % job["id"],
                 headers={"Range": "bytes=%d-" % (size + 10)}), 416, "range-not-satisfiable"),
    ]
    bad = []
    for r, status, code in cases:
        try:
            assert_problem(r, status, code)
        except AssertionError as e:
            bad.append(str(e).splitlines()[0] + " (%s)" % r)
    assert not bad, "\n".join(bad)
