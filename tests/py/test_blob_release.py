"""No leaked blobs: files that no job ends up naming are removed at once, not at the next
restart (a refused upload's committed inputs, the outputs of a canceled or failed stage).

After each scenario the blob files on disk are exactly the blobs some job still names.
HTTP only: no TensorFlow.
"""

import hashlib
import json
import os
import time

import daemon as D
from daemon import CFG, CHAIN, start_big


def blob_files(data_dir):
    root = os.path.join(data_dir, "blobs")
    out = set()
    for sub in os.listdir(root):
        for name in os.listdir(os.path.join(root, sub)):
            out.add(name)
    return out


def named_blobs(dmn):
    names = set()
    for j in dmn.get("/v1/jobs?limit=200").json()["jobs"]:
        for a in dmn.job(j["id"]).json()["artifacts"]:
            names.add(a["sha256"])
    return names


def test_refused_and_canceled_leave_no_blob(daemons, contract, big_model):
    dmn = daemons.new(args=["--workers", "1", "--queue-max", "1"])
    big = start_big(dmn, contract, big_model)
    queued = D.submit_ok(dmn, contract, "check", model=CHAIN)
    # the queue is full: this upload is committed, then refused; its model must go
    with open(CHAIN, "rb") as f:
        model = f.read() + b"\n# unique bytes for this test\n"
    r = dmn.submit("check", model=model)
    D.assert_problem(r, 429, "queue-full")
    assert hashlib.sha256(model).hexdigest() not in blob_files(dmn.data_dir), (
        "a refused upload's model stayed on disk")
    # cancel the running stage: whatever outputs it committed are not listed, so they go
    r = dmn.request("POST", "/v1/jobs/%s/cancel" % big["id"])
    assert r.status == 200, r.describe()
    assert dmn.wait_job(big["id"])["state"] == "canceled"
    assert dmn.wait_job(queued["id"])["state"] == "succeeded"
    assert blob_files(dmn.data_dir) == named_blobs(dmn)


def test_failed_stage_leaves_no_blob(daemons, contract):
    dmn = daemons.new()
    # a prune whose outputs name no node fails after loading: nothing but its inputs stays
    j = D.submit_ok(dmn, contract, "prune", model=CHAIN, config=CFG, outputs="nowhere")
    assert dmn.wait_job(j["id"])["state"] == "failed"
    ok = D.submit_ok(dmn, contract, "prune", model=CHAIN, config=CFG, outputs="out")
    assert dmn.wait_job(ok["id"])["state"] == "succeeded"
    assert blob_files(dmn.data_dir) == named_blobs(dmn)


def test_delete_while_an_equal_output_is_recorded(daemons, contract):
    """Jobs on the same input write the same outputs: one blob. A worker commits its
    outputs a little before the loop records them, and the commit pins the blob until
    then, so deleting another job with the same outputs meanwhile cannot remove the file
    (test_store's pinned_blob_survives_delete shows that window deterministically; here
    each job is deleted the moment its `succeeded` event arrives while the other worker
    records the same bytes). No job may fail or stay running, and once all are deleted
    no file may stay behind: a pin that is never dropped would keep its blob."""
    dmn = daemons.new(args=["--workers", "2", "--queue-max", "400"])
    events = dmn.connection()
    events.request("GET", "/v1/events", headers={"Accept": "text/event-stream"})
    stream = events.getresponse()
    assert stream.status == 200
    ids = set(D.submit_ok(dmn, contract, "prune", model=CHAIN, config=CFG, outputs="out")["id"]
              for _ in range(200))
    conn, left = dmn.connection(), set(ids)
    deadline = time.time() + 120
    while left and time.time() < deadline:
        line = stream.readline()
        assert line, "the event stream ended"
        if not line.startswith(b"data: "):
            continue
        ev = json.loads(line[6:])
        assert ev["state"] != "failed", ev
        if ev["state"] == "succeeded" and ev["id"] in left:
            conn.request("DELETE", "/v1/jobs/" + ev["id"])
            r = conn.getresponse()
            r.read()
            assert r.status == 204, r.status
            left.discard(ev["id"])
    events.close()
    assert not left, "jobs never succeeded: %s\n%s" % (
        [dmn.job(i).json()["state"] for i in sorted(left)], dmn.logs())
    assert blob_files(dmn.data_dir) == set()
    # one more, kept: its outputs are whole
    last = D.submit_ok(dmn, contract, "prune", model=CHAIN, config=CFG, outputs="out")
    assert dmn.wait_job(last["id"])["state"] == "succeeded"
    for a in dmn.job(last["id"]).json()["artifacts"]:
        r = dmn.artifact(last["id"], a["name"])
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == a["sha256"], a
    assert blob_files(dmn.data_dir) == named_blobs(dmn)


def test_upload_whose_client_leaves_during_its_commit(daemons):
    """An upload's blobs are committed on a thread of their own while its connection
    waits. Clients that send the whole body and hang up at once (a reset, before the
    202) each leave either a job naming their model or nothing: never a file no job
    names, and the daemon goes on answering."""
    import socket
    import struct
    dmn = daemons.new()
    for i in range(12):
        model = os.urandom(8 << 20) + b"%d" % i
        ctype, body = D.multipart([("stage", "check")], [("model", "m.bin", model)])
        s = socket.create_connection((dmn.host, dmn.port), timeout=30)
        s.sendall(("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                   "Content-Length: %d\r\n\r\n" % (ctype, len(body))).encode() + body)
        time.sleep(0.005 * i)  # from mid-body to after the 202, across the tries
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for j in dmn.get("/v1/jobs?limit=200").json()["jobs"]:
            dmn.wait_job(j["id"])
        if blob_files(dmn.data_dir) == named_blobs(dmn):
            break
        time.sleep(0.2)
    assert blob_files(dmn.data_dir) == named_blobs(dmn)
    assert dmn.get("/healthz").status == 200
    with open(dmn.stderr_path, errors="replace") as f:
        left = f.read().count("client left before its job was created")
    jobs = len(dmn.get("/v1/jobs?limit=200").json()["jobs"])
    print("%d of 12 clients left during their commit; %d jobs made" % (left, jobs))
