"""POST /v1/jobs bodies: malformed or incomplete forms are 400 and create no job, a body
over --max-upload is 413, a full disk is 507 (and a job that fills the disk fails),
chunked bodies stream like any other, and a 256 MiB upload streams to disk instead of
the daemon's memory.
"""

import hashlib
import http.client
import os
import subprocess

import pytest

import daemon as D
from daemon import CFG, CHAIN, assert_problem


def test_post_errors_400(d, contract):
    def post_raw(body, ctype):
        return d.request("POST", "/v1/jobs", body=body, headers={"Content-Type": ctype})

    bad = []
    bad.append(("json body", post_raw(b'{"stage": "check"}', "application/json")))
    bad.append(("no boundary", post_raw(b"x", "multipart/form-data")))
    bad.append(("truncated multipart", post_raw(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"stage\"\r\n\r\ncheck\r\n--XyZ\r\n"
        b"Content-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nabc",
        "multipart/form-data; boundary=XyZ")))
    bad.append(("garbage multipart", post_raw(b"hello world, not multipart at all",
                                              "multipart/form-data; boundary=XyZ")))
    bad.append(("missing stage", d.post_job([("outputs", "out")],
                                            [("model", "m", b"node {}")])))
    bad.append(("missing model", d.submit("check")))
    bad.append(("unknown stage", d.submit("compress", model=CHAIN, outputs="out")))
    bad.append(("insert without config", d.submit("insert", model=CHAIN, outputs="out")))
    bad.append(("prune without config", d.submit("prune", model=CHAIN, outputs="out")))
    bad.append(("insert without outputs", d.submit("insert", model=CHAIN, config=CFG)))
    bad.append(("export without record", d.submit("export", model=CHAIN, outputs="out")))
    bad.append(("bad format", d.submit("check", model=CHAIN, fmt="onnx")))
    bad.append(("empty outputs", d.submit("insert", model=CHAIN, config=CFG, outputs="")))
    bad.append(("unknown part 'output'", d.submit("check", model=CHAIN,
                                                 extra_fields=[("output", "out")])))
    bad.append(("record and record_from", d.submit(
        "export", model=CHAIN, record="x", record_from="01ARZ3NDEKTSV4RRFFQ69G5FAV",
        outputs="out")))
    failures = []
    for what, r in bad:
        try:
            assert_problem(r, 400, "bad-request")
            contract.check(r)
        except AssertionError as e:
            failures.append("%s: %s" % (what, str(e).splitlines()[0] + "\n" + r.describe()))
    assert not failures, "\n\n".join(failures)
    # nothing of this created a job
    r = d.get("/v1/jobs?limit=200")
    assert not [j for j in r.json()["jobs"] if j["stage"] == "compress"]


def test_upload_too_large(daemons, contract):
    dmn = daemons.new(args=["--max-upload", "20000"])
    r = dmn.submit("check", model=b"\x00" * 65536)
    assert_problem(r, 413, "too-large")
    contract.check(r)
    assert dmn.get("/healthz").status == 200
    assert dmn.get("/v1/jobs").json()["jobs"] == [], "a refused upload left a job"
    j = dmn.run_job("check", model=CHAIN)
    assert j["state"] == "succeeded"


def test_upload_limit_at_its_maximum(daemons):
    """max_upload may be as large as int64: its margin for discarding a refused body used
    to overflow there, and every upload got 500."""
    dmn = daemons.new(args=["--max-upload", str(2**63 - 1)])
    j = dmn.run_job("check", model=CHAIN)
    assert j["state"] == "succeeded", j
    assert not dmn.sanitizer_report(), dmn.sanitizer_report()


def test_disk_full_507(daemons, contract, tmp_path):
    data = str(tmp_path / "tiny")
    D.mount_tmpfs(data, "2m")
    try:
        dmn = daemons.new(data_dir=data)
        r = dmn.submit("check", model=os.urandom(3 << 20))
        assert_problem(r, 507, "insufficient-storage")
        contract.check(r)
        assert dmn.get("/healthz").status == 200
        j = dmn.run_job("check", model=CHAIN)
        assert j["state"] == "succeeded", "after a 507 the space must be free again: %s" % j
        # the disk fills while a job writes its output: the job fails (insufficient-storage),
        # lists no output, and the daemon goes on
        model = D.write_mlp(str(tmp_path / "m.pb"), 1, 560)  # 1.2 MiB in, 1.2 MiB out
        r = dmn.submit("prune", model=model, config=CFG, outputs="out")
        assert r.status == 202, r.describe()
        j = dmn.wait_job(r.json()["id"])
        assert j["state"] == "failed", "prune of 1.2 MiB into %s: %s" % (
            subprocess.run(["df", "-h", data], capture_output=True, text=True).stdout, j)
        code_ok = j["error"]["code"] == "insufficient-storage"
        err = j["error"]
        assert not [a for a in j["artifacts"] if a["kind"] == "output"], j["artifacts"]
        j = dmn.run_job("check", model=CHAIN)
        assert j["state"] == "succeeded", j
        assert dmn.stop() == 0
        assert code_ok, "a job that fills the disk must fail with error.code " \
            "insufficient-storage (SD_ENOSPACE), got %s" % err
    finally:
        for dd in daemons.all:
            dd.kill()
        D.umount(data)


