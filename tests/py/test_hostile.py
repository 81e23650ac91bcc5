"""Hostile requests and files against a real `sparsityd serve`.

Table-driven: every case is one request (or one file submitted as a job) with its exact
expected answer: HTTP status, problem `code` (application/problem+json, UTF-8 JSON whose
string members are all there and whose text names no server path), and for a job whose
input is bad, the job's final state with `error.code` and a non-empty `error.message`.
After every case the daemon process is alive and GET /healthz answers 200 (a daemon that
died is restarted on its data directory, so one crash fails one case, not the rest).

The daemons run with --max-attempts 1: a job that crashed the daemon fails with
attempts-exhausted after the restart instead of crashing it again.

No TensorFlow here: models are hand-made protobuf bytes (daemon.py, hostile.py).
"""

import json
import os
import socket
import time

import pytest

import daemon as D
import hostile as H
from hostile import form, job_form, part, raw

CHAIN_PATH = D.graph("chain.pbtxt")
with open(CHAIN_PATH, "rb") as _f:
    CHAIN = _f.read()  # const weights, 2 prunable MatMul layers (mm_a, mm_b), output "out"
CFG = D.SAMPLE_CONFIG
FAKE_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # well-formed, names no job
SMALL_MAX_UPLOAD = 1048576
ARGS = ["--max-attempts", "1"]


# ---------------------------------------------------------------------------------------
# the daemons and the jobs the cases refer to


class Ctx:
    """The daemons of this module and the jobs the cases name."""

    def __init__(self, factory, serve_bin):
        self.d = factory.new(args=ARGS)
        self.small = factory.new(args=ARGS + ["--max-upload", str(SMALL_MAX_UPLOAD)])
        data = factory.data_dir()
        self.token = D.token_create(serve_bin, data, "t")
        self.token2 = D.token_create(serve_bin, data, "t2")
        self.authd = factory.new(data_dir=data, token=self.token, args=ARGS)
        self.tmp = factory.root
        d = self.d
        # a succeeded check job (its report is the artifact of the Range cases)
        self.check = d.run_job("check", model=CHAIN)
        assert self.check["state"] == "succeeded", self.check
        self.check_id = self.check["id"]
        rep = [a for a in self.check["artifacts"] if a["name"] == "report"][0]
        self.report_href = rep["href"]
        self.report_size = rep["size"]
        self.report_etag = '"%s"' % rep["sha256"]
        r = d.get(rep["href"])
        assert r.status == 200, r.describe()
        self.report = r.body
        self.check_etag = d.job(self.check_id).header("etag")
        # a succeeded insert (its record), a failed insert
        ins = d.run_job("insert", model=CHAIN, config=CFG, outputs="out")
        assert ins["state"] == "succeeded", ins
        self.insert_id = ins["id"]
        self.record = d.artifact(self.insert_id, "record").body
        bad = d.run_job("insert", model=CHAIN, config="bogus\n", outputs="out")
        assert bad["state"] == "failed", bad
        self.failed_insert_id = bad["id"]
        # tenant t2's jobs on the auth daemon
        a = self.authd
        other = a.run_job("insert", model=CHAIN, config=CFG, outputs="out", token=self.token2)
        assert other["state"] == "succeeded", other
        self.other_id = other["id"]

    def daemon(self, which):
        return getattr(self, which)


@pytest.fixture(scope="module")
def ctx(module_daemons, serve_bin):
    return Ctx(module_daemons, serve_bin)


# ---------------------------------------------------------------------------------------
# case kinds


class Req:
    """One request: send(ctx, daemon) -> Response; the expected status and problem code
    (code None: not a problem). check(ctx, response, problem) looks further; for a job that
    must be created (creates=True) it is check(ctx, job JSON). A refused POST /v1/jobs
    (creates=False) must not create a job."""

    def __init__(self, send, status, code=None, check=None, on="d", creates=None, alt=()):
        self.send, self.status, self.code, self.check, self.on = send, status, code, check, on
        self.creates = creates  # None: not a job creation; True/False: a job is/isn't made
        self.alt = alt  # statuses also taken (answered by libmicrohttpd itself): not checked


def bad_post(id, make, status=400, code="bad-request", check=None, on="d", headers=None):
    return pytest.param(Req(_post(make, headers), status, code, check, on, creates=False), id=id)


def ok_post(id, make, check=None, on="d"):
    return pytest.param(Req(_post(make), 202, None, check, on, creates=True), id=id)


def call(id, method, target, status, code=None, headers=None, check=None, on="d", body=None,
         timeout=10, alt=()):
    """target / headers: values or functions of ctx."""
    def send(c, dmn):
        t = target(c) if callable(target) else target
        h = headers(c) if callable(headers) else (headers or [])
        return raw(dmn, method, t, h, body, timeout=timeout)
    return pytest.param(Req(send, status, code, check, on, alt=alt), id=id)


def _post(make, headers=None):
    def send(c, dmn):
        ctype, body = make(c) if callable(make) else make
        h = [("Content-Type", ctype)] if ctype is not None else []
        h += (headers(c) if callable(headers) else headers) or []
        return raw(dmn, "POST", "/v1/jobs", h, body, timeout=60)
    return send


def detail_names(*words):
    def check(c, r, p):
        for w in words:
            assert w in p["detail"], "detail %r does not name %r" % (p["detail"], w)
    return check


def allow_has(*methods):
    def check(c, r, p):
        allow = {m.strip().upper() for m in (r.header("allow") or "").split(",") if m.strip()}
        assert set(methods) <= allow, "Allow %r lacks %s\n%s" % (r.header("allow"), methods,
                                                                 r.describe())
    return check


