"""Tokens an operator manages: `sparsityd token create | list | revoke`, expiry, and
the rule that a revocation or an expiry applies to the daemon's very next request (even
on a keep-alive connection that was authorised before), while the daemon runs.
"""

import datetime
import http.client
import json
import os
import re
import subprocess
import time

import pytest

from daemon import CHAIN, assert_problem

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def tok(serve_bin, *args):
    """Runs `sparsityd token ARGS...`; returns the CompletedProcess (never raises)."""
    return subprocess.run([serve_bin, "token"] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=30)


def create(serve_bin, data, tenant, *extra):
    p = tok(serve_bin, "create", "--tenant", tenant, "--data-dir", data, *extra)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split()
    assert len(lines) == 1 and re.fullmatch(r"sdt_[0-9a-f]{64}", lines[0]), p.stdout
    m = re.search(r"created token ([0-9a-f]{12}) for tenant " + re.escape(tenant), p.stderr)
    assert m, "create must name the new token's id on stderr: %r" % p.stderr
    return lines[0], m.group(1)


def listing(serve_bin, data):
    p = tok(serve_bin, "list", "--json", "--data-dir", data)
    assert p.returncode == 0, p.stderr
    return {t["id"]: t for t in json.loads(p.stdout)}


def parse_time(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def wait_last_used(serve_bin, data, tid, timeout=5):
    """The token's last use as `token list` shows it, once the daemon has written it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        t = listing(serve_bin, data)[tid]
        if t["last_used"]:
            return t["last_used"]
        time.sleep(0.1)
    raise AssertionError("token %s: no last use recorded within %ss" % (tid, timeout))


def test_list_revoke_while_running(daemons, serve_bin):
    data = daemons.data_dir()
    t0 = time.time()
    ta, ida = create(serve_bin, data, "alice")
    tb, idb = create(serve_bin, data, "bob", "--expires", "30d")
    # the table: a header and one row per token, oldest first
    p = tok(serve_bin, "list", "--data-dir", data)
    assert p.returncode == 0, p.stderr
    rows = [l.split() for l in p.stdout.splitlines()]
    assert rows[0] == ["ID", "TENANT", "CREATED", "LAST-USED", "EXPIRES", "STATE"], rows
    assert [r[0] for r in rows[1:]] == [ida, idb], rows
    assert rows[1][1] == "alice" and ISO.match(rows[1][2]) and rows[1][3:] == ["-", "-", "active"]
    assert rows[2][1] == "bob" and ISO.match(rows[2][4]) and rows[2][5] == "active", rows
    # the JSON form: the same, with times a program can read
    ts = listing(serve_bin, data)
    assert set(ts) == {ida, idb}
    a, b = ts[ida], ts[idb]
    assert a["tenant"] == "alice" and a["state"] == "active"
    assert a["last_used"] is None and a["expires"] is None and a["revoked"] is None, a
    assert t0 - 2 <= parse_time(a["created"]) <= time.time() + 1, a
    assert abs(parse_time(b["expires"]) - (parse_time(b["created"]) + 30 * 86400)) <= 2, b
    # no listing shows a token itself
    assert ta not in p.stdout and ta[4:] not in json.dumps(ts)

    dmn = daemons.new(data_dir=data, token=ta)
    # last use: written by the daemon shortly after the first request
    before = time.time()
    assert dmn.get("/v1/jobs").status == 200
    used = wait_last_used(serve_bin, data, ida)
    assert before - 2 <= parse_time(used) <= time.time() + 1, used
    assert listing(serve_bin, data)[idb]["last_used"] is None, "bob never called"
    # ... at most once a minute per token: a second request leaves it as it was
    time.sleep(1.1)
    assert dmn.get("/v1/jobs").status == 200
    time.sleep(0.8)
    assert listing(serve_bin, data)[ida]["last_used"] == used

    # revocation applies to the next request, on a connection authorised before it
    conn = http.client.HTTPConnection(dmn.host, dmn.port, timeout=30)
    hdr = {"Authorization": "Bearer " + ta}
    conn.request("GET", "/v1/jobs", headers=hdr)
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    p = tok(serve_bin, "revoke", ida, "--data-dir", data)
    assert p.returncode == 0, p.stderr
    assert "revoked token " + ida in p.stderr, p.stderr
    conn.request("GET", "/v1/jobs", headers=hdr)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert r.status == 401, (r.status, body)
    assert "revoked" in json.loads(body)["detail"], body
    pr = assert_problem(dmn.get("/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"), 401, "unauthorized")
    assert ida in pr["detail"] and "revoked" in pr["detail"], pr
    r = dmn.submit("check", model=CHAIN, outputs="out")
    assert_problem(r, 401, "unauthorized")
    # bob is unaffected
    assert dmn.get("/v1/jobs", token=tb).status == 200
    ts = listing(serve_bin, data)
    assert ts[ida]["state"] == "revoked" and ts[ida]["revoked"], ts[ida]
    assert ts[idb]["state"] == "active"

    # revoking again, an unknown id, a malformed one
    p = tok(serve_bin, "revoke", ida, "--data-dir", data)
    assert p.returncode == 1 and "already" in p.stderr, (p.returncode, p.stderr)
    p = tok(serve_bin, "revoke", "ffffffffffff", "--data-dir", data)
    assert p.returncode == 1 and "no token with id" in p.stderr, (p.returncode, p.stderr)
    for bad in ("abc", "XYZXYZXYZXYZ", "sdt_1234"):
        p = tok(serve_bin, "revoke", bad, "--data-dir", data)
        assert p.returncode == 2 and p.stderr.strip(), (bad, p.returncode, p.stderr)

    # the last active token revoked by the token itself: auth stays on for everyone
    p = tok(serve_bin, "revoke", tb, "--data-dir", data)
    assert p.returncode == 0, p.stderr
    assert_problem(dmn.get("/v1/jobs", token=tb), 401, "unauthorized")
    time.sleep(1.1)  # past the daemon's once-a-second look at whether tokens exist
    assert_problem(dmn.get("/v1/jobs", auth=False), 401, "unauthorized")
    assert dmn.get("/healthz", auth=False).status == 200


def test_expiry(daemons, serve_bin):
    data = daemons.data_dir()
    t, tid = create(serve_bin, data, "short", "--expires", "3s")
    dmn = daemons.new(data_dir=data, token=t)
    exp = parse_time(listing(serve_bin, data)[tid]["expires"])
    assert dmn.get("/v1/jobs").status == 200
    time.sleep(max(0.0, exp - time.time()) + 1.2)
    pr = assert_problem(dmn.get("/v1/jobs"), 401, "unauthorized")
    assert "expired" in pr["detail"] and tid in pr["detail"], pr
    assert listing(serve_bin, data)[tid]["state"] == "expired"
    # a revoke by an 8-digit prefix of the id works on an expired token too
    p = tok(serve_bin, "revoke", tid[:8], "--data-dir", data)
    assert p.returncode == 0, p.stderr
    assert listing(serve_bin, data)[tid]["state"] == "revoked"


@pytest.mark.parametrize("value", ["0d", "30", "30y", "-1d", "1.5d", "d", "", "36501d"])
def test_expires_refused(serve_bin, tmp_path, value):
    p = tok(serve_bin, "create", "--tenant", "x", "--expires", value, "--data-dir", tmp_path)
    assert p.returncode == 2, (value, p.returncode, p.stdout, p.stderr)
    assert "--expires" in p.stderr and not p.stdout, p.stderr
    assert not os.path.exists(tmp_path / "sparsityd.db"), "a refused create made a database"


@pytest.mark.parametrize("unit,secs", [("s", 1), ("m", 60), ("h", 3600), ("d", 86400),
                                       ("w", 604800)])
def test_expires_units(serve_bin, tmp_path, unit, secs):
    data = str(tmp_path)
    _, tid = create(serve_bin, data, "u", "--expires", "2" + unit)
    t = listing(serve_bin, data)[tid]
    assert abs(parse_time(t["expires"]) - parse_time(t["created"]) - 2 * secs) <= 1, t


def test_cli_usage_and_data_dir(serve_bin, tmp_path):
    data = str(tmp_path / "d")
    for args in ([], ["frob"], ["create"], ["create", "--tenant", "two words"],
                 ["create", "--tenant", "x" * 65], ["create", "--tenant", "a", "--json"],
                 ["list", "--tenant", "a"], ["revoke"], ["revoke", "a", "b"]):
        p = tok(serve_bin, *args, "--data-dir", data)
        assert p.returncode == 2 and p.stderr.strip(), (args, p.returncode, p.stderr)
    # list and revoke need the daemon's database: a wrong directory is said, not created
    p = tok(serve_bin, "list", "--data-dir", data)
    assert p.returncode == 2 and "no database" in p.stderr, p.stderr
    assert not os.path.exists(data)
    # --config: the data directory the daemon's config file names
    _, tid = create(serve_bin, data, "cfg")
    conf = tmp_path / "sparsityd.conf"
    conf.write_text("# as the service reads it\ndata_dir = %s\n" % data)
    p = tok(serve_bin, "list", "--config", conf)
    assert p.returncode == 0 and tid in p.stdout, (p.returncode, p.stdout, p.stderr)
    conf.write_text("no_such_setting = 1\n")
    p = tok(serve_bin, "list", "--config", conf)
    assert p.returncode == 2 and "no_such_setting" in p.stderr, p.stderr
