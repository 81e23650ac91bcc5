"""/metrics as Prometheus reads it, and the access log.

A live page after a few jobs passes `promtool check metrics` (Debian's prometheus
package; scripts/deps.sh unpacks the one binary); each family moves by exactly what the
test did: jobs finished by stage, outcome and error code, stage and queue-wait
histograms, request durations by route and method, uploads in flight during a stalled
upload, the blob store against the files on disk, process_* against /proc. The access
log has one line per request with its method, route, status, bytes, duration and
tenant, and none with access_log = false.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from daemon import CFG, CHAIN, token_create, wait_state, write_mlp

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def scrape(dmn):
    r = dmn.get("/metrics", auth=False)
    assert r.status == 200, r.describe()
    assert r.header("content-type") == CONTENT_TYPE, r.headers
    return r.text


def samples(text):
    """{(name, frozenset(labels.items())): value} of a text exposition page."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        assert m, "bad metrics line %r" % line
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        key = (m.group(1), frozenset(labels.items()))
        assert key not in out, "series twice: %r" % line
        out[key] = float(m.group(3))
    return out


def val(s, name, **labels):
    return s.get((name, frozenset(labels.items())), 0.0)


def check_hist(s, name, **labels):
    """(count, sum, {le: cumulative count}) of one histogram series, checked whole."""
    buckets = {}
    for (n, ls), v in s.items():
        d = dict(ls)
        le = d.pop("le", None)
        if n == name + "_bucket" and d == labels:
            buckets[float(le)] = v
    count, total = val(s, name + "_count", **labels), val(s, name + "_sum", **labels)
    les = sorted(buckets)
    assert les and les[-1] == float("inf"), (name, labels, buckets)
    counts = [buckets[le] for le in les]
    assert counts == sorted(counts), "buckets not cumulative: %s %s %s" % (name, labels, buckets)
    assert buckets[float("inf")] == count, (name, labels, buckets, count)
    return count, total, buckets


def promtool_check(text):
    tool = shutil.which("promtool")
    assert tool, ("promtool not found: scripts/deps.sh --test unpacks it from Debian's "
                  "prometheus package into /usr/local/bin")
    p = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), (
        "promtool check metrics: exit %d\n%s%s\n--- page:\n%s" % (
            p.returncode, p.stdout, p.stderr, text[:6000]))


def blobs_on_disk(data_dir):
    files, size = 0, 0
    for root, _dirs, names in os.walk(os.path.join(data_dir, "blobs")):
        for n in names:
            files += 1
            size += os.path.getsize(os.path.join(root, n))
    return files, size


def until(what, fn, timeout=10):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            assert v, what
            return v
        time.sleep(0.05)