def www_auth(c, r, p):
    assert (r.header("www-authenticate") or "").split(" ")[0].lower() == "bearer", (
        "401 without WWW-Authenticate: Bearer\n" + r.describe())


def content_range_star(c, r, p):
    want = "bytes */%d" % c.report_size
    assert r.header("content-range") == want, "416 with Content-Range %r, want %r\n%s" % (
        r.header("content-range"), want, r.describe())


# multipart bodies ------------------------------------------------------------------------

def chain_parts(stage="check"):
    return [part("stage", stage), part("model", CHAIN, filename="chain.pbtxt",
                                       ctype="application/octet-stream")]


def valid_form(boundary="XX"):
    return form(chain_parts(), boundary)


def with_parts(*extra, stage="check", boundary="XX"):
    return form(chain_parts(stage) + list(extra), boundary)


def insert_outputs(value):
    """An insert job whose outputs part is value (str or bytes)."""
    return job_form("insert", CHAIN, CFG, fields=[("outputs", value)])


NAMELESS_BODY = b"--XX\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XX--\r\n"
MP = "multipart/form-data; boundary=XX"

MULTIPART = [
    bad_post("mp-nameless-part-alone", (MP, NAMELESS_BODY)),
    bad_post("mp-nameless-part-in-valid-form",
             with_parts(part(None, "x"))),
    bad_post("mp-part-without-content-disposition",
             with_parts(part(None, "x", disposition=b"", ctype="text/plain"))),
    bad_post("mp-empty-name", with_parts(part("", "x"))),
    bad_post("mp-disposition-not-form-data",
             with_parts(part(None, "x", disposition=b'attachment; name="stage2"'))),
    bad_post("mp-content-type-without-boundary",
             ("multipart/form-data", valid_form()[1])),
    bad_post("mp-boundary-71-chars", valid_form("b" * 71)),
    ok_post("mp-boundary-70-chars-accepted", valid_form("b" * 70)),
    bad_post("mp-body-is-json", ("application/json", b'{"stage": "check", "model": "x"}')),
    bad_post("mp-body-is-text", ("text/plain", b"stage=check\nmodel=node {}\n")),
    bad_post("mp-no-content-type", (None, valid_form()[1])),
    bad_post("mp-urlencoded-form",
             ("application/x-www-form-urlencoded",
              b"stage=check&model=node+%7B+name%3A+%22x%22+op%3A+%22NoOp%22+%7D")),
    bad_post("mp-truncated-before-closing-boundary",
             (MP, valid_form()[1][:-len(b"--XX--\r\n") - 10])),
    bad_post("mp-truncated-inside-headers",
             (MP, b"--XX\r\nContent-Disposition: form-data; name=\"stage\"\r\n\r\ncheck\r\n"
                  b"--XX\r\nContent-Disposition: form-da")),
    bad_post("mp-garbage-bytes", (MP, H.random_bytes(11, 4096))),
    bad_post("mp-only-closing-boundary", (MP, b"--XX--\r\n")),
    bad_post("mp-empty-body", (MP, b"")),
    bad_post("mp-part-headers-over-8KiB",
             form([part("stage", "check"),
                   part("model", CHAIN, filename="m", ctype="application/octet-stream",
                        extra=b"X-Pad: " + b"a" * 9000 + b"\r\n")])),
    bad_post("mp-filename-over-8KiB",
             form([part("stage", "check"),
                   part("model", CHAIN, filename="f" * 9000, ctype="application/octet-stream")])),
    bad_post("mp-33-parts",
             form(chain_parts() + [part("outputs", "o%d" % i) for i in range(31)])),
    ok_post("mp-32-parts-accepted",
            form(chain_parts() + [part("outputs", "o%d" % i) for i in range(30)]),
            check=lambda c, j: _outputs_are(j, ["o%d" % i for i in range(30)])),
    bad_post("mp-unknown-part", with_parts(part("output", "out")), check=detail_names("output")),
    bad_post("mp-nul-in-part-name",
             form([part(b"stage\x00evil", "check"),
                   part("model", CHAIN, filename="m", ctype="application/octet-stream")])),
    bad_post("mp-nul-in-part-name-of-model",
             form([part("stage", "check"),
                   part(b"model\x00x", CHAIN, filename="m", ctype="application/octet-stream")])),
    bad_post("mp-non-utf8-part-name", with_parts(part(b"\xff\xfe\xc3", "x"))),
]


def _outputs_are(j, want):
    assert j["outputs"] == want, "job outputs %r, want %r" % (j["outputs"], want)


REPEATED = [
    ok_post("rep-outputs-is-a-list",
            with_parts(part("outputs", "out"), part("outputs", "mm_b")),
            check=lambda c, j: _outputs_are(j, ["out", "mm_b"])),
    bad_post("rep-stage", with_parts(part("stage", "check")), check=detail_names("stage")),
    bad_post("rep-name", with_parts(part("name", "a"), part("name", "b")),
             check=detail_names("name")),
    bad_post("rep-format", with_parts(part("format", "pbtxt"), part("format", "pbtxt")),
             check=detail_names("format")),
    bad_post("rep-record_from",
             lambda c: job_form("export", CHAIN, fields=[("outputs", "out"),
                                                        ("record_from", c.insert_id),
                                                        ("record_from", c.insert_id)]),
             check=detail_names("record_from")),
    bad_post("rep-emit_record",
             job_form("prune", CHAIN, CFG, fields=[("outputs", "out"), ("emit_record", "true"),
                                                   ("emit_record", "true")]),
             check=detail_names("emit_record")),
    bad_post("rep-model", with_parts(part("model", CHAIN, filename="m2")),
             check=detail_names("model")),
    bad_post("rep-config",
             form(chain_parts("insert") + [part("outputs", "out"),
                                           part("config", CFG, filename="c1"),
                                           part("config", CFG, filename="c2")]),
             check=detail_names("config")),
    bad_post("rep-record",
             lambda c: form(chain_parts("export") + [part("outputs", "out"),
                                                     part("record", c.record, filename="r1"),
                                                     part("record", c.record, filename="r2")]),
             check=detail_names("record")),
]

