"""Black-box tests of the sparsityd HTTP API (openapi.yaml) against a real `sparsityd serve`.

Every response is checked against openapi.yaml (documented status, content type, JSON
schema). Small models (tests/unit/data/graphs) keep most jobs at a few milliseconds; a big
synthetic GraphDef (daemon.big_model, 256 MiB) makes a prune job run for seconds where a
test needs a job to be running or queued.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import yaml

import daemon as D
from daemon import assert_problem, big_model, contract, daemons, module_daemons, serve_bin  # noqa: F401

CHAIN = D.graph("chain.pbtxt")  # const weights, 2 prunable MatMul layers, output "out"
CFG = D.SAMPLE_CONFIG
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture(scope="module")
def d(module_daemons):
    """One shared daemon for the tests that need no special option."""
    return module_daemons.new()


def submit_ok(dmn, contract, stage, **kw):
    r = dmn.submit(stage, **kw)
    assert r.status == 202, r.describe()
    j = contract.check(r)
    assert r.header("location") == "/v1/jobs/" + j["id"], r.describe()
    return j


def run_ok(dmn, contract, stage, **kw):
    j = submit_ok(dmn, contract, stage, **kw)
    j = dmn.wait_job(j["id"])
    assert j["state"] == "succeeded", json.dumps(j, indent=1)
    r = dmn.job(j["id"])
    return contract.check(r)


def cli(binary, *args):
    p = subprocess.run([binary] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, "%s\n%s\n%s" % (args, p.stdout, p.stderr)
    return p


def wait_state(dmn, job_id, states, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = dmn.job(job_id).json()
        if j["state"] in states:
            return j
        time.sleep(0.02)
    raise AssertionError("job %s never reached %s" % (job_id, states))


def start_big(dmn, contract, big_model):
    """Submits a prune job on the big model and waits until it is running."""
    r = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    j = contract.check(r)
    wait_state(dmn, j["id"], ("running", "succeeded", "failed"))
    j = dmn.job(j["id"]).json()
    assert j["state"] == "running", (
        "the big job finished before the test could use it running; make it bigger with "
        "SPARSITYD_TEST_BIG_LAYERS: %s" % json.dumps(j)[:500])
    return j


# ---------------------------------------------------------------------------------------
# operations endpoints


def test_healthz_readyz(d, contract):
    r = d.get("/healthz", auth=False)
    assert r.status == 200 and contract.check(r) == {"status": "ok"}, r.describe()
    r = d.get("/readyz", auth=False)
    assert r.status == 200 and contract.check(r) == {"status": "ready"}, r.describe()


def test_openapi_served(d, contract):
    r = d.get("/openapi.yaml", auth=False)
    assert r.status == 200, r.describe()
    contract.check(r)
    served = yaml.safe_load(r.body)
    assert served == contract.doc, "GET /openapi.yaml differs from the repository's openapi.yaml"
    assert served["openapi"].startswith("3.1")


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


# ---------------------------------------------------------------------------------------
# a job, end to end


def test_insert_job(d, contract, serve_bin, tmp_path):
    with open(CHAIN, "rb") as f:
        model = f.read()
    j = submit_ok(d, contract, "insert", model=model, config=CFG, outputs="out", name="first")
    assert j["stage"] == "insert" and j["name"] == "first" and j["outputs"] == ["out"]
    assert j["state"] in ("queued", "running", "succeeded"), j
    assert j["format"] is None and j["record_from"] is None
    assert TS.match(j["created_at"]), j
    d.wait_job(j["id"])
    job = contract.check(d.job(j["id"]))
    assert job["state"] == "succeeded", job
    # the CLI on the same inputs
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CFG)
    out, rec = tmp_path / "o.pbtxt", tmp_path / "r.txt"
    p = cli(serve_bin, "insert", "--model", CHAIN, "--config", cfg, "--outputs", "out",
            "--record", rec, "-o", out, "--json")
    want = json.loads(p.stdout)
    res = job["result"]
    assert res["stage"] == "insert"
    assert res["layers"] == want["layers"] and res["totals"] == want["totals"], res
    assert job["error"] is None and job["progress"] == 100 and job["attempts"] == 1
    for k in ("started_at", "finished_at", "updated_at"):
        assert job[k] and TS.match(job[k]), job
    assert D.ts(job["created_at"]) <= D.ts(job["started_at"]) <= D.ts(job["finished_at"])
    arts = {a["name"]: a for a in job["artifacts"]}
    assert set(arts) == {"input_model", "input_config", "model", "record", "report"}, arts
    assert {n for n, a in arts.items() if a["kind"] == "input"} == {"input_model", "input_config"}
    expect = {"input_model": model, "input_config": CFG.encode(), "model": out.read_bytes(),
              "record": rec.read_bytes()}
    for name, a in arts.items():
        assert a["href"] == "/v1/jobs/%s/artifacts/%s" % (job["id"], name), a
        r = d.get(a["href"])
        assert r.status == 200, r.describe()
        contract.check(r)
        assert len(r.body) == a["size"] == int(r.header("content-length")), (a, r.headers)
        assert D.sha256(r.body) == a["sha256"], a
        assert r.header("etag") == '"%s"' % a["sha256"], r.headers
        assert (r.header("accept-ranges") or "").lower() == "bytes", r.headers
        if name in expect:
            assert r.body == expect[name], "artifact %s differs from the CLI's / the upload" % name
        if name == "report":
            assert json.loads(r.body) == job["result"], "report artifact != job result"


def test_name_round_trip(d, contract):
    name = 'r\u00e9sum\u00e9 \u2713 "quoted" back\\slash <tag>'
    j = submit_ok(d, contract, "check", model=CHAIN, name=name)
    assert j["name"] == name, j["name"]
    assert d.job(j["id"]).json()["name"] == name


def test_artifact_ranges(d, contract):
    job = run_ok(d, contract, "insert", model=CHAIN, config=CFG, outputs="out")
    a = [x for x in job["artifacts"] if x["name"] == "model"][0]
    full = d.get(a["href"]).body
    n = len(full)
    assert n > 20
    for rng, lo, hi in (("bytes=0-9", 0, 9), ("bytes=5-", 5, n - 1), ("bytes=-7", n - 7, n - 1),
                        ("bytes=3-%d" % (n + 100), 3, n - 1)):
        r = d.get(a["href"], headers={"Range": rng})
        assert r.status == 206, "%s\n%s" % (rng, r.describe())
        contract.check(r)
        assert r.header("content-range") == "bytes %d-%d/%d" % (lo, hi, n), (rng, r.headers)
        assert r.body == full[lo:hi + 1], rng
        assert int(r.header("content-length")) == hi - lo + 1
    for rng in ("bytes=%d-" % n, "bytes=%d-%d" % (n + 5, n + 9)):
        r = d.get(a["href"], headers={"Range": rng})
        assert_problem(r, 416)
        contract.check(r)
        assert r.header("content-range") == "bytes */%d" % n, r.headers
    r = d.get(a["href"], headers={"If-None-Match": '"%s"' % a["sha256"]})
    assert r.status == 304 and r.body == b"", r.describe()
    r = d.get(a["href"], headers={"If-None-Match": '"%s"' % ("0" * 64)})
    assert r.status == 200 and r.body == full
    assert_problem(d.get("/v1/jobs/%s/artifacts/nope" % job["id"]), 404, "not-found")
    assert_problem(d.get("/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/artifacts/model"), 404, "not-found")


def test_job_log(d, contract):
    job = run_ok(d, contract, "check", model=CHAIN)
    r = d.get("/v1/jobs/%s/log" % job["id"])
    assert r.status == 200, r.describe()
    contract.check(r)
    assert r.content_type == "text/plain", r.headers
    lines = r.text.splitlines()
    assert len(lines) >= 2, r.text
    for line in lines:
        m = re.match(r"^(\S+) (.+)$", line)
        assert m and TS.match(m.group(1)), "log line %r is not '<RFC3339 UTC> <text>'" % line
    times = [D.ts(l.split(" ", 1)[0]) for l in lines]
    assert times == sorted(times), "log not oldest first"
    assert_problem(d.get("/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/log"), 404, "not-found")


def test_job_etag_304(d, contract):
    job = run_ok(d, contract, "check", model=CHAIN)
    r = d.job(job["id"])
    etag = r.header("etag")
    assert etag and re.match(r'^(W/)?"[^"]*"$', etag), r.headers
    r2 = d.job(job["id"], headers={"If-None-Match": etag})
    assert r2.status == 304 and r2.body == b"", r2.describe()
    contract.check(r2)
    r3 = d.job(job["id"], headers={"If-None-Match": '"something-else"'})
    assert r3.status == 200 and r3.header("etag") == etag


def test_check_and_prune_jobs(d, contract):
    job = run_ok(d, contract, "check", model=CHAIN)
    assert job["outputs"] == [] and job["result"]["stage"] == "check"
    assert {a["name"] for a in job["artifacts"]} == {"input_model", "report"}, job["artifacts"]
    job = run_ok(d, contract, "prune", model=CHAIN, config=CFG, outputs="out", fmt="pbtxt")
    assert job["format"] == "pbtxt" and job["result"]["model"]["format"] == "pbtxt"
    assert {a["name"] for a in job["artifacts"]} == {"input_model", "input_config", "model",
                                                     "report"}, job["artifacts"]
    pruned = d.artifact(job["id"], "model").body
    # check of the pruned model: every layer 2:4
    job = run_ok(d, contract, "check", model=pruned, outputs="out")
    assert job["result"]["layers"] and all(l["is_2of4"] for l in job["result"]["layers"]), job


def test_engine_rejections_fail_the_job(d, contract):
    cases = [
        (dict(stage="insert", model=CHAIN, config="prune_config { bogus: 1 }\n", outputs="out"),
         "bad-config", r":1:\d+"),
        (dict(stage="insert", model=b"\x08\x96\x01garbage\xff\xff\xff", config=CFG,
              outputs="out"), "bad-model", None),
        (dict(stage="prune", model=CHAIN, config=CFG + 'skip_layer_types: "MatMul"\n',
              outputs="out"), "no-layer-to-prune", None),
        (dict(stage="export", model=CHAIN, record="prune_record { bogus_field: 1 }\n",
              outputs="out"), "bad-record", r":1:\d+"),
        (dict(stage="check", model=CHAIN, fmt="metagraph"), "bad-model", None),
        (dict(stage="insert", model=CHAIN, config=CFG, outputs="nope"), "bad-model", "nope"),
    ]
    for kw, code, pattern in cases:
        stage = kw.pop("stage")
        r = d.submit(stage, **kw)
        assert r.status == 202, "%s: the POST must answer 202 even for bad inputs\n%s" % (
            code, r.describe())
        j = d.wait_job(r.json()["id"])
        contract.check(d.job(j["id"]))
        assert j["state"] == "failed", (code, j)
        assert j["error"] and j["error"]["code"] == code, (code, j["error"])
        assert j["error"]["message"], j
        if pattern:
            assert re.search(pattern, j["error"]["message"]), j["error"]
        assert j["result"] is None, j
        assert any(a["name"] == "input_model" for a in j["artifacts"]), j


# ---------------------------------------------------------------------------------------
# POST /v1/jobs errors


def test_post_errors_400(d, contract):
    def post_raw(body, ctype):
        return d.request("POST", "/v1/jobs", body=body, headers={"Content-Type": ctype})

    bad = []
    bad.append(("json body", post_raw(b'{"stage": "check"}', "application/json")))
    bad.append(("no boundary", post_raw(b"x", "multipart/form-data")))
    bad.append(("truncated multipart", post_raw(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"stage\"\r\n\r\ncheck\r\n--XyZ\r\n"
        b"Content-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nabc",
        "multipart/form-data; boundary=XyZ")))
    bad.append(("garbage multipart", post_raw(b"hello world, not multipart at all",
                                              "multipart/form-data; boundary=XyZ")))
    bad.append(("missing stage", d.post_job([("outputs", "out")],
                                            [("model", "m", b"node {}")])))
    bad.append(("missing model", d.submit("check")))
    bad.append(("unknown stage", d.submit("compress", model=CHAIN, outputs="out")))
    bad.append(("insert without config", d.submit("insert", model=CHAIN, outputs="out")))
    bad.append(("prune without config", d.submit("prune", model=CHAIN, outputs="out")))
    bad.append(("insert without outputs", d.submit("insert", model=CHAIN, config=CFG)))
    bad.append(("export without record", d.submit("export", model=CHAIN, outputs="out")))
    bad.append(("bad format", d.submit("check", model=CHAIN, fmt="onnx")))
    bad.append(("empty outputs", d.submit("insert", model=CHAIN, config=CFG, outputs="")))
    bad.append(("unknown part 'output'", d.submit("check", model=CHAIN,
                                                 extra_fields=[("output", "out")])))
    bad.append(("record and record_from", d.submit(
        "export", model=CHAIN, record="x", record_from="01ARZ3NDEKTSV4RRFFQ69G5FAV",
        outputs="out")))
    failures = []
    for what, r in bad:
        try:
            assert_problem(r, 400, "bad-request")
            contract.check(r)
        except AssertionError as e:
            failures.append("%s: %s" % (what, str(e).splitlines()[0] + "\n" + r.describe()))
    assert not failures, "\n\n".join(failures)
    # nothing of this created a job
    r = d.get("/v1/jobs?limit=200")
    assert not [j for j in r.json()["jobs"] if j["stage"] == "compress"]


def test_record_from_errors(d, contract):
    r = d.submit("export", model=CHAIN, record_from="01ARZ3NDEKTSV4RRFFQ69G5FAV", outputs="out")
    assert_problem(r, 404, "not-found")
    contract.check(r)
    chk = run_ok(d, contract, "check", model=CHAIN)
    r = d.submit("export", model=CHAIN, record_from=chk["id"], outputs="out")
    assert_problem(r, 409, "conflict")
    contract.check(r)
    bad = d.run_job("insert", model=CHAIN, config="bogus\n", outputs="out")
    assert bad["state"] == "failed"
    r = d.submit("export", model=CHAIN, record_from=bad["id"], outputs="out")
    assert_problem(r, 409, "conflict")
    # an uploaded record is the input_record artifact
    ins_id = run_ok(d, contract, "insert", model=CHAIN, config=CFG, outputs="out")["id"]
    rec = d.artifact(ins_id, "record").body
    j = d.run_job("export", model=CHAIN, record=rec, outputs="out")
    arts = {a["name"]: a for a in j["artifacts"]}
    assert "input_record" in arts and arts["input_record"]["kind"] == "input", arts
    assert arts["input_record"]["sha256"] == D.sha256(rec)
    assert d.artifact(j["id"], "input_record").body == rec
    # record_from a deleted insert job: 404
    assert d.request("DELETE", "/v1/jobs/" + ins_id).status == 204
    r = d.submit("export", model=CHAIN, record_from=ins_id, outputs="out")
    assert_problem(r, 404, "not-found")
    # a succeeded insert is accepted (the export itself fails here: the model is not frozen)
    ins = run_ok(d, contract, "insert", model=CHAIN, config=CFG, outputs="out")
    j = submit_ok(d, contract, "export", model=CHAIN, record_from=ins["id"], outputs="out")
    assert j["record_from"] == ins["id"], j


# ---------------------------------------------------------------------------------------
# list


def test_list_filters_etag(d, contract):
    run_ok(d, contract, "check", model=CHAIN)
    run_ok(d, contract, "insert", model=CHAIN, config=CFG, outputs="out")
    r = d.get("/v1/jobs")
    assert r.status == 200, r.describe()
    body = contract.check(r)
    assert body["jobs"], body
    ids = [j["id"] for j in body["jobs"]]
    assert len(ids) == len(set(ids))
    created = [D.ts(j["created_at"]) for j in body["jobs"]]
    assert created == sorted(created, reverse=True), "list is not newest first"
    etag = r.header("etag")
    assert etag, r.headers
    r2 = d.get("/v1/jobs", headers={"If-None-Match": etag})
    assert r2.status == 304, r2.describe()
    contract.check(r2)
    for q, key, val in (("state=succeeded", "state", "succeeded"), ("stage=check", "stage", "check"),
                        ("state=failed&stage=insert", "state", "failed")):
        r = d.get("/v1/jobs?" + q)
        b = contract.check(r)
        assert all(j[key] == val for j in b["jobs"]), (q, b)
    b = contract.check(d.get("/v1/jobs?stage=check&state=succeeded"))
    assert b["jobs"] and all(j["stage"] == "check" and j["state"] == "succeeded" for j in b["jobs"])
    # a new job changes the list's ETag
    run_ok(d, contract, "check", model=CHAIN)
    r3 = d.get("/v1/jobs", headers={"If-None-Match": etag})
    assert r3.status == 200 and r3.header("etag") != etag, r3.describe()
    failures = []
    for q in ("limit=0", "limit=201", "limit=abc", "state=bogus", "stage=bogus", "state=",
              "cursor=garbage"):
        r = d.get("/v1/jobs?" + q)
        try:
            assert_problem(r, 400, "bad-request")
            contract.check(r)
        except AssertionError:
            failures.append("GET /v1/jobs?%s -> %d %s" % (q, r.status, r.body[:200]))
    assert not failures, "\n".join(failures)


def test_pagination(daemons, contract):
    dmn = daemons.new()
    made = []
    for i in range(7):
        made.append(submit_ok(dmn, contract, "check", model=CHAIN, name="p%d" % i)["id"])
    for limit in (1, 3, 7, 50):
        seen, cursor, pages = [], None, 0
        while True:
            q = "/v1/jobs?limit=%d" % limit + ("&cursor=" + cursor if cursor else "")
            b = contract.check(dmn.get(q))
            assert len(b["jobs"]) <= limit
            seen += [j["id"] for j in b["jobs"]]
            pages += 1
            cursor = b["next_cursor"]
            if cursor is None:
                break
            assert pages <= 10, "pagination does not end"
        assert len(seen) == len(set(seen)), "duplicates across pages (limit %d): %s" % (limit, seen)
        assert seen == made[::-1], "limit %d: pages give %s, expected newest first %s" % (
            limit, seen, made[::-1])
        assert pages in (-(-7 // limit), -(-7 // limit) + 1), (limit, pages)
    # default limit 50
    b = contract.check(dmn.get("/v1/jobs"))
    assert len(b["jobs"]) == 7 and b["next_cursor"] is None


# ---------------------------------------------------------------------------------------
# a daemon with one worker and a queue of one: running / queued jobs


@pytest.fixture(scope="module")
def slow(module_daemons):
    return module_daemons.new(args=["--workers", "1", "--queue-max", "1", "--max-attempts", "3"])


def test_queue_full_long_poll_cancel_delete(slow, contract, big_model):
    dmn = slow
    a = start_big(dmn, contract, big_model)
    b = submit_ok(dmn, contract, "check", model=CHAIN, name="queued")
    assert dmn.job(b["id"]).json()["state"] == "queued"
    # queue full: queue-max 1 and one job queued
    r = dmn.submit("check", model=CHAIN)
    assert_problem(r, 429, "queue-full")
    contract.check(r)
    ra = r.header("retry-after")
    assert ra and ra.isdigit() and int(ra) >= 1, "429 without a Retry-After in seconds: %s" % (
        r.headers,)

    # delete of a queued or running job: 409
    for jid in (a["id"], b["id"]):
        r = dmn.request("DELETE", "/v1/jobs/" + jid)
        assert_problem(r, 409, "conflict")
        contract.check(r)

    # cancel the queued job: canceled at once, then 409 on a second cancel
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % b["id"])
    assert r.status == 200, r.describe()
    assert contract.check(r)["state"] == "canceled"
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % b["id"])
    assert_problem(r, 409, "conflict")
    contract.check(r)
    assert_problem(dmn.request("POST", "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel"), 404)

    # long-poll on the running job: every answer comes as soon as the job changes; the one
    # that shows it terminal comes within a second of a 50 ms poller seeing it terminal
    seen = {}

    def poller():
        while "t" not in seen:
            j = dmn.job(a["id"]).json()
            if j["state"] in D.TERMINAL:
                seen["t"] = time.time()
                return
            time.sleep(0.05)
    t = threading.Thread(target=poller, daemon=True)
    t.start()
    etag = dmn.job(a["id"]).header("etag")
    t_end = None
    deadline = time.time() + 120
    while time.time() < deadline:
        r = dmn.job(a["id"] + "?wait=30", headers={"If-None-Match": etag})
        assert r.status in (200, 304), r.describe()
        contract.check(r)
        if r.status == 200:
            assert r.header("etag") != etag, "200 to a long-poll with an unchanged ETag"
            etag = r.header("etag")
            if r.json()["state"] in D.TERMINAL:
                t_end = time.time()
                break
    t.join(10)
    assert t_end is not None and "t" in seen, "the big job never finished"
    lag = t_end - seen["t"]
    print("long-poll answered %.3f s after the poller saw the job finish" % lag)
    assert lag < 1.0, "long-poll woke %.2f s after the job finished (limit 1 s)" % lag
    assert dmn.job(a["id"]).json()["state"] == "succeeded"

    # long-poll timeouts: 304 when If-None-Match still matches; without If-None-Match
    # there is nothing to wait for, so the job comes back at once
    etag = dmn.job(a["id"]).header("etag")
    r = dmn.job(a["id"] + "?wait=1", headers={"If-None-Match": etag})
    assert r.status == 304 and 0.8 <= r.elapsed < 3, (r.status, r.elapsed)
    r = dmn.job(a["id"] + "?wait=30")
    assert r.status == 200 and r.elapsed < 1, (r.status, r.elapsed)
    contract.check(r)
    for bad in ("wait=abc", "wait=-1", "wait=61", "wait=", "wait=+5"):
        assert_problem(dmn.job(a["id"] + "?" + bad), 400, "bad-request")

    # cancel a running job: it ends canceled, without outputs
    c = start_big(dmn, contract, big_model)
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % c["id"])
    assert r.status == 200, r.describe()
    assert contract.check(r)["state"] in ("running", "canceled")
    j = dmn.wait_job(c["id"])
    assert j["state"] == "canceled", j
    assert not [x for x in j["artifacts"] if x["kind"] == "output"], (
        "a canceled job lists outputs: %s" % j["artifacts"])
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % c["id"])
    assert_problem(r, 409, "conflict")

    # delete terminal jobs: 204, then 404 everywhere
    for jid in (a["id"], b["id"], c["id"]):
        r = dmn.request("DELETE", "/v1/jobs/" + jid)
        assert r.status == 204 and r.body == b"", r.describe()
        contract.check(r)
        for path in ("/v1/jobs/" + jid, "/v1/jobs/%s/log" % jid,
                     "/v1/jobs/%s/artifacts/input_model" % jid):
            assert_problem(dmn.get(path), 404, "not-found")
        assert_problem(dmn.request("DELETE", "/v1/jobs/" + jid), 404, "not-found")
    ids = [j["id"] for j in dmn.get("/v1/jobs?limit=200").json()["jobs"]]
    assert not {a["id"], b["id"], c["id"]} & set(ids)


# ---------------------------------------------------------------------------------------
# limits


def test_upload_too_large(daemons, contract):
    dmn = daemons.new(args=["--max-upload", "20000"])
    r = dmn.submit("check", model=b"\x00" * 65536)
    assert_problem(r, 413, "too-large")
    contract.check(r)
    assert dmn.get("/healthz").status == 200
    assert dmn.get("/v1/jobs").json()["jobs"] == [], "a refused upload left a job"
    j = dmn.run_job("check", model=CHAIN)
    assert j["state"] == "succeeded"


def test_disk_full_507(daemons, contract, tmp_path):
    data = str(tmp_path / "tiny")
    os.makedirs(data)
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", data],
                           capture_output=True, text=True, timeout=20)
    except OSError as e:
        pytest.skip("cannot run mount for a full-disk tmpfs: %s" % e)
    if p.returncode != 0:
        pytest.skip("cannot mount a 2 MiB tmpfs for a full disk (needs root / CAP_SYS_ADMIN): "
                    + p.stderr.strip())
    try:
        dmn = daemons.new(data_dir=data)
        r = dmn.submit("check", model=os.urandom(3 << 20))
        assert_problem(r, 507, "insufficient-storage")
        contract.check(r)
        assert dmn.get("/healthz").status == 200
        j = dmn.run_job("check", model=CHAIN)
        assert j["state"] == "succeeded", "after a 507 the space must be free again: %s" % j
        # the disk fills while a job writes its output: the job fails (insufficient-storage),
        # lists no output, and the daemon goes on
        model = D.write_mlp(str(tmp_path / "m.pb"), 1, 560)  # 1.2 MiB in, 1.2 MiB out
        r = dmn.submit("prune", model=model, config=CFG, outputs="out")
        assert r.status == 202, r.describe()
        j = dmn.wait_job(r.json()["id"])
        assert j["state"] == "failed", "prune of 1.2 MiB into %s: %s" % (
            subprocess.run(["df", "-h", data], capture_output=True, text=True).stdout, j)
        code_ok = j["error"]["code"] == "insufficient-storage"
        err = j["error"]
        assert not [a for a in j["artifacts"] if a["kind"] == "output"], j["artifacts"]
        j = dmn.run_job("check", model=CHAIN)
        assert j["state"] == "succeeded", j
        assert dmn.stop() == 0
        assert code_ok, "a job that fills the disk must fail with error.code " \
            "insufficient-storage (SD_ENOSPACE), got %s" % err
    finally:
        for dd in daemons.all:
            dd.kill()
        subprocess.run(["umount", "-l", data], capture_output=True)


# ---------------------------------------------------------------------------------------
# tenants


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
    # with a token, a non-loopback address needs no --insecure
    D.token_create(serve_bin, data, "t")
    dmn = D.Daemon(serve_bin, data, port=port)
    dmn.argv = lambda: [serve_bin, "serve", "--listen", "0.0.0.0:%d" % port, "--data-dir", data]
    try:
        dmn.start()
    finally:
        assert dmn.stop() == 0


def test_serve_help(serve_bin):
    p = subprocess.run([serve_bin, "serve", "--help"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, "serve --help: exit %d\n%s" % (p.returncode, p.stderr)
    text = p.stdout + p.stderr
    for opt in ("--listen", "--data-dir", "--workers", "--max-upload", "--queue-max",
                "--max-attempts", "--retention-hours", "--log-level", "--log-file", "--config",
                "--insecure", "--print-config"):
        # either the flag itself or its setting (the config-file name, dashes as underscores)
        assert opt in text or re.search(r"^%s\b" % opt[2:].replace("-", "_"), text, re.M), (
            "serve --help lacks %s" % opt)


def test_serve_print_config(serve_bin, tmp_path):
    p = subprocess.run([serve_bin, "serve", "--print-config", "--workers", "3",
                        "--data-dir", str(tmp_path / "pc")], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 0, p.stderr
    assert re.search(r"workers\W+3\b", p.stdout), p.stdout


# ---------------------------------------------------------------------------------------
# metrics


def parse_metrics(text):
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)(\s+\d+)?$", line)
        assert m, "bad metrics line %r" % line
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def test_metrics(daemons, contract):
    dmn = daemons.new()
    before = parse_metrics(dmn.get("/metrics").text)
    up0 = sum(v for n, l, v in before if n == "sparsityd_upload_bytes_total")
    body_model = open(CHAIN, "rb").read()
    for _ in range(2):
        dmn.run_job("check", model=CHAIN)
    dmn.run_job("insert", model=CHAIN, config="bogus\n", outputs="out")
    dmn.get("/nope")
    r = dmn.get("/metrics")
    assert r.status == 200
    contract.check(r)
    assert r.header("content-type").replace(" ", "").startswith("text/plain;version=0.0.4"), \
        r.headers
    s = parse_metrics(r.text)
    jobs = {l.get("state"): v for n, l, v in s if n == "sparsityd_jobs"}
    assert set(jobs) >= {"queued", "running", "succeeded", "failed", "canceled"}, jobs
    assert jobs["succeeded"] == 2 and jobs["failed"] == 1, jobs
    assert re.search(r"^# TYPE sparsityd_jobs gauge$", r.text, re.M)
    dur = [(n, l) for n, l, v in s if n.startswith("sparsityd_stage_duration_seconds")]
    assert any(l.get("stage") == "check" for n, l in dur), dur
    assert re.search(r"^# TYPE sparsityd_stage_duration_seconds (histogram|summary)$", r.text, re.M)
    st = {l.get("status") for n, l, v in s if n == "sparsityd_http_requests_total"}
    assert {"200", "202", "404"} <= st, st
    assert re.search(r"^# TYPE sparsityd_http_requests_total counter$", r.text, re.M)
    up = sum(v for n, l, v in s if n == "sparsityd_upload_bytes_total")
    assert up - up0 >= 3 * len(body_model), (up0, up)
    assert re.search(r"^# TYPE sparsityd_upload_bytes_total counter$", r.text, re.M)


# ---------------------------------------------------------------------------------------
# drain


def test_sigterm_drains(daemons, contract, big_model):
    dmn = daemons.new(args=["--workers", "1", "--max-attempts", "3"])
    a = start_big(dmn, contract, big_model)
    b = submit_ok(dmn, contract, "check", model=CHAIN)
    dmn.signal(signal.SIGTERM)
    time.sleep(0.2)
    assert dmn.proc.poll() is None, "exited before the running job finished"
    problems = []
    r = dmn.submit("check", model=CHAIN)
    try:
        assert_problem(r, 503, "unavailable")
        contract.check(r)
    except AssertionError as e:
        problems.append("POST /v1/jobs while draining: %s" % e)
    r = dmn.get("/readyz", auth=False)
    try:
        assert r.status == 503, r.describe()
        contract.check(r)
    except AssertionError as e:
        problems.append("GET /readyz while draining: %s" % e)
    rc = dmn.proc.wait(120)
    if rc != 0:
        problems.append("exit status %s after SIGTERM\n%s" % (rc, dmn.logs()))
    dmn.start()
    ja = dmn.job(a["id"]).json()
    if not (ja["state"] == "succeeded" and ja["attempts"] == 1):
        problems.append("the running job must finish during the drain: %s" % ja)
    jb = dmn.wait_job(b["id"])
    if jb["state"] != "succeeded":
        problems.append("queued job after restart: %s" % jb)
    assert not problems, "\n".join(problems)


def test_config_file_round_trip(serve_bin, tmp_path):
    """--print-config output, given back as --config FILE, configures the same values."""
    p1 = subprocess.run([serve_bin, "serve", "--print-config", "--workers", "3", "--queue-max",
                         "7", "--max-upload", "12345", "--data-dir", str(tmp_path / "x")],
                        capture_output=True, text=True, timeout=20)
    assert p1.returncode == 0, p1.stderr
    cfg = tmp_path / "sparsityd.conf"
    cfg.write_text(p1.stdout)
    p2 = subprocess.run([serve_bin, "serve", "--config", str(cfg), "--print-config"],
                        capture_output=True, text=True, timeout=20)
    assert p2.returncode == 0, p2.stderr
    assert p2.stdout == p1.stdout, "config file not round-tripped:\n%s\n---\n%s" % (p1.stdout,
                                                                                    p2.stdout)
    # a flag overrides the file
    p3 = subprocess.run([serve_bin, "serve", "--config", str(cfg), "--workers", "5",
                         "--print-config"], capture_output=True, text=True, timeout=20)
    assert p3.returncode == 0 and re.search(r"workers\W+5\b", p3.stdout), p3.stdout + p3.stderr


def test_log_file(daemons):
    dmn = daemons.new(args=["--log-file", os.path.join(daemons.root, "sd.log")])
    j = dmn.run_job("check", model=CHAIN)
    assert dmn.stop() == 0
    with open(os.path.join(daemons.root, "sd.log")) as f:
        text = f.read()
    assert j["id"] in text, "the log file does not mention the job:\n" + text[-2000:]


def test_log_reopened_on_sighup(daemons):
    """Log rotation: after the file is moved away, SIGHUP makes the daemon write a new
    one, and again after the next rotation (the path is not forgotten)."""
    log = os.path.join(daemons.root, "rot.log")
    dmn = daemons.new(args=["--log-file", log])
    for gen in (1, 2):
        os.rename(log, "%s.%d" % (log, gen))
        os.kill(dmn.proc.pid, signal.SIGHUP)
        deadline = time.time() + 5
        while not os.path.exists(log) and time.time() < deadline:
            time.sleep(0.05)
        j = dmn.run_job("check", model=CHAIN)
        with open(log) as f:
            text = f.read()
        assert "SIGHUP" in text and j["id"] in text, \
            "rotation %d: the new log lacks the job:\n%s" % (gen, text[-2000:])
    assert dmn.stop() == 0


def test_chunked_upload(daemons, contract):
    """A body sent with Transfer-Encoding: chunked (no Content-Length) streams like any other;
    past --max-upload it is refused with 413."""
    dmn = daemons.new(args=["--max-upload", "200000"])
    ctype, body = D.multipart([("stage", "check")], [("model", "m.pbtxt", open(CHAIN, "rb").read())])

    def post_chunked(data):
        conn = dmn.connection()
        try:
            try:
                conn.request("POST", "/v1/jobs", body=iter([data[i:i + 1000]
                                                             for i in range(0, len(data), 1000)]),
                             headers={"Content-Type": ctype, "Transfer-Encoding": "chunked"},
                             encode_chunked=True)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer (413) and close before the body is all sent
            try:
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError) as e:
                return D.Response("POST", "/v1/jobs", 0, {}, (
                    "no response: the daemon closed the connection (%s)" % e).encode(), 0)
            return D.Response("POST", "/v1/jobs", resp.status,
                              {k.lower(): v for k, v in resp.getheaders()}, resp.read(), 0)
        finally:
            conn.close()
    r = post_chunked(body)
    assert r.status == 202, r.describe()
    j = dmn.wait_job(contract.check(r)["id"])
    assert j["state"] == "succeeded", j
    ctype, body = D.multipart([("stage", "check")], [("model", "m.pb", b"\0" * 300000)])
    r = post_chunked(body)
    assert_problem(r, 413, "too-large")


def test_concurrent_clients(daemons, contract, big_model):
    """20 uploads at once all get 202 with distinct ids and succeed; 10 long-polls on one
    queued job all wake when it starts."""
    dmn = daemons.new(args=["--workers", "1"])
    results = [None] * 20

    def one(i):
        results[i] = dmn.submit("insert", model=CHAIN, config=CFG, outputs="out", name="c%d" % i)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    for r in results:
        assert r is not None and r.status == 202, r and r.describe()
    ids = [r.json()["id"] for r in results]
    assert len(set(ids)) == 20
    for i in ids:
        assert dmn.wait_job(i)["state"] == "succeeded"
    listed = [j["id"] for j in contract.check(dmn.get("/v1/jobs?limit=200"))["jobs"]]
    assert sorted(listed) == sorted(ids)
    # 10 waiters on one job queued behind a big running one
    big = start_big(dmn, contract, big_model)
    target = submit_ok(dmn, contract, "check", model=CHAIN)
    r = dmn.job(target["id"])
    assert r.json()["state"] == "queued"
    etag = r.header("etag")
    woke = [None] * 10

    def waiter(i):
        r = dmn.job(target["id"] + "?wait=20", headers={"If-None-Match": etag})
        woke[i] = (r.status, r.elapsed)
    ws = [threading.Thread(target=waiter, args=(i,)) for i in range(10)]
    for w in ws:
        w.start()
    for w in ws:
        w.join(30)
    for w in woke:
        assert w is not None and w[0] in (200, 304), woke
    assert all(w[0] == 200 and w[1] < 10 for w in woke), (
        "long-polls did not all wake on the job's change: %s" % woke)
    assert dmn.wait_job(big["id"])["state"] == "succeeded"
    assert dmn.wait_job(target["id"])["state"] == "succeeded"


def test_prune_record_when_asked(d, contract, serve_bin, tmp_path):
    """prune writes a record output when asked (openapi.yaml: part emit_record=true), the
    same record as `sparsityd prune --record`."""
    job = run_ok(d, contract, "prune", model=CHAIN, config=CFG, outputs="out",
                 extra_fields=[("emit_record", "true")])
    arts = {a["name"] for a in job["artifacts"] if a["kind"] == "output"}
    assert arts == {"model", "record", "report"}, arts
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CFG)
    cli(serve_bin, "prune", "--model", CHAIN, "--config", cfg, "--outputs", "out", "-o",
        tmp_path / "o.pbtxt", "--record", tmp_path / "r.txt")
    assert d.artifact(job["id"], "record").body == (tmp_path / "r.txt").read_bytes()
    # without it: no record
    job = run_ok(d, contract, "prune", model=CHAIN, config=CFG, outputs="out")
    assert "record" not in {a["name"] for a in job["artifacts"]}


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


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_upload_streams_to_disk(daemons, big_model):
    """A 256 MiB upload does not grow the daemon's peak RSS by anywhere near its size: the
    body streams to disk. (The job is refused after the upload, by a record_from that
    names no job, so no stage runs.)"""
    dmn = daemons.new()
    base = vm_hwm(dmn.proc.pid)
    boundary = "sdtest-stream"
    head = ("--%s\r\nContent-Disposition: form-data; name=\"stage\"\r\n\r\nexport\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"model\"; filename=\"big.pb\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" % (boundary, boundary)).encode()
    tail = ("\r\n--%s\r\nContent-Disposition: form-data; name=\"outputs\"\r\n\r\nout\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"record_from\"\r\n\r\n"
            "01ARZ3NDEKTSV4RRFFQ69G5FAV\r\n--%s--\r\n" % (boundary, boundary, boundary)).encode()
    size = os.path.getsize(big_model)
    conn = dmn.connection(120)
    conn.putrequest("POST", "/v1/jobs")
    conn.putheader("Content-Type", "multipart/form-data; boundary=" + boundary)
    conn.putheader("Content-Length", str(len(head) + size + len(tail)))
    conn.endheaders()
    try:
        conn.send(head)
        with open(big_model, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                conn.send(b)
        conn.send(tail)
    except (BrokenPipeError, ConnectionResetError):
        pass
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 404, resp.status
    peak = vm_hwm(dmn.proc.pid)
    print("peak RSS %d MiB -> %d MiB for a %d MiB upload" % (base >> 20, peak >> 20, size >> 20))
    assert peak - base < 64 << 20, "peak RSS grew by %d MiB during a %d MiB upload" % (
        (peak - base) >> 20, size >> 20)


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


def test_sigint_exits_0(daemons):
    dmn = daemons.new()
    assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"
    dmn.signal(signal.SIGINT)
    rc = dmn.proc.wait(30)
    assert rc == 0, "exit status %s after SIGINT\n%s" % (rc, dmn.logs())


def test_if_none_match_lists_and_weak(d, contract):
    """If-None-Match as HTTP defines it (RFC 9110 13.1.2): a list of entity tags, weak
    comparison, and "*" all match the current tag -> 304."""
    job = run_ok(d, contract, "check", model=CHAIN)
    art = [a for a in job["artifacts"] if a["name"] == "report"][0]
    bad = []
    for path in ("/v1/jobs/" + job["id"], art["href"], "/v1/jobs"):
        etag = d.get(path).header("etag")
        weak = etag if etag.startswith("W/") else "W/" + etag
        for inm in ('"nope", ' + etag, weak, "*"):
            r = d.get(path, headers={"If-None-Match": inm})
            if r.status != 304:
                bad.append("GET %s with If-None-Match: %s -> %d (want 304)" % (path, inm,
                                                                               r.status))
    assert not bad, "\n".join(bad)


def test_bearer_scheme_case_insensitive(daemons, serve_bin):
    """The auth scheme is case-insensitive (RFC 9110 11.1): 'bearer' works like 'Bearer'."""
    data = daemons.data_dir()
    tok = D.token_create(serve_bin, data, "t")
    dmn = daemons.new(data_dir=data, token=tok)
    r = dmn.get("/v1/jobs", auth=False, headers={"Authorization": "bearer " + tok})
    assert r.status == 200, r.describe()


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


def _longpoll_async(dmn, job_id, etag, wait=20):
    out = {}

    def run():
        t0 = time.time()
        r = dmn.job(job_id + "?wait=%d" % wait, headers={"If-None-Match": etag})
        out["r"], out["t"] = r, time.time() - t0
    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(0.3)  # let it start waiting
    return th, out


def test_long_poll_wakes_on_cancel_and_delete(daemons, contract, big_model):
    dmn = daemons.new(args=["--workers", "1"])
    a = start_big(dmn, contract, big_model)
    b = submit_ok(dmn, contract, "check", model=CHAIN)
    r = dmn.job(b["id"])
    assert r.json()["state"] == "queued"
    th, out = _longpoll_async(dmn, b["id"], r.header("etag"))
    t0 = time.time()
    assert dmn.request("POST", "/v1/jobs/%s/cancel" % b["id"]).status == 200
    th.join(25)
    assert out["r"].status == 200 and out["r"].json()["state"] == "canceled", out["r"].describe()
    assert time.time() - t0 < 1.5, "long-poll woke %.2f s after the cancel" % (time.time() - t0)
    # deleting the job a long-poll waits on ends the wait (404), it does not run to the timeout
    r = dmn.job(b["id"])
    th, out = _longpoll_async(dmn, b["id"], r.header("etag"), wait=6)
    t0 = time.time()
    assert dmn.request("DELETE", "/v1/jobs/" + b["id"]).status == 204
    th.join(25)
    waited = time.time() - t0
    assert out["r"].status in (404, 200), out["r"].describe()
    assert waited < 2, "a long-poll on a deleted job answered %.1f s after the delete " \
        "(%d)" % (waited, out["r"].status)
    dmn.wait_job(a["id"])


def rss_anon(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def test_download_streams_from_disk(daemons, big_model):
    """Downloading a 256 MiB artifact does not copy it into the daemon's heap (anonymous
    RSS stays low while the bytes flow), and the bytes hash to the listed sha256."""
    import hashlib
    dmn = daemons.new()
    r = dmn.submit_file("check", big_model)
    assert r.status == 202, r.describe()
    j = dmn.wait_job(r.json()["id"])
    art = [a for a in j["artifacts"] if a["name"] == "input_model"][0]
    base = rss_anon(dmn.proc.pid)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_anon(dmn.proc.pid))
            except (OSError, AssertionError):
                return
            time.sleep(0.01)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    conn = dmn.connection(120)
    h = hashlib.sha256()
    n = 0
    try:
        conn.request("GET", art["href"])
        resp = conn.getresponse()
        assert resp.status == 200
        while True:
            b = resp.read(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
            time.sleep(0.001)
    finally:
        conn.close()
        done.set()
        th.join(5)
    assert n == art["size"] and h.hexdigest() == art["sha256"]
    print("anon RSS %d MiB -> peak %d MiB while serving %d MiB" % (base >> 20, peak[0] >> 20,
                                                                   n >> 20))
    assert peak[0] - base < 64 << 20, "anonymous RSS grew by %d MiB while serving a %d MiB " \
        "artifact" % ((peak[0] - base) >> 20, n >> 20)