def test_metrics_page(daemons, serve_bin, tmp_path):
    t_start = time.time()
    dmn = daemons.new(args=["--workers", "1"])
    s0 = samples(scrape(dmn))
    version = subprocess.run([serve_bin, "--version"], capture_output=True, text=True,
                             timeout=20).stdout.split()[-1]
    info = [dict(ls) for (n, ls) in s0 if n == "sparsityd_build_info"]
    assert len(info) == 1 and info[0]["version"] == version and info[0]["libuv"], info
    assert val(s0, "sparsityd_build_info", **info[0]) == 1
    # every stage's successes and cancellations are there from the start, at zero
    for stage in ("insert", "export", "prune", "check"):
        for outcome in ("succeeded", "canceled"):
            key = ("sparsityd_jobs_finished_total",
                   frozenset({"stage": stage, "outcome": outcome, "code": "none"}.items()))
            assert s0.get(key) == 0, (key, sorted(k for k in s0 if k[0].startswith("sparsityd_jobs_f")))
    assert val(s0, "sparsityd_blob_store_files") == 0 and val(s0, "sparsityd_blob_store_bytes") == 0
    assert val(s0, "sparsityd_uploads_in_flight") == 0

    # jobs: two checks succeed, an insert fails on its config, and a check canceled while
    # queued behind a prune (one worker) never runs
    for _ in range(2):
        assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"
    j = dmn.run_job("insert", model=CHAIN, config="bogus\n", outputs="out")
    assert j["state"] == "failed" and j["error"]["code"] == "bad-config", j
    mlp = write_mlp(str(tmp_path / "mlp.pb"), 4, 2048)
    r = dmn.submit_file("prune", mlp, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    prune_id = r.json()["id"]
    wait_state(dmn, prune_id, ("running",))
    r = dmn.submit("check", model=CHAIN)
    assert r.status == 202, r.describe()
    queued = r.json()["id"]
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % queued)
    assert r.status == 200 and r.json()["state"] == "canceled", (
        "the prune job must still be running when the check is canceled: %s" % r.describe())
    assert dmn.wait_job(prune_id)["state"] == "succeeded"
    # requests whose route and method are known, one that matches no route, a HEAD and
    # a method no route has
    assert dmn.get("/nope").status == 404
    assert dmn.request("HEAD", "/healthz").status == 200
    assert dmn.request("BREW", "/healthz").status == 405
    etag = dmn.job(prune_id).header("etag")
    r = dmn.get("/v1/jobs/%s?wait=1" % prune_id, headers={"If-None-Match": etag})
    assert r.status == 304, r.describe()

    # A request is counted when libmicrohttpd reports it complete, just after its last
    # byte left: the client may be quicker than that.
    def page():
        t = scrape(dmn)
        s = samples(t)
        last = ("sparsityd_http_request_duration_seconds_count",
                frozenset({"route": "/v1/jobs/{id}", "method": "GET"}.items()))
        slow = ("sparsityd_http_request_duration_seconds_bucket",
                frozenset({"route": "/v1/jobs/{id}", "method": "GET", "le": "0.5"}.items()))
        return (t, s) if s.get(last, 0) - s.get(slow, 0) >= 1 else None
    text, s = until("the long-poll counted", page)
    promtool_check(text)

    fin = {(dict(ls)["stage"], dict(ls)["outcome"], dict(ls)["code"]): v
           for (n, ls), v in s.items() if n == "sparsityd_jobs_finished_total"}
    assert {k: v for k, v in fin.items() if v} == {
        ("check", "succeeded", "none"): 2, ("insert", "failed", "bad-config"): 1,
        ("prune", "succeeded", "none"): 1, ("check", "canceled", "none"): 1}, fin
    assert re.search(r"^# TYPE sparsityd_jobs_finished_total counter$", text, re.M)

    # stage durations count the stages that ran (not the canceled check); queue waits
    # count every job a worker started
    assert check_hist(s, "sparsityd_stage_duration_seconds", stage="check")[0] == 2
    assert check_hist(s, "sparsityd_stage_duration_seconds", stage="insert")[0] == 1
    count, total, _ = check_hist(s, "sparsityd_stage_duration_seconds", stage="prune")
    assert count == 1 and total > 0
    count, total, buckets = check_hist(s, "sparsityd_job_queue_wait_seconds")
    assert count == 4 and total >= 0, (count, total, buckets)

    # request durations by route and method
    h = lambda route, method: check_hist(s, "sparsityd_http_request_duration_seconds",
                                          route=route, method=method)
    assert h("/v1/jobs", "POST")[0] == 5
    assert h("/v1/jobs/{id}/cancel", "POST")[0] == 1
    assert h("unmatched", "GET")[0] == 1
    assert h("/healthz", "HEAD")[0] == 1
    assert h("unmatched", "other")[0] == 1  # 405: a path, but no route has the method
    assert h("/metrics", "GET")[0] >= 1  # the scrapes before this one
    count, total, buckets = h("/v1/jobs/{id}", "GET")
    assert count >= 5 and buckets[float("inf")] - buckets[0.5] >= 1, (
        "the 1 s long-poll must land above the 0.5 s bucket", buckets)
    assert total >= 0.9, total
    routes = {dict(ls)["route"] for (n, ls) in s if n.startswith("sparsityd_http_request_dur")}
    assert routes <= {"/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/cancel", "/healthz",
                      "/readyz", "/metrics", "unmatched"}, routes

    # the blob store is what lies on disk
    files, size = blobs_on_disk(dmn.data_dir)
    assert files >= 4 and val(s, "sparsityd_blob_store_files") == files, (files, text)
    assert val(s, "sparsityd_blob_store_bytes") == size, (size, text)
    assert val(s, "sparsityd_upload_bytes_total") >= os.path.getsize(mlp)
    for j in dmn.get("/v1/jobs").json()["jobs"]:
        assert dmn.request("DELETE", "/v1/jobs/" + j["id"]).status == 204
    s2 = samples(scrape(dmn))
    assert val(s2, "sparsityd_blob_store_files") == 0 == val(s2, "sparsityd_blob_store_bytes")
    assert blobs_on_disk(dmn.data_dir) == (0, 0)

    # process_* against what /proc says of the daemon's process
    pid = dmn.proc.pid
    with open("/proc/%d/status" % pid) as f:
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
    assert 0.5 * rss < val(s2, "process_resident_memory_bytes") < 2 * rss
    assert val(s2, "process_virtual_memory_bytes") >= val(s2, "process_resident_memory_bytes")
    fds = len(os.listdir("/proc/%d/fd" % pid))
    assert abs(val(s2, "process_open_fds") - fds) <= 4, (val(s2, "process_open_fds"), fds)
    with open("/proc/%d/limits" % pid) as f:
        soft = int(re.search(r"^Max open files\s+(\d+)", f.read(), re.M).group(1))
    assert val(s2, "process_max_fds") == soft
    # /proc/stat's boot time is in whole seconds
    assert t_start - 1.5 <= val(s2, "process_start_time_seconds") <= time.time()
    assert val(s2, "process_cpu_seconds_total") >= val(s, "process_cpu_seconds_total") > 0


