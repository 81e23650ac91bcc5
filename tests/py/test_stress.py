"""Bounded stress tests of `sparsityd serve`: stalled uploads against --max-uploads, idle
connections, 100 random kill -9, a full disk, keep-alive, and SIGTERM with 100 long-polls.

Every loop is bounded in count and in time, and all traffic goes to 127.0.0.1. Figures
(RSS, threads, iterations) are printed (pytest -s shows them). No TensorFlow here.
"""

import http.client
import os
import random
import re
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

import daemon as D
import hostile as H

CHAIN = D.graph("chain.pbtxt")
CFG = D.SAMPLE_CONFIG
MiB = 1 << 20


def upload_head(content_length, first_bytes=100 * 1024, stage="check"):
    """The bytes of a POST /v1/jobs whose multipart body claims content_length bytes, up to
    the first first_bytes bytes of the model part."""
    ctype, head = D.multipart([("stage", stage)], [], close=False)
    boundary = ctype.split("boundary=")[1]
    head += ("--%s\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m.pb\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n" % boundary).encode()
    body = head + b"\0" * max(0, first_bytes - len(head))
    return H.build_request("POST", "/v1/jobs", [("Content-Type", ctype),
                                                ("Content-Length", str(content_length))],
                           body, content_length=False)


def open_stalled(dmn, data):
    s = socket.create_connection((dmn.host, dmn.port), timeout=10)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # answered and closed before the 100 KB went out: the answer is read later
    return s


# ---------------------------------------------------------------------------------------
# 300 stalled uploads against --max-uploads 16


