"""GET /v1/events: job changes pushed as Server-Sent Events.

A job's whole life arrives in order on a stream (queued, running, progress, the outcome,
the deletion), each event numbered by the version the change took, so ids increase and
the data's `version` is the job's ETag; Last-Event-ID replays what a reconnecting client
missed, or says `reset` when the daemon no longer has it (after a restart); a tenant gets
none of another tenant's events; 1,000 idle streams cost the daemon less than 32 MiB of
RSS; a client that stops reading is dropped while other streams and requests go on; the
stream limit answers 503 and frees its slot; heartbeats; SIGTERM ends the streams.

The streams are read through raw sockets (Stream below), so a test can stop reading one
and see exactly what the daemon wrote. No TensorFlow here.
"""

import json
import os
import re
import resource
import signal
import socket
import threading
import time

import pytest

import daemon as D
import hostile as H
from daemon import CHAIN, assert_problem, submit_ok

MiB = 1 << 20
LIFE = ("queued", "running", "succeeded")
# 1,000 idle streams must cost the daemon less than this. An AddressSanitizer build
# (scripts/test.sh runs the http suite on one) adds shadow memory and redzones to every
# allocation, about 12 KiB per connection here, so it gets more; the plain build, which
# scripts/test.sh runs these files on as well, is held to the bound.
STREAMS_RSS = 32 * MiB
STREAMS_RSS_ASAN = 48 * MiB


def asan_build(binary):
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


class Stream:
    """One GET /v1/events on its own socket: the status and headers are read at once;
    blocks (events and comments) are read on demand with next()."""

    def __init__(self, dmn, token=None, last_id=None, rcvbuf=None, timeout=10):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((dmn.host, dmn.port))
        tok = dmn.token if token is None else token
        req = "GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        if tok:
            req += "Authorization: Bearer %s\r\n" % tok
        if last_id is not None:
            req += "Last-Event-ID: %s\r\n" % last_id
        self.sock.sendall((req + "\r\n").encode())
        self.raw = b""   # bytes read, not yet decoded from chunks
        self.text = b""  # the decoded body, not yet split into blocks
        self.ended = False
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "")

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the daemon closed the stream")
        self.raw += data

    def _decode(self):
        if not self.chunked:
            self.text += self.raw
            self.raw = b""
            return
        while b"\r\n" in self.raw:
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.ended = True
                self.raw = b""
                return
            if len(rest) < size + 2:
                return
            self.text += rest[:size]
            self.raw = rest[size + 2:]

    def next(self, timeout=10):
        """The next block as a dict: id, event, data (parsed JSON for job events),
        retry, comments. TimeoutError when none comes in time, EOFError at the end."""
        deadline = time.time() + timeout
        self._decode()  # what came with the headers or the last block
        while b"\n\n" not in self.text:
            if self.ended:
                raise EOFError("the stream ended")
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no event within %.1f s" % timeout)
            self.sock.settimeout(left)
            try:
                self._recv()
            except socket.timeout:
                raise TimeoutError("no event within %.1f s" % timeout) from None
            self._decode()
        block, self.text = self.text.split(b"\n\n", 1)
        ev = {"id": None, "event": None, "data": None, "retry": None, "comments": []}
        for line in block.decode("utf-8").split("\n"):
            if line.startswith(":"):
                ev["comments"].append(line[1:].strip())
                continue
            k, _, v = line.partition(":")
            ev[k] = v[1:] if v.startswith(" ") else v
        if ev["data"] is not None:
            ev["data"] = json.loads(ev["data"])
        if ev["id"] is not None:
            ev["id"] = int(ev["id"])
        ev["t"] = time.time()
        return ev

    def job_events(self, until, timeout=30):
        """Job events until until(event) holds (that one included)."""
        out = []
        deadline = time.time() + timeout
        while True:
            ev = self.next(max(0.1, deadline - time.time()))
            if ev["event"] == "job":
                out.append(ev)
                if until(ev):
                    return out

    def close(self):
        self.sock.close()


def quiet(s, secs=0.5):
    """Asserts that no event (heartbeat comments aside) comes within secs."""
    deadline = time.time() + secs
    while True:
        try:
            ev = s.next(timeout=max(0.01, deadline - time.time()))
        except TimeoutError:
            return
        assert ev["event"] is None and ev["data"] is None, "unexpected event: %s" % ev


def opened(dmn, **kw):
    s = Stream(dmn, **kw)
    assert s.status == 200, (s.status, s.headers, s.raw[:500])
    hello = s.next()
    assert hello["retry"] == "3000" and hello["comments"], hello
    return s