OUTPUTS = [
    bad_post("outputs-only-commas", insert_outputs(",,,")),
    bad_post("outputs-empty-name-inside", insert_outputs("a,,b")),
    bad_post("outputs-empty", insert_outputs("")),
    bad_post("outputs-whitespace-only", insert_outputs("  \t ")),
    bad_post("outputs-trailing-comma", insert_outputs("out,")),
    bad_post("outputs-leading-comma", insert_outputs(",out")),
    bad_post("outputs-nul-byte", insert_outputs(b"out\x00mm_a")),
    bad_post("outputs-non-utf8", insert_outputs(b"out,\xff\xfe")),
    bad_post("outputs-control-char", insert_outputs(b"out\x01x")),
    bad_post("outputs-newline", insert_outputs(b"out\nmm_a")),
]

TEXT = [
    bad_post("text-non-utf8-name",
             job_form("check", CHAIN, fields=[("name", b"job \xff\xfe\xc3")])),
    bad_post("text-nul-in-stage", form([part("stage", b"check\x00"),
                                        part("model", CHAIN, filename="m")])),
    bad_post("text-nul-in-stage-then-junk", form([part("stage", b"check\x00insert"),
                                                  part("model", CHAIN, filename="m")])),
    bad_post("text-part-over-64KiB", job_form("check", CHAIN, fields=[("name", "n" * 70000)])),
    bad_post("text-unknown-stage", job_form("compress", CHAIN), check=detail_names("compress")),
    bad_post("text-empty-stage", job_form("", CHAIN)),
    bad_post("text-bad-format", job_form("check", CHAIN, fields=[("format", "onnx")])),
    bad_post("text-format-with-nul", job_form("check", CHAIN, fields=[("format", b"pbtxt\x00x")])),
    # booleans read as the settings do: true/1/yes, false/0/no, nothing else
    bad_post("text-emit_record-maybe",
             job_form("prune", CHAIN, CFG, fields=[("outputs", "out"), ("emit_record", "maybe")])),
    bad_post("text-emit_record-2",
             job_form("prune", CHAIN, CFG, fields=[("outputs", "out"), ("emit_record", "2")])),
    bad_post("text-emit_record-on-insert",
             job_form("insert", CHAIN, CFG, fields=[("outputs", "out"), ("emit_record", "true")])),
    # emit_record=false asks for nothing, so any stage takes it (clients may always send it)
    ok_post("text-emit_record-false-on-check",
            job_form("check", CHAIN, fields=[("emit_record", "false")])),
    bad_post("text-export-record-and-record_from",
             lambda c: job_form("export", CHAIN, record=c.record,
                                fields=[("outputs", "out"), ("record_from", c.insert_id)])),
    bad_post("text-export-neither-record", job_form("export", CHAIN, fields=[("outputs", "out")])),
    bad_post("text-record_from-names-no-job",
             job_form("export", CHAIN, fields=[("outputs", "out"), ("record_from", FAKE_ID)]),
             status=404, code="not-found"),
    bad_post("text-record_from-names-a-check-job",
             lambda c: job_form("export", CHAIN, fields=[("outputs", "out"),
                                                        ("record_from", c.check_id)]),
             status=409, code="conflict"),
    bad_post("text-record_from-names-a-failed-insert",
             lambda c: job_form("export", CHAIN, fields=[("outputs", "out"),
                                                        ("record_from", c.failed_insert_id)]),
             status=409, code="conflict"),
    bad_post("text-missing-model", job_form("check")),
    bad_post("text-missing-stage", job_form(None, CHAIN)),
    bad_post("text-insert-missing-config", job_form("insert", CHAIN, fields=[("outputs", "out")])),
    bad_post("text-prune-missing-config", job_form("prune", CHAIN, fields=[("outputs", "out")])),
    bad_post("text-insert-missing-outputs", job_form("insert", CHAIN, CFG)),
]

SIZES = [
    bad_post("size-content-length-over-max-upload",
             job_form("check", b"\x00" * (2 * SMALL_MAX_UPLOAD)), status=413, code="too-large",
             on="small"),
    pytest.param(Req(lambda c, dmn: raw(
        dmn, "POST", "/v1/jobs", [("Content-Type", MP), ("Content-Length", str(10 ** 10))],
        job_form("check", CHAIN)[1], content_length=False),
        413, "too-large", on="small", creates=False), id="size-content-length-10GB-early"),
    # Expect: 100-continue and a length over the limit: 413 at the headers, not a
    # "100 Continue" that makes the client send the whole body in vain
    pytest.param(Req(lambda c, dmn: raw(
        dmn, "POST", "/v1/jobs", [("Content-Type", MP), ("Expect", "100-continue"),
                                  ("Content-Length", str(SMALL_MAX_UPLOAD + 1))],
        None, content_length=False, timeout=5),
        413, "too-large", on="small", creates=False), id="size-expect-continue-over-max-upload"),
    pytest.param(Req(lambda c, dmn: raw(
        dmn, "POST", "/v1/jobs", [("Content-Type", MP), ("Transfer-Encoding", "chunked")],
        H.chunked_body(job_form("check", b"\x01" * (2 * SMALL_MAX_UPLOAD))[1], 65536)),
        413, "too-large", on="small", creates=False), id="size-chunked-grows-over-max-upload"),
    ok_post("size-under-max-upload-accepted", job_form("check", CHAIN), on="small"),
]


