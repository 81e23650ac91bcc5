"""The daemon's log lines as an operator's tools read them.

- under systemd (JOURNAL_STREAM names the daemon's stderr) every line starts with its
  syslog priority, <3> error, <4> warn, <6> info, <7> debug; a JOURNAL_STREAM that names
  another stream (a shell redirect inherits the variable) adds nothing;
- log_format = json: every line is one JSON object with time, level, component, job and
  message, whatever bytes the message holds (quotes, control bytes, invalid UTF-8, a
  message too long for a line); job lines carry the job id; SIGHUP switches the format;
- a fatal signal (SIGSEGV, SIGABRT, SIGBUS) writes one last line naming it and who sent
  it, and the process then dies by that very signal.

HTTP and CLI only: no TensorFlow.
"""

import calendar
import json
import os
import re
import signal
import subprocess
import time

import pytest

import daemon as D

PRIORITY = {"error": "3", "warn": "4", "info": "6", "debug": "7"}
TEXT = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (error|warn|info|debug) \[(\w+)\] ")
JOB_ID = re.compile(r"^[0-9A-Z]{26}$")
KEYS = {"time", "level", "component", "job", "message"}


def stderr_lines(dmn):
    with open(dmn.stderr_path, "rb") as f:
        return f.read().decode("utf-8").splitlines()


def with_config(daemons, tmp_path, text, **env):
    """A daemon reading its settings from a file (so SIGHUP can change them)."""
    dmn = daemons.new(start=False)
    cfg = tmp_path / "sparsityd.conf"
    cfg.write_text(text)
    dmn.args = ["--config", str(cfg)]
    dmn.env = dict(os.environ, **env)
    return dmn, cfg


def next_stderr(dmn):
    # Daemon.start() opens log_dir/stderr.<start number> with "wb": a file made before
    # keeps its inode, which is what JOURNAL_STREAM names.
    os.makedirs(dmn.log_dir, exist_ok=True)
    path = os.path.join(dmn.log_dir, "stderr.%d" % (dmn.starts + 1))
    open(path, "wb").close()
    st = os.stat(path)
    return "%d:%d" % (st.st_dev, st.st_ino)


def test_priority_prefixes_under_the_journal(daemons, tmp_path):
    # a bad WATCHDOG_USEC is a warning at start; the daemon logs at debug
    dmn, cfg = with_config(daemons, tmp_path, "log_level = debug\n", WATCHDOG_USEC="soon")
    dmn.env["JOURNAL_STREAM"] = next_stderr(dmn)
    dmn.start()
    assert dmn.get("/v1/jobs/" + "0" * 26).status == 404  # a debug line
    cfg.write_text("log_level = loud\n")
    dmn.signal(signal.SIGHUP)  # an error line: settings not reloaded
    deadline = time.time() + 10
    while "settings not reloaded" not in "\n".join(stderr_lines(dmn)) and time.time() < deadline:
        time.sleep(0.05)
    assert dmn.stop() == 0
    seen = set()
    for line in stderr_lines(dmn):
        m = re.match(r"^<(\d)>(.*)$", line)
        assert m, "a line without a priority prefix under JOURNAL_STREAM: %r" % line
        t = TEXT.match(m.group(2))
        assert t, line
        assert m.group(1) == PRIORITY[t.group(2)], "%s line with prefix <%s>: %r" % (
            t.group(2), m.group(1), line)
        seen.add(t.group(2))
    assert seen == set(PRIORITY), "levels seen: %s" % seen


def test_no_prefix_when_stderr_is_not_the_journal(daemons, tmp_path):
    dmn, _ = with_config(daemons, tmp_path, "log_level = debug\n")
    other = tmp_path / "elsewhere"
    other.write_text("")
    st = os.stat(other)
    dmn.env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
    dmn.start()
    assert dmn.stop() == 0
    lines = stderr_lines(dmn)
    assert lines and all(TEXT.match(l) for l in lines), lines