def open_streams(dmn):
    """The daemon's sparsityd_event_streams gauge."""
    m = dmn.get("/metrics", auth=False).text
    return int(re.search(r"^sparsityd_event_streams (\d+)$", m, re.M).group(1))


def of_job(events, job_id):
    return [e for e in events if e["data"]["id"] == job_id]


def check_life(contract, events, job_id, stage):
    """events (of one job) are its life in order: states never go back, ids increase,
    every data is a JobEvent whose version is the job's ETag at that id."""
    assert events, "no event for job %s" % job_id
    states = [e["data"]["state"] for e in events]
    assert states[0] == "queued", states
    assert [s for s in LIFE if s in states] == list(LIFE), states
    assert states == sorted(states, key=LIFE.index), "states out of order: %s" % states
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), "ids do not increase: %s" % ids
    progress = []
    for e in events:
        contract.validate(e["data"], "JobEvent")
        assert e["data"]["id"] == job_id and e["data"]["stage"] == stage, e
        assert e["data"]["version"] == "%s-v%d" % (job_id, e["id"]), e
        if e["data"]["state"] == "running":
            progress.append(e["data"]["progress"])
    assert progress == sorted(progress), "progress goes back: %s" % progress
    assert events[-1]["data"]["progress"] == 100, events[-1]


# ---------------------------------------------------------------------------------------


def test_a_job_whole_life_in_order(d, contract):
    s = opened(d)
    assert s.headers["content-type"].startswith("text/event-stream"), s.headers
    assert "no-cache" in s.headers["cache-control"], s.headers
    t0 = time.time()
    job = submit_ok(d, contract, "check", model=CHAIN, name="life")
    t_submit = time.time()
    events = s.job_events(lambda e: e["data"]["id"] == job["id"] and
                          e["data"]["state"] in D.TERMINAL)
    mine = of_job(events, job["id"])
    check_life(contract, mine, job["id"], "check")
    assert mine[0]["t"] - t_submit < 1.0, "queued event %.3f s after the 202" % (
        mine[0]["t"] - t_submit)
    assert mine[0]["t"] >= t0
    # the last event's version is the ETag a GET now answers with
    r = d.job(job["id"])
    assert r.status == 200 and r.header("etag") == '"%s"' % mine[-1]["data"]["version"], (
        r.header("etag"), mine[-1])
    assert r.json()["state"] == "succeeded"
    # an event carries the job's list row: what GET /v1/jobs?view=brief lists for it
    row = [j for j in d.get("/v1/jobs?view=brief").json()["jobs"] if j["id"] == job["id"]]
    assert row and {k: mine[-1]["data"][k] for k in row[0]} == row[0], (row, mine[-1])
    # the deletion is an event too, after every earlier one
    r = d.request("DELETE", "/v1/jobs/" + job["id"])
    assert r.status == 204, r.describe()
    t_del = time.time()
    gone = s.job_events(lambda e: e["data"]["deleted"])
    assert len(gone) == 1 and gone[0]["data"]["id"] == job["id"], gone
    g = gone[0]
    contract.validate(g["data"], "JobEvent")
    assert g["id"] > mine[-1]["id"] and g["data"]["state"] == "succeeded", g
    assert g["t"] - t_del < 1.0, "deleted event %.3f s after the 204" % (g["t"] - t_del)
    s.close()


def test_names_in_events(d, contract):
    """A name is escaped as JSON (the API refuses control characters in names, so
    quotes, backslashes and non-ASCII are what an event must carry intact); one too
    long for an event is left out, and the rest of the event is whole."""
    s = opened(d)
    odd = 'a "quoted" \\name with \u2028, \u00fc and </script>'
    long = "n" * 2000
    ids = [submit_ok(d, contract, "check", model=CHAIN, name=n)["id"] for n in (odd, long)]
    events = s.job_events(lambda e: e["data"]["id"] == ids[1] and
                          e["data"]["state"] in D.TERMINAL)
    for jid, name in zip(ids, (odd, long)):
        mine = of_job(events, jid)
        check_life(contract, mine, jid, "check")
        assert d.job(jid).json()["name"] == name
        for e in mine:
            if name is odd:
                assert e["data"]["name"] == odd, e
            else:
                assert "name" not in e["data"] and e["data"]["input_bytes"] > 0, e
    s.close()


