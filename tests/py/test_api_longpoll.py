"""Queued and running jobs: a full queue (429 with Retry-After), cancel and delete of
queued, running and finished jobs, and long-polls (?wait=) that answer as soon as the job
they wait on changes, is canceled or is deleted.

A big synthetic GraphDef (conftest.py's big_model) keeps one job running on a daemon with
one worker, so the next one stays queued.
"""

import os
import socket
import threading
import time

import pytest

import daemon as D
from daemon import CFG, CHAIN, assert_problem, start_big, submit_ok


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


def test_concurrent_clients(daemons, contract, big_model):
    """20 uploads at once all get 202 with distinct ids and succeed; 10 long-polls on one
    queued job all wake when it starts. (With the default max_uploads of 16, four of the
    20 may rightly get 429: uploads are received in parallel, each holding its slot
    until its blobs are committed; test_client covers the retry.)"""
    dmn = daemons.new(args=["--workers", "1", "--max-uploads", "20"])
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


def test_long_polls_whose_client_left_free_their_connections(daemons, contract):
    """A long-poll sent and dropped at once used to hold its connection until its
    deadline (libmicrohttpd does not watch a suspended socket), so a client could take
    every slot of max_connections without holding a socket itself."""
    dmn = daemons.new(args=["--max-connections", "8"])
    j = submit_ok(dmn, contract, "check", model=CHAIN)
    dmn.wait_job(j["id"])
    etag = dmn.job(j["id"]).header("etag")
    req = ("GET /v1/jobs/%s?wait=60 HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n" % (
        j["id"], etag)).encode()
    fds = "/proc/%d/fd" % dmn.proc.pid
    base = len(os.listdir(fds))
    for rnd in range(3):
        for _ in range(16):  # twice max_connections
            s = socket.create_connection((dmn.host, dmn.port))
            s.sendall(req)
            s.close()
        t0 = time.time()
        r = dmn.request("GET", "/healthz", timeout=10)
        took = time.time() - t0
        assert r.status == 200 and took < 5, "round %d: /healthz took %.1f s" % (rnd, took)
    # and their sockets are closed, not only their slots reused
    deadline = time.time() + 5
    while len(os.listdir(fds)) > base + 2 and time.time() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(fds)) <= base + 2, "fds: %d before, %d after" % (
        base, len(os.listdir(fds)))
    # a poll whose client stays still waits its whole term
    t0 = time.time()
    r = dmn.job(j["id"] + "?wait=2", headers={"If-None-Match": etag})
    assert r.status == 304 and time.time() - t0 >= 1.9, (r.status, time.time() - t0)