def _not_the_job(c, r, p):
    assert "state" not in p and "artifacts" not in p, "answered with the job:\n" + r.describe()


URLS = [
    call("url-id-nul-x", "GET", lambda c: "/v1/jobs/%s%%00x" % c.check_id, 404, "not-found",
         check=_not_the_job),
    call("url-id-nul", "GET", lambda c: "/v1/jobs/%s%%00" % c.check_id, 404, "not-found"),
    call("url-nul-as-id", "GET", "/v1/jobs/%00", 404, "not-found"),
    # an encoded '/' is not a path separator: this is not the job's log
    call("url-encoded-slash-log", "GET", lambda c: "/v1/jobs/%s%%2Flog" % c.check_id, 404,
         "not-found"),
    call("url-healthz-nul", "GET", "/healthz%00", 404, "not-found"),
    call("url-jobs-nul", "GET", "/v1/jobs%00?limit=1", 404, "not-found"),
    call("url-artifact-name-nul", "GET",
         lambda c: "/v1/jobs/%s/artifacts/report%%00.txt" % c.check_id, 404, "not-found"),
    call("url-log-nul", "GET", lambda c: "/v1/jobs/%s/log%%00" % c.check_id, 404, "not-found"),
    call("url-cancel-nul", "POST", lambda c: "/v1/jobs/%s/cancel%%00" % c.check_id, 404,
         "not-found"),
    call("url-unknown-path", "GET", "/v2/jobs", 404, "not-found"),
    call("url-unknown-subresource", "GET", lambda c: "/v1/jobs/%s/nope" % c.check_id, 404,
         "not-found"),
    call("url-dotdot", "GET", "/../../etc/passwd", 404, "not-found"),
    call("url-double-slash", "GET", "//v1/jobs", 404, "not-found"),
    call("url-trailing-slash-no-id", "GET", "/v1/jobs/", 404, "not-found"),
    call("url-artifact-dotdot", "GET",
         lambda c: "/v1/jobs/%s/artifacts/%%2e%%2e%%2fsparsityd.db" % c.check_id, 404,
         "not-found"),
    call("url-put-jobs-405", "PUT", "/v1/jobs", 405, "method-not-allowed",
         check=allow_has("GET", "POST"), body=b""),
    call("url-delete-healthz-405", "DELETE", "/healthz", 405, "method-not-allowed",
         check=allow_has("GET")),
    call("url-patch-job-405", "PATCH", lambda c: "/v1/jobs/" + c.check_id, 405,
         "method-not-allowed", check=allow_has("GET", "DELETE"), body=b""),
    call("url-post-log-405", "POST", lambda c: "/v1/jobs/%s/log" % c.check_id, 405,
         "method-not-allowed", check=allow_has("GET"), body=b""),
    call("url-id-too-short", "GET", lambda c: "/v1/jobs/" + c.check_id[:-1], 404, "not-found"),
    call("url-id-too-long", "GET", lambda c: "/v1/jobs/" + c.check_id + "A", 404, "not-found"),
    call("url-id-bad-chars", "GET", lambda c: "/v1/jobs/" + c.check_id[:-1] + "!", 404,
         "not-found"),
    call("url-id-100-chars", "GET", "/v1/jobs/" + "A" * 100, 404, "not-found"),
    call("url-10KB-segment", "GET", "/v1/jobs/" + "A" * 10240, 404, "not-found", alt=(414,)),
    call("url-10KB-artifact-name", "GET",
         lambda c: "/v1/jobs/%s/artifacts/%s" % (c.check_id, "n" * 10240), 404, "not-found",
         alt=(414,)),
]

def wait_bad(id, value):
    """GET /v1/jobs/{finished job}?wait=value -> 400 at once (5 s socket timeout: a daemon
    that clamps or ignores the value holds the request instead)."""
    return call(id, "GET", lambda c: "/v1/jobs/%s?wait=%s" % (c.check_id, value), 400,
                "bad-request", timeout=5)


QUERY = [
    wait_bad("q-wait-abc", "abc"),
    wait_bad("q-wait-negative", "-1"),
    wait_bad("q-wait-1000-over-max", "1000"),
    wait_bad("q-wait-61-over-max", "61"),
    wait_bad("q-wait-empty", ""),
    wait_bad("q-wait-exponent", "1e3"),
    wait_bad("q-wait-overflow", "99999999999999999999999"),
    wait_bad("q-wait-trailing-junk", "5s"),
    wait_bad("q-wait-nul", "1%00x"),
    call("q-list-limit-0", "GET", "/v1/jobs?limit=0", 400, "bad-request"),
    call("q-list-limit-201", "GET", "/v1/jobs?limit=201", 400, "bad-request"),
    call("q-list-limit-abc", "GET", "/v1/jobs?limit=abc", 400, "bad-request"),
    call("q-list-limit-negative", "GET", "/v1/jobs?limit=-5", 400, "bad-request"),
    call("q-list-limit-nul", "GET", "/v1/jobs?limit=10%00x", 400, "bad-request"),
    call("q-list-state-bogus", "GET", "/v1/jobs?state=bogus", 400, "bad-request"),
    call("q-list-state-empty", "GET", "/v1/jobs?state=", 400, "bad-request"),
    call("q-list-stage-bogus", "GET", "/v1/jobs?stage=bogus", 400, "bad-request"),
    call("q-list-stage-nul", "GET", "/v1/jobs?stage=check%00x", 400, "bad-request"),
    call("q-list-cursor-notanid", "GET", "/v1/jobs?cursor=notanid", 400, "bad-request"),
    call("q-list-state-nul", "GET", "/v1/jobs?state=queued%00x", 400, "bad-request"),
]


def _fast_200(c, r, p):
    assert r.elapsed < 1.0, "?wait=30 on a finished job without If-None-Match took %.2f s " \
        "(must answer at once)" % r.elapsed
    assert r.json()["id"] == c.check_id, r.describe()