def test_head_sends_headers_only(d):
    """HEAD /v1/events answers with the stream's headers and no byte of body: the last
    chunk of a streamed body, sent on a keep-alive connection, would be read as the
    start of the next answer."""
    auth = "Authorization: Bearer %s\r\n" % d.token if d.token else ""
    got = H.exchange(d, ("HEAD /v1/events HTTP/1.1\r\nHost: x\r\n%s\r\n"
                         "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                         % auth).encode())
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), got
    assert b"text/event-stream" in head, got
    assert rest.startswith(b"HTTP/1.1 200"), "bytes after HEAD's headers:\n%r" % got


def test_cancel_is_an_event(d, contract, big_model):
    s = opened(d)
    job = D.start_big(d, contract, big_model)
    r = d.request("POST", "/v1/jobs/%s/cancel" % job["id"])
    assert r.status == 200, r.describe()
    events = of_job(s.job_events(lambda e: e["data"]["id"] == job["id"] and
                                 e["data"]["state"] in D.TERMINAL, timeout=120), job["id"])
    states = [e["data"]["state"] for e in events]
    assert states[0] == "queued" and "running" in states and states[-1] == "canceled", states
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), ids
    s.close()


def test_last_event_id_replays_what_was_missed(d, contract):
    s = opened(d)
    a = submit_ok(d, contract, "check", model=CHAIN, name="a")
    seen = of_job(s.job_events(lambda e: e["data"]["id"] == a["id"] and
                               e["data"]["state"] in D.TERMINAL), a["id"])
    s.close()
    # reconnect after the first event: the rest comes again, the same ids and data
    s = opened(d, last_id=seen[0]["id"])
    again = s.job_events(lambda e: e["id"] == seen[-1]["id"])
    assert all(e["id"] > seen[0]["id"] for e in again), again
    assert [(e["id"], e["data"]) for e in of_job(again, a["id"])] == \
        [(e["id"], e["data"]) for e in seen[1:]]
    last = again[-1]["id"]
    # up to date: nothing to replay, the stream waits for the next change
    quiet(s)
    s.close()
    # a whole job's life while disconnected: all of it on reconnecting
    b = submit_ok(d, contract, "check", model=CHAIN, name="b")
    d.wait_job(b["id"])
    s = opened(d, last_id=last)
    missed = s.job_events(lambda e: e["data"]["id"] == b["id"] and
                          e["data"]["state"] in D.TERMINAL, timeout=5)
    check_life(contract, of_job(missed, b["id"]), b["id"], "check")
    assert all(e["id"] > last for e in missed)
    s.close()
    # an id this daemon never gave: reset, then live events
    s = opened(d, last_id=missed[-1]["id"] + 1000)
    r = s.next()
    assert r["event"] == "reset" and r["id"] == missed[-1]["id"] and r["data"]["reason"], r
    s.close()
    # Last-Event-ID that is not an event id: 400
    for bad in ("abc", "-1", "1e3", "12a", "9" * 19):
        r = d.get("/v1/events", headers={"Last-Event-ID": bad}, timeout=5)
        assert_problem(r, 400, "bad-request")
        contract.check(r)


def test_reset_after_a_restart(daemons, contract):
    dmn = daemons.new()
    s = opened(dmn)
    job = submit_ok(dmn, contract, "check", model=CHAIN)
    last = s.job_events(lambda e: e["data"]["state"] in D.TERMINAL)[-1]["id"]
    s.close()
    dmn.stop()
    dmn.start()
    # nothing changed since `last`: nothing was missed, no reset
    s = opened(dmn, last_id=last)
    quiet(s)
    s.close()
    # an id from before the restart: the events after it are gone with the process
    s = opened(dmn, last_id=last - 1)
    r = s.next()
    assert r["event"] == "reset" and r["id"] == last and r["data"]["reason"], r
    # then the stream follows what comes, ids continuing past the old ones
    r = dmn.request("DELETE", "/v1/jobs/" + job["id"])
    assert r.status == 204, r.describe()
    g = s.job_events(lambda e: e["data"]["deleted"])[-1]
    assert g["data"]["id"] == job["id"] and g["id"] > last, g
    s.close()


def ends(s, within):
    """Asserts that the daemon ends stream s within `within` seconds."""
    deadline = time.time() + within
    with pytest.raises(EOFError):
        while True:
            s.next(timeout=max(0.01, deadline - time.time()))
    s.close()
    return s.ended  # True: the chunked body's end; False: the connection was closed


def open_when_free(dmn, within=5, **kw):
    """A stream, once a slot is free (a closed stream's slot frees at its next write)."""
    deadline = time.time() + within
    while True:
        s = Stream(dmn, **kw)
        if s.status == 200:
            assert s.next()["retry"] == "3000"
            return s
        assert s.status == 503, s.status
        s.close()
        assert time.time() < deadline, "no stream slot came free within %ss" % within
        time.sleep(0.2)