def test_uploads_in_flight(daemons):
    dmn = daemons.new()
    boundary = "b0undary"
    head = ("--%s\r\nContent-Disposition: form-data; name=\"stage\"\r\n\r\ncheck\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\n"
            % (boundary, boundary)).encode()
    socks = []
    try:
        for _ in range(2):
            sk = socket.create_connection((dmn.host, dmn.port), timeout=30)
            sk.sendall(("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                        "boundary=%s\r\nContent-Length: 1000000\r\n\r\n" % boundary).encode()
                       + head + b"\0" * 1000)
            socks.append(sk)
        until("two uploads in flight",
              lambda: val(samples(scrape(dmn)), "sparsityd_uploads_in_flight") == 2)
    finally:
        for sk in socks:
            sk.close()
    until("no upload in flight once their connections closed",
          lambda: val(samples(scrape(dmn)), "sparsityd_uploads_in_flight") == 0)


ACCESS = re.compile(r"\[access\] (.*)$")


def access_lines(dmn):
    with open(dmn.stderr_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        m = ACCESS.search(line)
        if m:
            out.append(dict(kv.split("=", 1) for kv in m.group(1).split(" ")))
    return out


def settled(dmn):
    """The access lines once no more arrive (a line is written just after its answer
    left, so the client can be quicker than the log)."""
    lines = access_lines(dmn)
    while True:
        time.sleep(0.3)
        again = access_lines(dmn)
        if len(again) == len(lines):
            return lines
        lines = again


def test_access_log(daemons, serve_bin):
    data = daemons.data_dir()
    tok = token_create(serve_bin, data, "team-a")
    dmn = daemons.new(data_dir=data, token=tok)
    until("the readiness probe is logged", lambda: access_lines(dmn))
    before = len(settled(dmn))
    sent = []

    def req(method, path, **kw):
        # each request's line is awaited before the next is sent: a line is written
        # just after its answer left, so two requests answered by two HTTP threads
        # could otherwise log in either order (seen in CI)
        r = dmn.request(method, path, **kw)
        sent.append(r)
        until("the access line of %s %s" % (method, path),
              lambda: len(access_lines(dmn)) >= before + len(sent))
        return r

    j = dmn.run_job("check", model=CHAIN)
    n_job = len(settled(dmn)) - before  # the POST and the polls of run_job
    before += n_job
    r = req("GET", "/v1/jobs/" + j["id"])
    req("GET", "/v1/jobs/%s?wait=1" % j["id"], headers={"If-None-Match": r.header("etag")})
    req("GET", "/v1/jobs/%s/artifacts/report" % j["id"])
    req("GET", "/v1/jobs/%s/artifacts/report" % j["id"], headers={"Range": "bytes=0-9"})
    req("HEAD", "/healthz", auth=False)
    req("GET", "/v1/jobs", auth=False)
    req("GET", '/no%20such%22path', auth=False)
    lines = until("an access line per request",
                  lambda: (lambda l: l if len(l) == before + len(sent) else None)(access_lines(dmn)))
    new = lines[before:]
    assert len(new) == len(sent), (new, sent)
    for line, r in zip(new, sent):
        assert line["method"] == r.method, (line, r)
        assert line["status"] == str(r.status), (line, r)
        assert int(line["bytes"]) == len(r.body), (line, r, r.body[:200])
        assert float(line["duration"]) <= r.elapsed + 0.01, (line, r.elapsed)
        assert "end" not in line, line
    route = [l["route"] for l in new]
    assert route == ["/v1/jobs/{id}", "/v1/jobs/{id}", "/v1/jobs/{id}/artifacts/{name}",
                     "/v1/jobs/{id}/artifacts/{name}", "/healthz", "/v1/jobs", "-"], route
    assert [l["tenant"] for l in new] == ["team-a"] * 4 + ["-"] * 3, new
    assert [l["status"] for l in new] == ["200", "304", "200", "206", "200", "401", "404"], new
    assert new[3]["bytes"] == "10" and new[4]["bytes"] == "0", new
    assert float(new[1]["duration"]) >= 0.9, new[1]
    # a path no route matches is shown, with what could break the line replaced
    assert new[6]["path"] == "/no?such?path", new[6]
    assert all("path" not in l for l in new[:6]), new
    # the job's own requests: its POST (202) and the long-polls of its wait. The POST's
    # line may follow the first poll's: each is written just after its answer left, by
    # whichever HTTP thread served it (seen in CI)
    job_lines = lines[before - n_job:before]
    posts = [l for l in job_lines if l["method"] == "POST"]
    assert len(posts) == 1 and posts[0]["route"] == "/v1/jobs", job_lines
    assert posts[0]["status"] == "202" and posts[0]["tenant"] == "team-a", job_lines
    assert all(l["route"] == "/v1/jobs/{id}" for l in job_lines if l is not posts[0]), job_lines

    # a client that goes away in the middle of its upload: no status, and how it ended
    before = len(settled(dmn))
    sk = socket.create_connection((dmn.host, dmn.port), timeout=30)
    sk.sendall(("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n"
                "\r\n--b\r\nContent-Disposition: form-data; name=\"stage\"\r\n\r\ncheck"
                % tok).encode())
    time.sleep(0.3)
    sk.close()
    cut = until("an access line for the cut upload", lambda: access_lines(dmn)[before:])
    assert len(cut) == 1, cut
    assert cut[0]["route"] == "/v1/jobs" and cut[0]["method"] == "POST", cut
    assert cut[0]["status"] == "-" and cut[0]["bytes"] == "0", cut
    assert cut[0]["end"] in ("client-abort", "read-error", "error"), cut


def test_access_log_off(daemons):
    dmn = daemons.new(args=["--access-log=false"])
    for _ in range(3):
        assert dmn.get("/healthz").status == 200
    assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"
    assert access_lines(dmn) == []
    with open(dmn.stderr_path, "rb") as f:
        assert b"job created" in f.read()  # the log itself is on