QUERY.append(call("q-wait-30-finished-job-answers-at-once", "GET",
                  lambda c: "/v1/jobs/%s?wait=30" % c.check_id, 200, check=_fast_200,
                  timeout=5))


def _range_206(first, last):
    def check(c, r, p):
        size = c.report_size
        lo = first if first >= 0 else size + first
        hi = last if last is not None else size - 1
        want = "bytes %d-%d/%d" % (lo, hi, size)
        assert r.header("content-range") == want, "Content-Range %r, want %r\n%s" % (
            r.header("content-range"), want, r.describe())
        assert r.body == c.report[lo:hi + 1], "206 body differs from the bytes %d-%d" % (lo, hi)
    return check


def _whole(c, r, p):
    assert r.body == c.report, "200 to an ignored Range without the whole file\n" + r.describe()
    assert r.header("content-range") is None, r.describe()


def rng(id, value, status=416, check=None):
    code = "range-not-satisfiable" if status == 416 else None
    return call(id, "GET", lambda c: c.report_href, status, code,
                headers=lambda c: [("Range", value(c) if callable(value) else value)],
                check=check or content_range_star)


def _not_modified(c, r, p):
    assert not r.body, "304 with a body\n" + r.describe()


HEADERS = [
    rng("range-bytes-abc", "bytes=abc"),
    rng("range-reversed", "bytes=5-1"),
    rng("range-suffix-zero", "bytes=-0"),
    # RFC 9110 14.2: an unknown unit MUST be ignored, a list of ranges may be (200, whole)
    rng("range-unit-items", "items=0-1", status=200, check=_whole),
    rng("range-list", "bytes=0-0,2-3", status=200, check=_whole),
    rng("range-last-past-int64", "bytes=3-99999999999999999999", status=206,
        check=_range_206(3, None)),
    rng("range-suffix-past-int64", "bytes=-99999999999999999999", status=206,
        check=_range_206(0, None)),
    rng("range-past-the-end", lambda c: "bytes=%d-" % c.report_size),
    rng("range-far-past-the-end", lambda c: "bytes=%d-%d" % (c.report_size + 5,
                                                             c.report_size + 10)),
    rng("range-empty-spec", "bytes="),
    rng("range-double-dash", "bytes=--1"),
    rng("range-three-numbers", "bytes=1-2-3"),
    rng("range-valid-first-10", "bytes=0-9", status=206, check=_range_206(0, 9)),
    rng("range-valid-suffix-5", "bytes=-5", status=206, check=_range_206(-5, None)),
    call("inm-list-weak-artifact", "GET", lambda c: c.report_href, 304,
         headers=lambda c: [("If-None-Match", '"x", W/' + c.report_etag)], check=_not_modified),
    call("inm-star-artifact", "GET", lambda c: c.report_href, 304,
         headers=[("If-None-Match", "*")], check=_not_modified),
    call("inm-list-weak-job", "GET", lambda c: "/v1/jobs/" + c.check_id, 304,
         headers=lambda c: [("If-None-Match", '"x", W/' + c.check_etag)], check=_not_modified),
    call("inm-star-job", "GET", lambda c: "/v1/jobs/" + c.check_id, 304,
         headers=[("If-None-Match", "*")], check=_not_modified),
]


def auth(id, header_value, target="/v1/jobs", method="GET"):
    hdrs = [] if header_value is None else [("Authorization", header_value)]

    def send(c, dmn):
        return raw(dmn, method, target, hdrs, b"" if method == "POST" else None, auth=False)
    return pytest.param(Req(send, 401, "unauthorized", www_auth, "authd"), id=id)


def tenant_call(id, method, fmt, status=404, code="not-found"):
    return call(id, method, lambda c: fmt % c.other_id, status, code, on="authd",
                body=b"" if method == "POST" else None)


def _not_listed(c, r, p):
    ids = [j["id"] for j in r.json()["jobs"]]
    assert c.other_id not in ids, "tenant t lists tenant t2's job %s" % c.other_id


AUTH = [
    auth("auth-none", None),
    auth("auth-bearer-empty", "Bearer "),
    auth("auth-bearer-no-space", "Bearer"),
    auth("auth-basic", "Basic dXNlcjpwYXNz"),
    auth("auth-4KB-token", "Bearer " + "a" * 4096),
    auth("auth-non-ascii-token", b"Bearer sdt_\xc3\xa9\xff\xfe" + b"0" * 60),
    auth("auth-token-prefix-only", "Bearer sdt_"),
    auth("auth-job-get-no-token", None, target="/v1/jobs/" + FAKE_ID),
    pytest.param(Req(lambda c, dmn: raw(dmn, "GET", "/v1/jobs",
                                        [("Authorization", "Bearer " + c.token[:-1])], auth=False),
                     401, "unauthorized", www_auth, "authd"), id="auth-truncated-token"),
    pytest.param(Req(lambda c, dmn: raw(dmn, "GET", "/v1/jobs",
                                        [("Authorization", "Bearer " + c.token + "0")],
                                        auth=False),
                     401, "unauthorized", www_auth, "authd"), id="auth-token-plus-one-char"),
    pytest.param(Req(lambda c, dmn: raw(dmn, "POST", "/v1/jobs", [("Content-Type", MP)],
                                        job_form("check", CHAIN)[1], auth=False),
                     401, "unauthorized", www_auth, "authd", creates=False),
                 id="auth-post-job-without-token"),
    tenant_call("tenant-other-job", "GET", "/v1/jobs/%s"),
    tenant_call("tenant-other-artifact", "GET", "/v1/jobs/%s/artifacts/model"),
    tenant_call("tenant-other-log", "GET", "/v1/jobs/%s/log"),
    tenant_call("tenant-other-cancel", "POST", "/v1/jobs/%s/cancel"),
    tenant_call("tenant-other-delete", "DELETE", "/v1/jobs/%s"),
    call("tenant-other-not-listed", "GET", "/v1/jobs?limit=200", 200, on="authd",
         check=_not_listed),
    bad_post("tenant-other-record_from",
             lambda c: job_form("export", CHAIN, fields=[("outputs", "out"),
                                                        ("record_from", c.other_id)]),
             status=404, code="not-found", on="authd"),
]