def test_tenants_see_only_their_own(daemons, serve_bin, contract):
    data = daemons.data_dir()
    ta = D.token_create(serve_bin, data, "team-a")
    tb = D.token_create(serve_bin, data, "team-b")
    dmn = daemons.new(data_dir=data, token=ta, args=["--event-heartbeat", "1"])
    r = dmn.get("/v1/events", auth=False)
    assert_problem(r, 401, "unauthorized")
    contract.check(r)
    sa, sb = opened(dmn, token=ta), opened(dmn, token=tb)
    ja = submit_ok(dmn, contract, "check", model=CHAIN, token=ta)
    jb = submit_ok(dmn, contract, "check", model=CHAIN, token=tb)
    for jid, tok in ((ja["id"], ta), (jb["id"], tb)):
        dmn.wait_job(jid, token=tok)
        assert dmn.request("DELETE", "/v1/jobs/" + jid, token=tok).status == 204
    ea = sa.job_events(lambda e: e["data"]["id"] == ja["id"] and e["data"]["deleted"])
    eb = sb.job_events(lambda e: e["data"]["id"] == jb["id"] and e["data"]["deleted"])
    assert {e["data"]["id"] for e in ea} == {ja["id"]}, ea
    assert {e["data"]["id"] for e in eb} == {jb["id"]}, eb
    check_life(contract, [e for e in ea if not e["data"]["deleted"]], ja["id"], "check")
    # the other tenant's events are not merely late: nothing more is waiting
    for s in (sa, sb):
        quiet(s)
        s.close()
    # a replay from the start holds only the tenant's own events as well
    s = opened(dmn, token=tb, last_id=0)
    replay = s.job_events(lambda e: e["data"]["deleted"], timeout=5)
    assert {e["data"]["id"] for e in replay} == {jb["id"]}, replay
    # a stream lasts, but its token is checked again every heartbeat: revoked, it ends
    D.cli(serve_bin, "token", "revoke", tb, "--data-dir", data)
    ends(s, 5)
    assert_problem(dmn.get("/v1/events", token=tb), 401, "unauthorized")


