"""Jobs through the API, end to end: each stage run over HTTP gives what the CLI gives on
the same inputs, with its artifacts, log and result; engine errors fail the job (not the
POST); record_from; the job list with its filters, ETag and pagination.

Small models (tests/unit/data/graphs) keep every job at a few milliseconds; every
response is checked against openapi.yaml by the contract fixture.
"""

import json
import re
import subprocess

import daemon as D
from daemon import CFG, CHAIN, TS, assert_problem, cli, run_ok, submit_ok


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


def report(binary, doc, *args):
    return subprocess.run([binary, "report"] + list(args), input=doc, capture_output=True,
                          text=True, timeout=30)


def test_report_is_the_cli_table(d, contract, serve_bin, tmp_path):
    """`sparsityd report` prints a job's report artifact as the table the CLI prints for
    the same stage and inputs (the one table; the AMCT drop-in logs it this way)."""
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CFG)
    runs = {"insert": ["--config", cfg, "--outputs", "out", "--record", tmp_path / "r.txt",
                       "-o", tmp_path / "i.pbtxt"],
            "prune": ["--config", cfg, "--outputs", "out", "-o", tmp_path / "p.pbtxt"],
            "check": []}
    for stage, args in runs.items():
        table = cli(serve_bin, stage, "--model", CHAIN, *args).stdout
        kw = {"config": CFG, "outputs": "out"} if args else {}
        job = run_ok(d, contract, stage, model=CHAIN, **kw)
        href = [a["href"] for a in job["artifacts"] if a["name"] == "report"][0]
        p = report(serve_bin, d.get(href).text, "--model", CHAIN)
        assert p.returncode == 0 and p.stderr == "", p
        assert p.stdout == table, "%s: report\n%s\nCLI\n%s" % (stage, p.stdout, table)
        assert "LAYER" in table and "mm_a " in table, table


def test_report_warnings_and_refusals(serve_bin):
    doc = {"stage": "insert", "layers": [], "totals": {}, "warnings": ["the saver is V1"]}
    p = report(serve_bin, json.dumps(doc))
    assert p.returncode == 0, p
    assert p.stdout.startswith("sparsityd insert: - ") and "warning" not in p.stdout, p
    assert p.stderr == "warning: the saver is V1\n", p
    for bad in ("not json", "[]", '{"stage": "compress"}'):
        p = report(serve_bin, bad)
        assert p.returncode == 2 and p.stdout == "", (bad, p)
        assert p.stderr.startswith("sparsityd: error: stdin"), (bad, p)


def test_name_round_trip(d, contract):
    name = 'r\u00e9sum\u00e9 \u2713 "quoted" back\\slash <tag>'
    j = submit_ok(d, contract, "check", model=CHAIN, name=name)
    assert j["name"] == name, j["name"]
    assert d.job(j["id"]).json()["name"] == name


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
    # view=brief: the same jobs with only the members a list row shows; its own ETag
    full = contract.check(d.get("/v1/jobs"))["jobs"]
    rb = d.get("/v1/jobs?view=brief")
    brief = contract.check(rb)["jobs"]
    keys = {"id", "stage", "state", "name", "progress", "input_bytes", "created_at",
            "updated_at", "started_at", "finished_at"}
    assert [j["id"] for j in brief] == [j["id"] for j in full]
    for b, f in zip(brief, full):
        assert set(b) == keys and b == {k: f[k] for k in keys}, (b, f)
    assert rb.header("etag") != d.get("/v1/jobs?view=full").header("etag")
    assert d.get("/v1/jobs?view=brief", headers={"If-None-Match": rb.header("etag")}).status == 304
    for q in ("limit=0", "limit=201", "limit=abc", "state=bogus", "stage=bogus", "state=",
              "cursor=garbage", "view=bogus", "view="):
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


def test_pages_end_at_about_1_mib(daemons, contract):
    """Jobs with 60 KiB names: a page of limit=200 ends early, near 1 MiB, and the
    cursors still visit every job once, in both views (200 such jobs made 13 MB pages
    that took a thread a second to render)."""
    dmn = daemons.new()
    made = [submit_ok(dmn, contract, "check", model=CHAIN, name=("%02d" % i) * 30720)["id"]
            for i in range(40)]
    for view in ("full", "brief"):
        seen, cursor, sizes = [], None, []
        while True:
            r = dmn.get("/v1/jobs?limit=200&view=%s" % view + ("&cursor=" + cursor if cursor else ""))
            b = contract.check(r)
            sizes.append(len(r.body))
            seen += [j["id"] for j in b["jobs"]]
            cursor = b["next_cursor"]
            if cursor is None:
                break
            assert len(sizes) <= 10, "pagination does not end"
        assert seen == made[::-1], view
        assert len(sizes) >= 3 and max(sizes) <= (1 << 20) + (64 << 10), (view, sizes)


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