STATE = [
    call("state-cancel-finished-job", "POST", lambda c: "/v1/jobs/%s/cancel" % c.check_id, 409,
         "conflict", body=b""),
    call("state-cancel-unknown-job", "POST", "/v1/jobs/%s/cancel" % FAKE_ID, 404, "not-found",
         body=b""),
    call("state-delete-unknown-job", "DELETE", "/v1/jobs/" + FAKE_ID, 404, "not-found"),
]

REQUEST_CASES = MULTIPART + REPEATED + OUTPUTS + TEXT + SIZES + URLS + QUERY + HEADERS + AUTH + \
    STATE


@pytest.mark.parametrize("case", REQUEST_CASES)
def test_request(ctx, case):
    dmn = ctx.daemon(case.on)
    H.restart(dmn)  # if an earlier case killed it (that case failed for it)
    try:
        before = H.job_count(dmn) if case.creates is not None else None
        r = case.send(ctx, dmn)
        if r.status in case.alt:
            return  # the HTTP library's own answer; the finally checks the daemon lives
        if case.code is not None:
            p = H.check_problem(r, dmn, case.status, case.code)
        else:
            assert r.status == case.status, "expected HTTP %d, got:\n%s" % (case.status,
                                                                          r.describe())
            p = None
            if r.status >= 400:
                H.check_problem(r, dmn, r.status, None)
        if case.creates is True:
            j = r.json()
            assert r.header("location") == "/v1/jobs/" + j["id"], r.describe()
            if case.check:
                case.check(ctx, j)
            dmn.wait_job(j["id"], timeout=60)
        elif case.check:
            case.check(ctx, r, p)
        if case.creates is not None:
            after = H.job_count(dmn)
            want = before + (1 if case.creates else 0)
            assert after == want, "the store holds %d jobs after the request, %d before " \
                "(%s)\n%s" % (after, before, "a refused request created a job"
                              if not case.creates else "expected one new job", r.describe())
    finally:
        H.alive(dmn)


# ---------------------------------------------------------------------------------------
# bad files submitted as jobs: the POST answers 202, the job fails


class JobCase:
    def __init__(self, stage, model, config=None, record=None, outputs=None, fmt=None,
                 code="bad-model", message=None, state="failed"):
        self.stage, self.model, self.config, self.record = stage, model, config, record
        self.outputs, self.fmt, self.code, self.message, self.state = (outputs, fmt, code,
                                                                       message, state)


def jc(id, *a, **kw):
    return pytest.param(JobCase(*a, **kw), id=id)


def _mlp(c, layers=2, k=64):
    return H.mlp_bytes(os.path.join(c.tmp, "mlp.pb"), layers, k)


def _truncated_mlp(frac):
    def make(c):
        b = _mlp(c)
        return b[:int(len(b) * frac)] if frac < 1 else b[:-1]
    return make


X = D._node("x", "Placeholder", attrs=D._type_attr("dtype"))
NEST = r"nest|depth|deep"


def other_layers_record(c):
    return c.record.replace(b'"mm_a"', b'"nope_a"').replace(b'"mm_b"', b'"nope_b"')