def test_1000_idle_streams_cost_under_32_mib(daemons, contract, serve_bin):
    n = 1000
    limit = STREAMS_RSS_ASAN if asan_build(serve_bin) else STREAMS_RSS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 500), hard))
    dmn = daemons.new(args=["--max-event-streams", str(n), "--max-connections", str(n + 100),
                            "--event-heartbeat", "1"], start=False)
    # meson test sets MALLOC_PERTURB_, which makes glibc fill every allocation, so each
    # connection's 32 KiB buffer would be resident in full: measure the daemon as it
    # runs in service, without it.
    dmn.env = {k: v for k, v in os.environ.items() if k != "MALLOC_PERTURB_"}
    dmn.start()
    pid = dmn.proc.pid
    assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"  # warm the threads
    for s in [opened(dmn) for _ in range(10)]:
        s.close()
    # closed by their clients, their slots free at the next heartbeat
    deadline = time.time() + 5
    while open_streams(dmn) and time.time() < deadline:
        time.sleep(0.2)
    assert open_streams(dmn) == 0
    before = H.rss(pid)
    streams = [opened(dmn) for _ in range(n)]
    time.sleep(0.5)
    after = H.rss(pid)
    print("\n%d idle event streams: daemon RSS %.1f -> %.1f MiB (+%.1f MiB, %.1f KiB each; "
          "limit %d MiB)" % (n, before / MiB, after / MiB, (after - before) / MiB,
                             (after - before) / n / 1024, limit // MiB))
    assert after - before < limit, "1000 idle streams cost %.1f MiB (limit %d MiB)" % (
        (after - before) / MiB, limit // MiB)
    assert open_streams(dmn) == n
    # one more is refused, and says why
    r = dmn.get("/v1/events")
    assert_problem(r, 503, "unavailable")
    contract.check(r)
    assert r.header("retry-after") == "5" and "max_event_streams" in r.json()["detail"], r
    # every one of them is alive: a change reaches all
    job = submit_ok(dmn, contract, "check", model=CHAIN)
    t0 = time.time()
    for s in streams:
        ev = s.job_events(lambda e: e["data"]["id"] == job["id"])[0]
        assert ev["data"]["state"] == "queued", ev
    print("the job's first event read on all %d streams in %.2f s" % (n, time.time() - t0))
    for s in streams:
        s.close()


def test_a_client_that_stops_reading_is_dropped(daemons, contract):
    hb = 1
    dmn = daemons.new(args=["--event-heartbeat", str(hb), "--max-event-streams", "2"])
    slow = opened(dmn, rcvbuf=4096)
    fast = opened(dmn)
    got, errors = [], []

    def reader():
        try:
            while True:
                ev = fast.next(timeout=30)
                if ev["event"] == "job":
                    got.append(ev)
                    if ev["data"]["deleted"]:
                        return
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    # enough events to fill what the slow client and its socket can hold (about 70 KB)
    jobs = [submit_ok(dmn, contract, "check", model=CHAIN)["id"] for _ in range(200)]
    for jid in jobs:
        dmn.wait_job(jid, timeout=60)
    # the daemon goes on answering while the slow client holds its stream
    r = dmn.get("/v1/jobs?limit=5")
    assert r.status == 200 and r.elapsed < 0.5, (r.status, r.elapsed)
    assert dmn.request("DELETE", "/v1/jobs/" + jobs[-1]).status == 204
    t.join(30)
    assert not errors and not t.is_alive(), errors
    # the fast stream got every job's whole life, in order
    ids = [e["id"] for e in got]
    assert ids == sorted(set(ids)), "fast stream out of order"
    for jid in jobs:
        states = [e["data"]["state"] for e in got if e["data"]["id"] == jid]
        assert states[0] == "queued" and states[-1] == "succeeded", (jid, states)
    # the slow one: dropped once nothing could be written to it for 2 heartbeats
    time.sleep(2 * hb + 2)
    read, closed = 0, False
    deadline = time.time() + 5
    slow.sock.settimeout(1)
    while time.time() < deadline:
        try:
            data = slow.sock.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        except socket.timeout:
            continue
        if not data:
            closed = True
            break
        read += len(data)
    assert closed, "the stalled stream is still open (%d bytes read after the stall)" % read
    print("\nstalled stream dropped; %d bytes were left in its buffers; the fast stream got "
          "%d events" % (read, len(got)))
    # its slot is free again (max_event_streams 2: fast + a new one)
    open_when_free(dmn).close()
    fast.close()


def test_heartbeat_limit_and_shutdown(daemons, contract, serve_bin):
    dmn = daemons.new(args=["--event-heartbeat", "1", "--max-event-streams", "2"])
    s1, s2 = opened(dmn), opened(dmn)
    hb = s1.next(timeout=3)
    assert hb["comments"] == ["hb"] and hb["event"] is None, hb
    r = dmn.get("/v1/events")
    assert_problem(r, 503, "unavailable")
    contract.check(r)
    # a client that goes away frees its slot by the next heartbeat
    s2.close()
    s3 = open_when_free(dmn)
    # streams opened while no token existed end once one does
    tok = D.token_create(serve_bin, dmn.data_dir, "team-x")
    ends(s1, 5)
    ends(s3, 5)
    s4 = open_when_free(dmn, token=tok)
    # SIGTERM: every stream ends (the chunked body's end), the daemon exits 0
    t0 = time.time()
    dmn.signal(signal.SIGTERM)
    assert ends(s4, 10), "SIGTERM cut the stream instead of ending it"
    assert dmn.proc.wait(20) == 0
    print("\nstreams ended and the daemon exited %.2f s after SIGTERM" % (time.time() - t0))


def test_cancel_and_delete_while_stopping(daemons, contract):
    """A cancel or DELETE that comes while the stop waits for a stalled stream used to wait
    for the loop thread, which had already stopped: never answered, and the daemon never
    exited. Both now get 503 and the daemon exits."""
    dmn = daemons.new()
    slow = opened(dmn, rcvbuf=1024)
    # enough events (about 100 KB) that the stream cannot end until its client reads
    jobs = [submit_ok(dmn, contract, "check", model=CHAIN, name="n" * 280)["id"]
            for _ in range(100)]
    for jid in jobs:
        dmn.wait_job(jid, timeout=60)
    t0 = time.time()
    dmn.signal(signal.SIGTERM)
    time.sleep(0.3)
    for method, path in (("DELETE", "/v1/jobs/" + jobs[0]),
                         ("POST", "/v1/jobs/%s/cancel" % jobs[1])):
        r = dmn.request(method, path, timeout=5)
        assert_problem(r, 503, "unavailable")
        contract.check(r)
    assert time.time() - t0 < 2, "the stop's grace for the stalled stream was over: no test"
    assert dmn.stop(timeout=20) == 0
    slow.close()
    dmn.start()
    for jid in jobs[:2]:  # the DELETE was not carried out
        assert dmn.get("/v1/jobs/" + jid).json()["state"] == "succeeded"