def test_chunked_upload(daemons, contract):
    """A body sent with Transfer-Encoding: chunked (no Content-Length) streams like any other;
    past --max-upload it is refused with 413."""
    dmn = daemons.new(args=["--max-upload", "200000"])
    ctype, body = D.multipart([("stage", "check")], [("model", "m.pbtxt", open(CHAIN, "rb").read())])

    def post_chunked(data):
        conn = dmn.connection()
        try:
            try:
                conn.request("POST", "/v1/jobs", body=iter([data[i:i + 1000]
                                                             for i in range(0, len(data), 1000)]),
                             headers={"Content-Type": ctype, "Transfer-Encoding": "chunked"},
                             encode_chunked=True)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer (413) and close before the body is all sent
            try:
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError) as e:
                return D.Response("POST", "/v1/jobs", 0, {}, (
                    "no response: the daemon closed the connection (%s)" % e).encode(), 0)
            return D.Response("POST", "/v1/jobs", resp.status,
                              {k.lower(): v for k, v in resp.getheaders()}, resp.read(), 0)
        finally:
            conn.close()
    r = post_chunked(body)
    assert r.status == 202, r.describe()
    j = dmn.wait_job(contract.check(r)["id"])
    assert j["state"] == "succeeded", j
    ctype, body = D.multipart([("stage", "check")], [("model", "m.pb", b"\0" * 300000)])
    r = post_chunked(body)
    assert_problem(r, 413, "too-large")


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_upload_streams_to_disk(daemons, big_model):
    """A 256 MiB upload does not grow the daemon's peak RSS by anywhere near its size: the
    body streams to disk. (The job is refused after the upload, by a record_from that
    names no job, so no stage runs.)"""
    dmn = daemons.new()
    base = vm_hwm(dmn.proc.pid)
    boundary = "sdtest-stream"
    head = ("--%s\r\nContent-Disposition: form-data; name=\"stage\"\r\n\r\nexport\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"model\"; filename=\"big.pb\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" % (boundary, boundary)).encode()
    tail = ("\r\n--%s\r\nContent-Disposition: form-data; name=\"outputs\"\r\n\r\nout\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"record_from\"\r\n\r\n"
            "01ARZ3NDEKTSV4RRFFQ69G5FAV\r\n--%s--\r\n" % (boundary, boundary, boundary)).encode()
    size = os.path.getsize(big_model)
    conn = dmn.connection(120)
    conn.putrequest("POST", "/v1/jobs")
    conn.putheader("Content-Type", "multipart/form-data; boundary=" + boundary)
    conn.putheader("Content-Length", str(len(head) + size + len(tail)))
    conn.endheaders()
    try:
        conn.send(head)
        with open(big_model, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                conn.send(b)
        conn.send(tail)
    except (BrokenPipeError, ConnectionResetError):
        pass
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 404, resp.status
    peak = vm_hwm(dmn.proc.pid)
    print("peak RSS %d MiB -> %d MiB for a %d MiB upload" % (base >> 20, peak >> 20, size >> 20))
    assert peak - base < 64 << 20, "peak RSS grew by %d MiB during a %d MiB upload" % (
        (peak - base) >> 20, size >> 20)


def test_direct_uploads(daemons, contract, tmp_path):
    """With direct_uploads the uploaded files go around the page cache (O_DIRECT where
    the file system allows it): the stored input is the upload to the byte (whole 4 MiB
    blocks and the odd tail), and a prune job reads it like any other."""
    dmn = daemons.new(args=["--direct-uploads=true"])
    model = D.write_mlp(str(tmp_path / "m.pb"), 3, 1024)  # 3 x 4 MiB weights and the rest
    with open(model, "rb") as f:
        data = f.read()
    assert len(data) % 4096 and len(data) > 3 * (4 << 20)
    r = dmn.submit_file("prune", model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    j = dmn.wait_job(contract.check(r)["id"])
    assert j["state"] == "succeeded", j
    got = dmn.get("/v1/jobs/%s/artifacts/input_model" % j["id"])
    assert got.status == 200 and got.body == data
    inp = [a for a in j["artifacts"] if a["name"] == "input_model"][0]
    assert inp["sha256"] == hashlib.sha256(data).hexdigest()
    out = dmn.get("/v1/jobs/%s/artifacts/model" % j["id"])
    assert out.status == 200 and len(out.body) == len(data)