def test_stalled_uploads(daemons, tmp_path):
    cap, total = 16, 300
    dmn = daemons.new(args=["--max-uploads", str(cap)])
    pid = dmn.proc.pid
    assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"  # warm the threads
    time.sleep(0.5)
    idle_rss, idle_threads = H.rss(pid), H.threads(pid)
    data = upload_head(1 << 30)
    held, extra = [], []
    try:
        for _ in range(cap):
            held.append(open_stalled(dmn, data))
        time.sleep(0.5)
        for _ in range(total - cap):
            extra.append(open_stalled(dmn, data))
        # every upload beyond the cap is answered 429 too-many-uploads
        wrong = []
        for i, s in enumerate(extra):
            s.settimeout(10)
            r = H.read_response(s, "POST", "/v1/jobs", time.time())
            if r.status != 429:
                wrong.append("upload %d: %s" % (cap + i + 1, r.describe()[:600]))
                continue
            try:
                H.check_problem(r, dmn, 429, "too-many-uploads")
                assert (r.header("retry-after") or "").isdigit(), "429 without Retry-After"
            except AssertionError as e:
                wrong.append("upload %d: %s" % (cap + i + 1, str(e)[:600]))
        assert not wrong, "%d of the %d uploads beyond the cap of %d were not answered 429 " \
            "too-many-uploads:\n%s" % (len(wrong), total - cap, cap, "\n".join(wrong[:5]))
        for s in extra:
            s.close()
        extra = []
        # the 16 within the cap are still held, not answered
        answered = [i for i, s in enumerate(held) if select.select([s], [], [], 0)[0]]
        assert not answered, "uploads within the cap were answered or closed while they " \
            "stalled: %s" % answered
        r = dmn.get("/healthz", timeout=5)
        assert r.status == 200, "/healthz during the stall: " + r.describe()
        stall_rss, stall_threads = H.rss(pid), H.threads(pid)
    finally:
        for s in held + extra:
            s.close()
    print("\nidle: RSS %.1f MiB, %d threads; %d stalled uploads: RSS %.1f MiB, %d threads" % (
        idle_rss / MiB, idle_threads, cap, stall_rss / MiB, stall_threads))
    assert stall_threads <= idle_threads + 8, "threads %d while %d uploads stall (idle %d)" % (
        stall_threads, cap, idle_threads)
    limit = idle_rss + cap * 4 * MiB + 32 * MiB
    assert stall_rss <= limit, "RSS %.1f MiB while %d uploads stall (idle %.1f, limit %.1f)" % (
        stall_rss / MiB, cap, idle_rss / MiB, limit / MiB)

    # 3 bursts of 16 complete 20 MB uploads
    model = D.write_mlp(str(tmp_path / "m20.pb"), 5, 1024)  # 5 x 4 MiB
    peak = [H.rss(pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], H.rss(pid))
            except (OSError, KeyError):
                return
            time.sleep(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    retries = [0]
    try:
        for burst in range(3):
            results = [None] * cap

            def one(i):
                for _ in range(50):
                    try:
                        r = dmn.submit_file("check", model, timeout=120)
                    except (OSError, http.client.HTTPException) as e:
                        results[i] = H.no_response("POST", "/v1/jobs", repr(e))
                        return
                    results[i] = r
                    if r.status != 429:
                        return
                    retries[0] += 1  # a slot of the previous burst not yet released
                    time.sleep(0.1)
            ts = [threading.Thread(target=one, args=(i,)) for i in range(cap)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(180)
            bad = [r.describe()[:500] for r in results if r is None or r.status != 202]
            assert not bad, "burst %d: uploads not accepted:\n%s" % (burst, "\n".join(bad[:5]))
            for r in results:
                assert dmn.wait_job(r.json()["id"], timeout=120)["state"] == "succeeded"
    finally:
        done.set()
        sampler.join(5)
    deadline = time.time() + 10
    after = H.rss(pid)
    while after > idle_rss + 48 * MiB and time.time() < deadline:
        time.sleep(0.25)
        after = H.rss(pid)
    print("bursts: peak RSS %.1f MiB, RSS after %.1f MiB (idle %.1f), threads %d, "
          "%d retries after 429" % (peak[0] / MiB, after / MiB, idle_rss / MiB, H.threads(pid),
                                    retries[0]))
    assert after <= idle_rss + 48 * MiB, "RSS %.1f MiB 10 s after the bursts (idle %.1f MiB, " \
        "limit idle + 48 MiB)" % (after / MiB, idle_rss / MiB)
    H.alive(dmn)
    assert dmn.stop() == 0


# ---------------------------------------------------------------------------------------
# idle connections


def test_idle_connection_closed(daemons):
    dmn = daemons.new(args=["--idle-timeout", "2"])
    socks = {"silent": socket.create_connection((dmn.host, dmn.port), timeout=15),
             "half a request line": socket.create_connection((dmn.host, dmn.port), timeout=15)}
    socks["half a request line"].sendall(b"GET /v1/jo")
    t0 = time.time()
    closed = {}
    try:
        while len(closed) < len(socks) and time.time() - t0 < 12:
            r, _, _ = select.select([s for k, s in socks.items() if k not in closed], [], [],
                                    0.1)
            for s in r:
                k = [k for k, v in socks.items() if v is s][0]
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    closed[k] = time.time() - t0
        # the daemon still serves others meanwhile
        assert dmn.get("/healthz", timeout=5).status == 200
    finally:
        for s in socks.values():
            s.close()
    print("\nidle connections closed after: %s" % {k: round(v, 2) for k, v in closed.items()})
    for k in socks:
        assert k in closed, "the %s connection was still open %.0f s after it went idle " \
            "(--idle-timeout 2)" % (k, time.time() - t0)
        assert 1.0 <= closed[k] <= 5.5, "the %s connection was closed after %.2f s " \
            "(--idle-timeout 2: expected about 2-5 s)" % (k, closed[k])
    H.alive(dmn)


# ---------------------------------------------------------------------------------------
# 100 random kill -9


SMALL_JOBS = [
    ("check", dict(model=D.graph("chain.pbtxt"))),
    ("check", dict(model=D.graph("small.pbtxt"))),
    ("check", dict(model=D.graph("conv.pbtxt"))),
    ("prune", dict(model=D.graph("chain.pbtxt"), config=CFG, outputs="out")),
    ("insert", dict(model=D.graph("chain.pbtxt"), config=CFG, outputs="out")),
]


def test_kill9_loop(daemons, tmp_path):
    iterations, budget = 100, 200.0  # the loop stops early (and says so) past the budget
    dmn = daemons.new(args=["--workers", "1"], start=False)
    big = H.synthetic_model(str(tmp_path / "big30.pb"), 30)  # ~29 MB
    rnd = random.Random(20261201)
    acked, lock = [], threading.Lock()

    def client(seed, stop, with_big):
        r2 = random.Random(seed)
        for n in range(4):
            if stop.is_set():
                return
            try:
                if with_big and n == 0:
                    r = dmn.submit_file("prune", big, config=CFG, outputs="out", timeout=30)
                else:
                    stage, kw = r2.choice(SMALL_JOBS)
                    r = dmn.submit(stage, timeout=10, **kw)
            except (OSError, http.client.HTTPException):
                return  # killed under it
            if r.status == 202:
                with lock:
                    acked.append(r.json()["id"])
    t0 = time.time()
    done = 0
    for i in range(iterations):
        if time.time() - t0 > budget:
            break
        dmn.start()
        stop = threading.Event()
        ts = [threading.Thread(target=client, args=(rnd.random(), stop, k == 0 and i % 5 == 2))
              for k in range(3)]
        for t in ts:
            t.start()
        time.sleep(rnd.uniform(0, 0.4))
        dmn.kill()
        stop.set()
        for t in ts:
            t.join(60)
        done += 1
    loop_s = time.time() - t0
    print("\nkill -9 loop: %d iterations in %.1f s, %d jobs acknowledged" % (done, loop_s,
                                                                          len(acked)))
    D.integrity(dmn.data_dir)
    dmn.start()
    # every job reaches a final state
    deadline = time.time() + 300
    while True:
        busy = [j for s in ("queued", "running")
                for j in dmn.get("/v1/jobs?limit=200&state=" + s).json()["jobs"]]
        if not busy or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not busy, "jobs still queued/running 300 s after the last start: %s" % [
        (j["id"], j["state"]) for j in busy[:10]]
    jobs = D.all_jobs(dmn)
    by_id = {j["id"]: j for j in jobs}
    lost = [a for a in acked if a not in by_id]
    assert not lost, "%d of %d jobs answered 202 are gone: %s" % (len(lost), len(acked),
                                                                  lost[:5])
    for a in acked:
        r = dmn.job(a)
        assert r.status == 200, r.describe()
    states = {}
    for j in jobs:
        assert j["state"] in D.TERMINAL, j
        key = j["state"] + ("/" + j["error"]["code"] if j.get("error") else "")
        states[key] = states.get(key, 0) + 1
    print("final states: %s" % states)
    D.integrity(dmn.data_dir)
    n = 0
    for s in jobs:
        j = dmn.job(s["id"]).json()
        for a in j["artifacts"]:
            r = dmn.get(a["href"])
            assert r.status == 200, r.describe()
            h = D.sha256(r.body)
            assert h == a["sha256"] and r.header("etag") == '"%s"' % h, (
                "artifact %s of job %s: bytes hash to %s, listed sha256 %s, ETag %s" % (
                    a["name"], j["id"], h, a["sha256"], r.header("etag")))
            n += 1
    print("%d artifacts verified" % n)
    H.alive(dmn)
    assert dmn.stop() == 0
    assert loop_s < 260, "the kill -9 loop took %.0f s" % loop_s
    assert done >= 50, "only %d kill -9 iterations fit in the time budget" % done


# ---------------------------------------------------------------------------------------
# a full disk


PATHLIKE = re.compile(r"(?<![\w.:])/[\w.@-]+/[\w./@-]*")


def fill(path, mount, leave):
    """Grows the file at path until at most `leave` bytes are free on mount (or ENOSPC)."""
    chunk = b"\xa5" * MiB
    with open(path, "ab") as f:
        while True:
            st = os.statvfs(mount)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk[:min(len(chunk), free - leave)] if leave else chunk)
                f.flush()
            except OSError:
                break


def test_disk_full(daemons, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the full-disk test mounts a tmpfs, which needs root (CI runs as root)")
    mnt = str(tmp_path / "small-disk")
    D.mount_tmpfs(mnt, "96m")
    filler = os.path.join(mnt, "filler")
    try:
        dmn = daemons.new(data_dir=mnt, args=["--workers", "1"])
        m20 = D.write_mlp(str(tmp_path / "m20.pb"), 5, 1024)
        fill(filler, mnt, 4 * MiB)
        r = dmn.submit_file("check", m20, timeout=60)
        p = H.check_problem(r, dmn, 507, "insufficient-storage")
        assert not PATHLIKE.search(p["detail"]), "the 507 names a filesystem path: %r" % (
            p["detail"],)
        H.alive(dmn)
        os.unlink(filler)
        # a slower job first, then jobs queued behind it; then the disk fills up
        slow = D.write_mlp(str(tmp_path / "slow.pb"), 6, 1024)  # 24 MiB in, 24 MiB out
        smalls = [D.write_mlp(str(tmp_path / ("s%d.pb" % i)), 1, 800, seed=i) for i in range(4)]
        ids = []
        for path in [slow] + smalls:
            r = dmn.submit_file("prune", path, config=CFG, outputs="out", timeout=60)
            assert r.status == 202, "while space remains: " + r.describe()
            ids.append(r.json()["id"])
        fill(filler, mnt, 0)
        time.sleep(2)
        H.alive(dmn)
        for i in ids:
            r = dmn.get("/v1/jobs/" + i, timeout=5)
            assert r.status == 200, "GET of a job with the disk full: " + r.describe()
        os.unlink(filler)
        deadline = time.time() + 30
        final = {}
        while time.time() < deadline and len(final) < len(ids):
            for i in ids:
                if i not in final:
                    j = dmn.job(i).json()
                    if j["state"] in D.TERMINAL:
                        final[i] = j
            time.sleep(0.2)
        summary = {i: (j["state"], (j.get("error") or {}).get("code")) for i, j in final.items()}
        print("\njobs after the disk filled up: %s" % summary)
        stuck = [i for i in ids if i not in final]
        assert not stuck, "jobs not final 30 s after the space came back: %s" % [
            (i, dmn.job(i).json()["state"]) for i in stuck]
        for j in final.values():
            if j["state"] == "failed":
                H.check_job_error(j, dmn, j["error"]["code"])
                assert j["error"]["code"] in ("insufficient-storage", "io-error"), j["error"]
                assert not PATHLIKE.search(j["error"]["message"]), j["error"]
        H.alive(dmn)
        assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"
        assert dmn.stop() == 0, "the daemon did not exit 0 after the full disk"
    finally:
        for dd in daemons.all:
            dd.kill()
        D.umount(mnt)


# ---------------------------------------------------------------------------------------
# keep-alive


def test_keep_alive_1000_requests(daemons):
    dmn = daemons.new()
    job = dmn.run_job("check", model=CHAIN)
    conn = dmn.connection(timeout=10)
    sock = None
    try:
        for i in range(1000):
            path = "/healthz" if i % 10 == 9 else "/v1/jobs/" + job["id"]
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, "request %d %s -> %d %r" % (i, path, resp.status,
                                                                   body[:300])
            c = (resp.getheader("Connection") or "").lower()
            assert "close" not in c, "request %d: the daemon answered Connection: %s" % (i, c)
            if sock is None:
                sock = conn.sock
            assert conn.sock is sock and sock is not None, \
                "request %d went over a new connection (the daemon closed the previous one)" % i
    finally:
        conn.close()
    H.alive(dmn)


# ---------------------------------------------------------------------------------------
# SIGTERM answers long-polls


def test_sigterm_answers_long_polls(daemons, big_model):
    dmn = daemons.new(args=["--workers", "1"])
    r = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    big = r.json()["id"]
    deadline = time.time() + 60
    while time.time() < deadline and dmn.job(big).json()["state"] == "queued":
        time.sleep(0.01)
    r = dmn.submit("check", model=CHAIN)
    assert r.status == 202, r.describe()
    target = r.json()["id"]
    r = dmn.job(target)
    if r.json()["state"] != "queued" or dmn.job(big).json()["state"] != "running":
        pytest.skip("the big job ended before the long-polls could wait on a queued job")
    etag = r.header("etag")
    n = 100
    results = [None] * n
    sent = threading.Semaphore(0)

    def poll(i):
        conn = dmn.connection(timeout=40)
        try:
            conn.request("GET", "/v1/jobs/%s?wait=30" % target, headers={"If-None-Match": etag})
            sent.release()
            resp = conn.getresponse()
            results[i] = (resp.status, resp.read()[:200])
        except Exception as e:  # noqa: BLE001 - any failure is what the test reports
            results[i] = (0, "%s: %s (%.2f s after the SIGTERM)" % (
                type(e).__name__, e, time.time() - t0[0]))
        finally:
            conn.close()
    t0 = [time.time()]
    ts = [threading.Thread(target=poll, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    # every client has sent its request; then a moment for the daemon to park them all
    for i in range(n):
        assert sent.acquire(timeout=30), "only %d of %d long-polls got their request out" % (
            i, n)
    time.sleep(1.0)
    assert H.accept_backlog(dmn.port) is not None, "no LISTEN socket on port %d in " \
        "/proc/net/tcp" % dmn.port
    deadline = time.time() + 10
    while H.accept_backlog(dmn.port) and time.time() < deadline:
        time.sleep(0.05)
    assert not H.accept_backlog(dmn.port), "the daemon has not accepted every long-poll's " \
        "connection 10 s after they were sent (accept backlog %s)" % H.accept_backlog(dmn.port)
    running = dmn.job(big).json()["state"] == "running"
    t0[0] = time.time()
    dmn.signal(signal.SIGTERM)
    try:
        rc = dmn.proc.wait(10)
    except subprocess.TimeoutExpired:
        rc = None
    exit_s = time.time() - t0[0]
    for t in ts:
        t.join(40)
    statuses = {}
    for res in results:
        k = res[0] if res else "no result"
        statuses[k] = statuses.get(k, 0) + 1
    print("\nSIGTERM with %d long-polls (big job %s): exit %s after %.1f s; answers %s" % (
        n, "running" if running else "done", rc, exit_s, statuses))
    bad = [res for res in results if not res or res[0] not in (200, 304, 503)]
    assert not bad, "%d of %d long-polls got no HTTP answer when the daemon stopped: %s" % (
        len(bad), n, bad[:5])
    assert rc == 0, "the daemon did not exit 0 within 10 s of SIGTERM (rc %s)\n%s" % (
        rc, dmn.logs())