BAD_MODELS = [
    jc("model-empty", "check", b""),
    jc("model-random-16B-seed1", "check", H.random_bytes(1, 16)),
    jc("model-random-1000B-seed2", "check", H.random_bytes(2, 1000)),
    jc("model-random-4KiB-seed3", "check", H.random_bytes(3, 4096)),
    jc("model-random-64KiB-seed4", "check", H.random_bytes(4, 65536)),
    jc("model-random-64KiB-seed5-prune", "prune", H.random_bytes(5, 65536), CFG, outputs="out"),
    jc("model-truncated-half", "check", _truncated_mlp(0.5)),
    jc("model-truncated-last-byte", "check", _truncated_mlp(1)),
    jc("model-truncated-pbtxt", "check", CHAIN[:700]),
    jc("model-duplicate-node-names", "check",
       X + D._node("a", "Identity", ["x"], D._type_attr("T")) +
       D._node("a", "Identity", ["x"], D._type_attr("T"))),
    jc("model-duplicate-non-utf8-names-pbtxt", "check",
       b'node { name: "\xff\xfe" op: "NoOp" }\nnode { name: "\xff\xfe" op: "NoOp" }\n'),
    jc("model-input-names-missing-node", "check",
       X + D._node("a", "Identity", ["nowhere"], D._type_attr("T"))),
    jc("model-input-names-missing-node-prune", "prune",
       X + D._node("out", "Identity", ["nowhere:3"], D._type_attr("T")), CFG, outputs="out"),
    jc("model-const-content-size-disagrees", "check",
       X + H.const_node("w", [4, 4], b"\x00" * 32) +
       D._node("out", "MatMul", ["x", "w"], D._type_attr("T"))),
    # a shape past the element limit is a size limit (too-large), named by its node
    jc("model-const-10e12-elements", "check",
       X + H.const_node("w", [10 ** 6, 10 ** 6], b"\x00" * 16) +
       D._node("out", "MatMul", ["x", "w"], D._type_attr("T")), code="too-large"),
    jc("model-const-10e12-elements-prune", "prune",
       X + H.const_node("w", [10 ** 6, 10 ** 6], b"\x00" * 16) +
       D._node("out", "MatMul", ["x", "w"], D._type_attr("T")), CFG, outputs="out",
       code="too-large"),
    jc("model-const-negative-dims", "check",
       X + H.const_node("w", [-5, 4], b"\x00" * 80) +
       D._node("out", "MatMul", ["x", "w"], D._type_attr("T"))),
    jc("model-varint-too-long", "check", b"\x0a" + b"\xff" * 11),
    jc("model-length-past-end", "check", b"\x0a\xff\xff\xff\xff\x07" + b"x" * 10),
    jc("model-bad-wire-type", "check", b"\x0f\x00\x00\x00"),
    jc("model-pbtxt-unterminated-string", "check", b'node { name: "abc op: "NoOp" }\n'),
    jc("model-pbtxt-with-nul", "check", b'node { name: "a\x00b" op: "NoOp" }\n'),
    jc("model-pbtxt-stated-graphdef", "check", CHAIN, fmt="graphdef"),
    jc("model-binary-stated-pbtxt", "check", lambda c: _mlp(c), fmt="pbtxt"),
    jc("model-deep-attr-200", "check", H.deep_attr_graph(200), fmt="graphdef", message=NEST),
    jc("model-deep-attr-1000", "check", H.deep_attr_graph(1000), fmt="graphdef", message=NEST),
    jc("model-deep-attr-3000", "check", H.deep_attr_graph(3000), fmt="graphdef", message=NEST),
    jc("model-deep-attr-10000", "check", H.deep_attr_graph(10000), fmt="graphdef",
       message=NEST),
    jc("model-deep-attr-50000", "check", H.deep_attr_graph(50000), fmt="graphdef",
       message=NEST),
    jc("model-deep-attr-3000-detected", "check", H.deep_attr_graph(3000), message=None),
    jc("model-deep-attr-3000-prune", "prune", H.deep_attr_graph(3000), CFG, outputs="n",
       fmt="graphdef", message=NEST),
    jc("model-deep-pbtxt-10000", "check", H.deep_attr_pbtxt(10000), message=NEST),
    # field 0 in a two-byte key, which protobuf-c keeps as an unknown field: the depth
    # check used to stop there, and protobuf-c then recursed until the daemon crashed
    jc("model-field0-key-then-deep-attr-50000", "check",
       b"\x80\x00\x00" + H.deep_attr_graph(50000), fmt="graphdef", message=r"field number 0"),
    jc("model-field0-key-then-deep-attr-50000-detected", "prune",
       b"\x80\x00\x00" + H.deep_attr_graph(50000), CFG, outputs="n", message=r"malformed"),
]

BAD_CONFIGS = [
    jc("config-binary-garbage", "prune", CHAIN, H.random_bytes(7, 512), outputs="out",
       code="bad-config"),
    jc("config-utf8-bom-is-skipped", "prune", CHAIN, b"\xef\xbb\xbf" + CFG.encode(),
       outputs="out", code=None, state="succeeded"),
    jc("config-filter_pruner", "prune", CHAIN,
       "prune_config { filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.3 } } }\n",
       outputs="out", code="bad-config"),
    jc("config-unknown-field", "prune", CHAIN, CFG + "bogus_field: 1\n", outputs="out",
       code="bad-config"),
    jc("config-nested-10000", "prune", CHAIN, "prune_config { " * 10000 + "} " * 10000,
       outputs="out", code="bad-config"),
    jc("config-nul-byte", "prune", CHAIN,
       CFG.encode().replace(b"{ update_freq", b"{ \x00update_freq"), outputs="out",
       code="bad-config"),
    jc("config-quantization-field", "insert", CHAIN, CFG + "batch_num: 1\n", outputs="out",
       code="bad-config"),
    jc("config-unterminated-brace", "insert", CHAIN,
       "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 }\n",
       outputs="out", code="bad-config"),
    jc("config-non-utf8-skip-layer", "prune", CHAIN, CFG.encode() + b'skip_layers: "\xff\xfe"\n',
       outputs="out", code="bad-config"),
    jc("config-int-overflow", "prune", CHAIN,
       "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: "
       "99999999999999999999999 } } }\n", outputs="out", code="bad-config"),
]

BAD_RECORDS = [
    jc("record-garbage", "export", CHAIN, record=H.random_bytes(8, 600), outputs="out",
       code="bad-record"),
    jc("record-for-other-layers", "export", CHAIN, record=other_layers_record, outputs="out",
       code="bad-record"),
    jc("record-nul-byte", "export", CHAIN,
       record=lambda c: c.record.replace(b"selective_prune", b"selective\x00_prune", 1),
       outputs="out", code="bad-record"),
    jc("record-nested-10000", "export", CHAIN, record="prune_record { " * 10000 + "} " * 10000,
       outputs="out", code="bad-record"),
    jc("record-non-utf8-layer-name", "export", CHAIN,
       record=lambda c: c.record.replace(b'"mm_a"', b'"\xff\xfe"'), outputs="out",
       code="bad-record"),
]

JOB_CASES = BAD_MODELS + BAD_CONFIGS + BAD_RECORDS


