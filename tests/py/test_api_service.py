"""The daemon as a service: health and readiness, its command line and configuration
file, metrics, log files and their rotation, and what SIGTERM (drain) and SIGINT do.

Every response is checked against openapi.yaml by the contract fixture; a big synthetic
GraphDef (conftest.py's big_model) keeps a job running while the daemon drains.
"""

import os
import re
import signal
import subprocess
import time

import daemon as D
from daemon import CHAIN, assert_problem, start_big, submit_ok


def test_healthz_readyz(d, contract):
    r = d.get("/healthz", auth=False)
    assert r.status == 200 and contract.check(r) == {"status": "ok"}, r.describe()
    r = d.get("/readyz", auth=False)
    assert r.status == 200 and contract.check(r) == {"status": "ready"}, r.describe()


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


def parse_metrics(text):
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        # label values are quoted and may hold braces (route="/v1/jobs/{id}")
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)(\s+\d+)?$',
                     line)
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


def test_config_file_long_lines_and_nul(serve_bin, tmp_path):
    """A comment of any length stays a comment (a fixed line buffer used to cut it and read
    its tail as a setting); a line with a NUL byte is refused, naming file and line."""
    cfg = tmp_path / "long.conf"
    cfg.write_bytes(b"# " + b"x" * 3000 + b" retention_hours = 0\nworkers = 3\n")
    p = subprocess.run([serve_bin, "serve", "--config", str(cfg), "--print-config"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^retention_hours = 168$", p.stdout, re.M), p.stdout
    assert re.search(r"^workers = 3$", p.stdout, re.M), p.stdout
    cfg.write_bytes(b"workers = 3\nqueue_max = 5\x00 0\n")
    p = subprocess.run([serve_bin, "serve", "--config", str(cfg), "--print-config"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and "long.conf:2: the line holds a NUL byte" in p.stderr, p.stderr


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


def test_sigint_exits_0(daemons):
    dmn = daemons.new()
    assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"
    dmn.signal(signal.SIGINT)
    rc = dmn.proc.wait(30)
    assert rc == 0, "exit status %s after SIGINT\n%s" % (rc, dmn.logs())


def test_one_daemon_per_data_dir(daemons, serve_bin):
    """A second `serve` on a data dir in use refuses to start: it used to start, requeue the
    first daemon's running jobs as interrupted, and run them a second time."""
    a = daemons.new()
    b = D.Daemon(serve_bin, a.data_dir, log_dir=a.data_dir + "-second")
    os.makedirs(b.log_dir, exist_ok=True)
    p = subprocess.run(b.argv(), capture_output=True, text=True, timeout=30)
    assert p.returncode == 3, (p.returncode, p.stderr[-2000:])
    assert "in use by process %d" % a.proc.pid in p.stderr, p.stderr[-2000:]
    assert a.run_job("check", model=CHAIN)["state"] == "succeeded"
    # `token create` beside a running daemon still works (it runs no jobs)
    a.token = D.token_create(serve_bin, a.data_dir, "team-x")
    # once the first has stopped, the directory is free again
    assert a.stop() == 0
    a.start()
    assert a.run_job("check", model=CHAIN)["state"] == "succeeded"
