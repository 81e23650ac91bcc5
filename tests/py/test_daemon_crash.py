"""kill -9 of sparsityd serve in the middle of an upload and in the middle of a running job,
then a restart on the same data directory.

After each crash: the SQLite database passes PRAGMA integrity_check, every job answered
202 before the kill is still there, no partial upload became a job, every listed artifact
serves bytes that hash to its sha256 (no partial artifact), and the interrupted job
completes after the restart.
"""

import json
import os
import time

import daemon as D

CHAIN = D.graph("chain.pbtxt")
CFG = D.SAMPLE_CONFIG
ARGS = ["--workers", "1", "--max-attempts", "3"]


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def artifacts_whole(dmn, contract):
    """Every artifact of every job: size and sha256 as listed."""
    n = 0
    for s in D.all_jobs(dmn):
        j = contract.check(dmn.job(s["id"]))
        for a in j["artifacts"]:
            r = dmn.get(a["href"])
            assert r.status == 200, r.describe()
            assert len(r.body) == a["size"], "artifact %s of %s: %d bytes, listed %d" % (
                a["name"], j["id"], len(r.body), a["size"])
            assert D.sha256(r.body) == a["sha256"], "artifact %s of %s: bytes do not hash " \
                "to the listed sha256 (partial artifact)" % (a["name"], j["id"])
            n += 1
    return n


def test_kill9_during_upload(daemons, contract, big_model):
    dmn = daemons.new(args=ARGS)
    acked = []
    for i in range(3):
        r = dmn.submit("check", model=CHAIN, name="before-%d" % i)
        assert r.status == 202, r.describe()
        acked.append(r.json()["id"])
    # stream the big model slowly; kill -9 when about a third is sent
    conn, chunks = dmn.open_stream([("stage", "prune"), ("outputs", "out")],
                                   [("config", "c.txt", CFG.encode())], "model", big_model,
                                   chunk=1 << 20)
    size = os.path.getsize(big_model)
    sent = 0
    killed = False
    try:
        for b in chunks:
            conn.send(b)
            sent += len(b)
            time.sleep(0.002)
            if sent > size // 3:
                dmn.kill()
                killed = True
                break
    except OSError:
        pass
    finally:
        conn.close()
    assert killed
    D.integrity(dmn.data_dir)
    dmn.start()
    D.integrity(dmn.data_dir)
    jobs = D.all_jobs(dmn)
    ids = [j["id"] for j in jobs]
    for a in acked:
        assert a in ids, "job %s was answered 202 before the kill and is gone" % a
    assert not [j for j in jobs if j["stage"] == "prune"], (
        "the interrupted upload became a job: %s" % [j for j in jobs if j["stage"] == "prune"])
    for a in acked:
        assert dmn.wait_job(a)["state"] == "succeeded"
    artifacts_whole(dmn, contract)
    # the partial upload left nothing behind on disk (swept at start)
    used = du(dmn.data_dir)
    assert used < 16 << 20, "data dir holds %d bytes after the restart: the partial upload " \
        "(%d of %d bytes sent) was not removed" % (used, sent, size)
    # the daemon still takes uploads
    assert dmn.run_job("check", model=CHAIN)["state"] == "succeeded"
    assert dmn.stop() == 0
    D.integrity(dmn.data_dir)