@pytest.mark.parametrize("case", JOB_CASES)
def test_bad_input_job(ctx, case):
    dmn = ctx.d
    H.restart(dmn)

    def val(x):
        return x(ctx) if callable(x) else x
    try:
        r = dmn.submit(case.stage, model=val(case.model), config=val(case.config),
                       record=val(case.record), outputs=case.outputs, fmt=case.fmt,
                       timeout=60)
        assert r.status == 202, "expected 202 (the engine judges the file, not the POST), " \
            "got:\n%s" % r.describe()
        job_id = r.json()["id"]
        try:
            j = dmn.wait_job(job_id, timeout=90)
        except OSError as e:
            H.alive(dmn)  # raises with the daemon's logs if it died
            raise AssertionError("waiting for job %s: %s" % (job_id, e))
        if case.state == "succeeded":
            assert j["state"] == "succeeded", "expected the job to succeed:\n%s" % (
                json.dumps(j)[:3000])
        else:
            H.check_job_error(j, dmn, case.code, case.message)
        # its log answers too, and names no server path either
        r = dmn.get("/v1/jobs/%s/log" % job_id)
        assert r.status == 200, r.describe()
        assert not H.leaks(r.text, dmn), "the job log names a server path:\n" + r.text
    finally:
        H.alive(dmn)


# ---------------------------------------------------------------------------------------
# cases that need a job in a given state or a daemon with another setting


def test_delete_running_job_409(daemons, big_model):
    """DELETE of a running job -> 409 conflict; cancel of it is accepted; once it is
    canceled, a second cancel -> 409."""
    dmn = daemons.new(args=["--workers", "1"])
    r = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    jid = r.json()["id"]
    deadline = time.time() + 60
    while time.time() < deadline and dmn.job(jid).json()["state"] == "queued":
        time.sleep(0.01)
    state = dmn.job(jid).json()["state"]
    if state != "running":
        pytest.skip("the big job was %s before the DELETE could find it running" % state)
    r = dmn.request("DELETE", "/v1/jobs/" + jid)
    H.check_problem(r, dmn, 409, "conflict")
    H.alive(dmn)
    assert dmn.job(jid).status == 200, "the DELETE refused with 409 deleted the job"
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % jid)
    assert r.status == 200, r.describe()
    j = dmn.wait_job(jid, timeout=120)
    assert j["state"] in ("canceled", "succeeded"), j
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % jid)
    H.check_problem(r, dmn, 409, "conflict")
    H.alive(dmn)


def test_too_many_uploads_429(daemons):
    """--max-uploads 2: with 2 uploads in flight, the third -> 429 too-many-uploads with
    Retry-After; once they end, uploads are taken again."""
    import socket
    dmn = daemons.new(args=["--max-uploads", "2"])
    ctype, head = D.multipart([("stage", "check")], [], close=False)
    boundary = ctype.split("boundary=")[1]
    head += ("--%s\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n" % boundary).encode()
    stalled = []
    try:
        for _ in range(2):
            s = socket.create_connection((dmn.host, dmn.port), timeout=30)
            s.sendall(H.build_request("POST", "/v1/jobs", [
                ("Content-Type", ctype), ("Content-Length", str(50 << 20))], head + b"\0" * 65536,
                content_length=False))
            stalled.append(s)
        time.sleep(0.5)
        r = raw(dmn, "POST", "/v1/jobs", [("Content-Type", MP)], job_form("check", CHAIN)[1])
        H.check_problem(r, dmn, 429, "too-many-uploads")
        ra = r.header("retry-after")
        assert ra and ra.isdigit() and int(ra) >= 1, "429 without a Retry-After of seconds:\n" \
            + r.describe()
        H.alive(dmn)
    finally:
        for s in stalled:
            s.close()
    # the slots free up once the stalled uploads are gone
    deadline = time.time() + 10
    while True:
        r = raw(dmn, "POST", "/v1/jobs", [("Content-Type", MP)], job_form("check", CHAIN)[1])
        if r.status == 202 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert r.status == 202, "after the stalled uploads closed, an upload still gets:\n" + \
        r.describe()
    assert dmn.wait_job(r.json()["id"])["state"] == "succeeded"
    H.alive(dmn)


@pytest.mark.parametrize("headers,why", [
    ([("Content-Length", "0"), ("Content-Length", "%d")], "conflicting Content-Length"),
    ([("Content-Length", "%d"), ("Transfer-Encoding", "chunked")],
     "both Content-Length and Transfer-Encoding"),
    ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
     "more than one Authorization"),
], ids=["two-content-lengths", "length-and-chunked", "two-authorizations"])
def test_ambiguous_framing_is_400_and_closes(ctx, headers, why):
    """A request whose end or whose credentials are ambiguous gets one 400 and the
    connection closes: with two Content-Lengths libmicrohttpd took the first and read
    the body as a second request, which a proxy in front would not have seen."""
    dmn = ctx.d
    H.restart(dmn)
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    lines = ["GET /v1/jobs HTTP/1.1", "Host: x"] + [
        "%s: %s" % (k, v % len(smuggled) if "%d" in v else v) for k, v in headers]
    got = H.exchange(dmn, ("\r\n".join(lines) + "\r\n\r\n").encode() + smuggled)
    assert got.startswith(b"HTTP/1.1 400"), got[:500]
    assert got.count(b"HTTP/1.1 ") == 1, "more than one answer:\n%r" % got
    assert why.encode() in got and b"application/problem+json" in got, got[:800]


def test_after_all_cases(ctx):
    """The daemons lived through every case: /metrics answers, a normal job succeeds, and
    no daemon was restarted by a case."""
    for name in ("d", "small", "authd"):
        dmn = ctx.daemon(name)
        H.alive(dmn)
        r = dmn.get("/metrics", auth=False)
        assert r.status == 200 and "sparsityd_jobs" in r.text, r.describe()
        j = dmn.run_job("check", model=CHAIN)
        assert j["state"] == "succeeded", j
        assert dmn.starts == 1, "daemon %s died during the cases and was restarted %d " \
            "time(s)\n%s" % (name, dmn.starts - 1, dmn.logs())


def test_case_count():
    """The table holds at least 80 distinct hostile cases."""
    ids = [p.id for p in REQUEST_CASES + JOB_CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 80, len(ids)