def check_json_line(line, now):
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise AssertionError("not JSON (%s): %r" % (e, line))
    assert isinstance(obj, dict) and set(obj) == KEYS, line
    assert D.TS.match(obj["time"]) and obj["time"].endswith("Z"), line
    t = calendar.timegm(time.strptime(obj["time"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(t - now) < 300, "time %s is not now" % obj["time"]
    assert obj["level"] in PRIORITY, line
    assert isinstance(obj["component"], str) and obj["component"], line
    assert obj["job"] is None or JOB_ID.match(obj["job"]), line
    assert isinstance(obj["message"], str), line
    return obj


def test_json_lines(daemons, tmp_path):
    dmn, cfg = with_config(daemons, tmp_path, "log_format = text\n")
    dmn.start()
    j = dmn.run_job("check", model=D.CHAIN)
    assert j["state"] == "succeeded", j
    # SIGHUP switches the format (log_format is reloadable)
    cfg.write_text("log_format = json\n")
    dmn.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "settings reloaded" not in "\n".join(stderr_lines(dmn)) and time.time() < deadline:
        time.sleep(0.05)
    j2 = dmn.run_job("check", model=D.CHAIN)
    assert j2["state"] == "succeeded", j2
    # a failed reload whose message carries a quote, a backslash, a byte that is not
    # UTF-8, an é, and control bytes enough to overflow a line once escaped
    hostile = b'a"b\\c\xff\xc3\xa9\x01' + b"\x01" * 900
    cfg.write_bytes(hostile + b" = 1\n")
    dmn.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "unknown setting" not in "\n".join(stderr_lines(dmn)) and time.time() < deadline:
        time.sleep(0.05)
    assert dmn.stop() == 0

    lines = stderr_lines(dmn)
    cut = max(i for i, l in enumerate(lines) if "settings reloaded" in l)
    assert all(TEXT.match(l) for l in lines[:cut + 1]), lines[:cut + 1]
    now = time.time()
    objs = [check_json_line(l, now) for l in lines[cut + 1:]]
    assert objs, lines

    job_lines = [o for o in objs if o["job"] == j2["id"]]
    msgs = " | ".join(o["message"] for o in job_lines)
    assert "job created" in msgs and "succeeded" in msgs, msgs
    assert all(o["component"] in ("api", "store", "sched", "prune", "access")
               for o in job_lines), job_lines
    # the text lines carried the first job's id the text way
    assert any("job %s: " % j["id"] in l for l in lines[:cut + 1]), lines[:cut + 1]

    (bad,) = [o for o in objs if "unknown setting" in o["message"]]
    assert bad["level"] == "error" and bad["component"] == "main", bad
    assert 'unknown setting \'a"b\\c\\xff\u00e9\x01\x01' in bad["message"], bad
    # 900 control bytes escape to 5400 characters, more than a line holds: the message
    # was cut at a whole escape, and the line is still one JSON object
    assert len(bad["message"]) < 900 and bad["message"].endswith("\x01"), bad["message"][-40:]
    assert json.loads(lines[-1])["message"] == "stopped", lines[-1]


def test_bad_log_format_is_refused(serve_bin):
    p = subprocess.run([serve_bin, "serve", "--log-format", "xml"], capture_output=True,
                         text=True, timeout=30)
    assert p.returncode == 2, p
    assert "log_format must be text or json" in p.stderr, p.stderr


@pytest.mark.parametrize("sig, fmt", [(signal.SIGSEGV, "text"), (signal.SIGABRT, "json"),
                                      (signal.SIGBUS, "text")])
def test_last_line_on_a_fatal_signal(daemons, tmp_path, sig, fmt):
    dmn, _ = with_config(daemons, tmp_path, "log_format = %s\n" % fmt)
    dmn.cwd = str(tmp_path)  # a core file, where enabled, lands there
    dmn.start()
    # the readiness probe's access line is written once its answer has gone out: wait
    # for it, so the signal comes to a daemon with nothing left to log
    deadline = time.time() + 10
    while not any("route=/readyz" in ln for ln in stderr_lines(dmn)) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(dmn.proc.pid, sig)
    assert dmn.proc.wait(30) == -sig, "died by %s, not %s\n%s" % (
        dmn.proc.returncode, sig.name, dmn.logs())
    last = stderr_lines(dmn)[-1]
    want = "fatal signal %s sent by pid %d; the process dies now" % (sig.name, os.getpid())
    if fmt == "json":
        obj = check_json_line(last, time.time())
        assert obj["level"] == "error" and obj["message"].startswith(want), obj
    else:
        m = TEXT.match(last)
        assert m and m.group(2) == "error" and want in last, last