def test_kill9_during_job(daemons, contract, big_model):
    dmn = daemons.new(args=ARGS)
    r = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    big = r.json()["id"]
    acked = [big]
    for i in range(2):
        r = dmn.submit("insert", model=CHAIN, config=CFG, outputs="out", name="queued-%d" % i)
        assert r.status == 202, r.describe()
        acked.append(r.json()["id"])
    # wait until the big job runs, then a little more, then kill -9
    deadline = time.time() + 60
    state = None
    while time.time() < deadline:
        state = dmn.job(big).json()["state"]
        if state != "queued":
            break
        time.sleep(0.02)
    assert state == "running", "big job is %s, not running: make it bigger" % state
    time.sleep(0.1)
    j = dmn.job(big).json()
    assert j["state"] == "running", "big job finished too fast to crash during it: %s" % (
        json.dumps(j)[:300],)
    dmn.kill()
    D.integrity(dmn.data_dir)

    dmn.start()
    D.integrity(dmn.data_dir)
    ids = [j["id"] for j in D.all_jobs(dmn)]
    for a in acked:
        assert a in ids, "job %s was answered 202 before the kill and is gone" % a
    # no partial output: whatever is listed now is whole
    artifacts_whole(dmn, contract)
    j = dmn.wait_job(big, timeout=180)
    assert j["state"] == "succeeded", "the interrupted job did not complete: %s" % json.dumps(j)
    assert j["attempts"] >= 2, "interrupted job ran again but attempts is %s" % j["attempts"]
    assert [a["name"] for a in j["artifacts"] if a["kind"] == "output"].count("model") == 1
    for a in acked[1:]:
        assert dmn.wait_job(a)["state"] == "succeeded"
    artifacts_whole(dmn, contract)
    log = dmn.get("/v1/jobs/%s/log" % big).text
    assert len(log.splitlines()) >= 4, log
    assert dmn.stop() == 0
    D.integrity(dmn.data_dir)


def test_kill9_attempts_exhausted(daemons, contract, big_model):
    """With --max-attempts 1, a job interrupted by a crash is not run again: after the
    restart it is failed with error.code attempts-exhausted, and the queue goes on."""
    dmn = daemons.new(args=["--workers", "1", "--max-attempts", "1"])
    r = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    big = r.json()["id"]
    r = dmn.submit("check", model=CHAIN)
    assert r.status == 202, r.describe()
    small = r.json()["id"]
    deadline = time.time() + 60
    while time.time() < deadline and dmn.job(big).json()["state"] == "queued":
        time.sleep(0.02)
    assert dmn.job(big).json()["state"] == "running"
    dmn.kill()
    dmn.start()
    D.integrity(dmn.data_dir)
    j = dmn.wait_job(big)
    assert j["state"] == "failed", j
    assert j["error"] and j["error"]["code"] == "attempts-exhausted", j["error"]
    assert dmn.wait_job(small)["state"] == "succeeded"
    artifacts_whole(dmn, contract)
    assert dmn.stop() == 0


def test_kill9_during_burst_of_uploads(daemons, contract):
    """4 clients upload small jobs in a loop; kill -9 lands while requests are in flight.
    Every job that was answered 202 is there after the restart, and completes."""
    import threading
    dmn = daemons.new(args=ARGS)
    acked, lock, stop = [], threading.Lock(), threading.Event()
    model = open(CHAIN, "rb").read()

    def client():
        while not stop.is_set():
            try:
                r = dmn.submit("insert", model=model, config=CFG, outputs="out", timeout=10)
            except OSError:
                return
            if r.status == 202:
                with lock:
                    acked.append(r.json()["id"])
    ts = [threading.Thread(target=client) for _ in range(4)]
    for t in ts:
        t.start()
    deadline = time.time() + 30
    while time.time() < deadline and len(acked) < 40:
        time.sleep(0.01)
    dmn.kill()
    stop.set()
    for t in ts:
        t.join(20)
    with lock:
        acked_now = list(acked)
    assert len(acked_now) >= 40, len(acked_now)
    D.integrity(dmn.data_dir)
    dmn.start()
    ids = {j["id"] for j in D.all_jobs(dmn)}
    lost = [a for a in acked_now if a not in ids]
    assert not lost, "%d of %d jobs answered 202 are gone after kill -9: %s" % (
        len(lost), len(acked_now), lost[:5])
    for a in acked_now:
        assert dmn.wait_job(a)["state"] == "succeeded"
    artifacts_whole(dmn, contract)
    assert dmn.stop() == 0
    D.integrity(dmn.data_dir)
