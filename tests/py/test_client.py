"""sparsityd.Client against real daemons: every method, errors as ProblemError / JobFailed,
tokens, paging, cancel/delete, downloads that resume (cut connections, stale or foreign
.part files, a wrong SHA-256), retries (429 with Retry-After, refused connections, a cut
upload) and the one case never retried (an upload whose answer was lost), and the memory
of a 1 GiB upload. No TensorFlow: models are the test graphs and synthetic GraphDefs of
daemon.py.

A relay (CutProxy) sits between the client and the daemon where a connection has to
break at a chosen byte.
"""

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

import daemon as D
from daemon import CFG, CHAIN

import sparsityd
from sparsityd import Client, JobFailed, ProblemError, SparsitydError, WaitTimeout

MiB = 1 << 20


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(MiB):
            h.update(b)
    return h.hexdigest()


def write_random(path, size, seed):
    import random
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rnd.randbytes(size))
    return path


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def metrics(dmn):
    """{status: count} of sparsityd_http_requests_total."""
    text = dmn.get("/metrics", auth=False).text
    return {int(s): int(n) for s, n in
            re.findall(r'^sparsityd_http_requests_total\{status="(\d+)"\} (\d+)$', text, re.M)}


def artifact(job, name):
    return next(a for a in job["artifacts"] if a["name"] == name)


@pytest.fixture
def client(d):
    with Client(d.url, progress=False) as c:
        yield c


@pytest.fixture
def cfg(workdir):
    return write_text(os.path.join(workdir, "prune.cfg"), CFG)


class CutProxy:
    """A TCP relay to (host, port) that breaks its first connection: after `up` bytes
    from the client (a cut upload), or after `down` bytes of the daemon's answer (down=0:
    the whole request goes through and the answer is lost). Later connections relay
    everything."""

    def __init__(self, target, up=None, down=None):
        self.target = target
        self.up, self.down = up, down
        self.connections = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                cli, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            first = self.connections == 1
            srv = socket.create_connection(self.target)
            pair = (cli, srv)
            threading.Thread(target=self._pump, args=(cli, srv, self.up if first else None, pair),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(srv, cli, self.down if first else None,
                                                      pair), daemon=True).start()

    @staticmethod
    def _pump(src, dst, limit, pair):
        sent = 0
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if limit is not None and sent + len(b) > limit:
                    dst.sendall(b[:limit - sent])
                    break
                dst.sendall(b)
                sent += len(b)
        except OSError:
            pass
        for s in pair:  # the cut: both sides see the connection die
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.srv.close()


# ---------------------------------------------------------------------------------------
# Every method on one daemon


def test_run_get_log_download(client, cfg, workdir):
    out = os.path.join(workdir, "out")
    done = client.run("prune", CHAIN, config=cfg, outputs=["out"], name="client run",
                      out_dir=out)
    assert done["state"] == "succeeded" and done["name"] == "client run"
    assert sorted(done["paths"]) == ["model", "report"]
    for name, path in done["paths"].items():
        assert path == os.path.join(out, name)
        assert sha256_file(path) == artifact(done, name)["sha256"], name
        assert not os.path.exists(path + ".part") and not os.path.exists(path + ".part.etag")
    with open(done["paths"]["report"]) as f:
        assert json.load(f) == done["result"]
    # the uploads arrived intact
    assert artifact(done, "input_model")["sha256"] == sha256_file(CHAIN)
    assert artifact(done, "input_config")["sha256"] == sha256_file(cfg)
    assert client.get(done["id"]) == {k: v for k, v in done.items() if k != "paths"}
    assert client.get(done)["id"] == done["id"]  # a job document works as the argument
    log = client.log(done)
    assert "queued -> running" in log and "prune done" in log, log
    assert client.wait(done)["state"] == "succeeded"  # a finished job answers at once


def test_outputs_as_list_and_csv(client):
    jobs = [client.submit("check", CHAIN, outputs=["out", "mm_a"]),
            client.submit("check", CHAIN, outputs="out, mm_a"),
            client.submit("check", CHAIN, outputs=("out",))]
    assert [j["outputs"] for j in jobs] == [["out", "mm_a"], ["out", "mm_a"], ["out"]]
    for j in jobs:
        assert client.wait(j, timeout=60)["state"] == "succeeded"


def test_failed_job_raises_with_code_and_location(client, workdir):
    bad = write_text(os.path.join(workdir, "bad.cfg"), "prune_config {\n  bogus: 1 }\n")
    with pytest.raises(JobFailed) as ei:
        client.run("prune", CHAIN, config=bad, outputs="out", out_dir=workdir)
    e = ei.value
    assert e.code == "bad-config" and e.state == "failed"
    assert (e.line, e.column) == (2, 3), (e.line, e.column, e.detail)
    assert "bogus" in e.detail and e.error["code"] == "bad-config"
    assert e.job["state"] == "failed" and e.job["error"] == e.error
    assert isinstance(e, ProblemError) and isinstance(e, SparsitydError)
    assert not os.path.exists(os.path.join(workdir, "model")), "a failed run downloaded"


def test_missing_job_and_artifact_are_problems(client, workdir):
    with pytest.raises(ProblemError) as ei:
        client.get("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    e = ei.value
    assert (e.status, e.code) == (404, "not-found")
    assert e.type == D.PROBLEM_PREFIX + "not-found" and e.title and e.detail
    assert e.problem["status"] == 404 and e.line is None
    j = client.submit("check", CHAIN)
    client.wait(j)
    target = os.path.join(workdir, "none")
    with pytest.raises(ProblemError) as ei:
        client.download(j, "model", target)  # check makes no model
    assert ei.value.code == "not-found"
    assert not os.path.exists(target) and not os.path.exists(target + ".part")
    with pytest.raises(ProblemError) as ei:
        client.submit("bogus", CHAIN)
    assert (ei.value.status, ei.value.code) == (400, "bad-request")
    assert "stage" in ei.value.detail
    missing = os.path.join(workdir, "no-such-model.pb")
    with pytest.raises(SparsitydError, match="model: .*no-such-model.pb is not a file"):
        client.submit("check", missing)


def test_jobs_follows_every_page(daemons):
    dmn = daemons.new()
    with Client(dmn.url, progress=False) as c:
        ids = [c.submit("check", CHAIN, name="j%d" % i)["id"] for i in range(5)]
        for i in ids:
            c.wait(i)
        bad = c.submit("prune", CHAIN, config=CHAIN, outputs="out")  # a model as config
        with pytest.raises(JobFailed):
            c.wait(bad)
        before = metrics(dmn).get(200, 0)
        listed = [j["id"] for j in c.jobs(page_size=2)]
        # 6 jobs at 2 a page: at least 3 pages were asked for
        assert metrics(dmn).get(200, 0) - before >= 3
        assert listed == [bad["id"]] + ids[::-1], "not every job once, newest first"
        assert [j["id"] for j in c.jobs(stage="check", page_size=2)] == ids[::-1]
        assert [j["id"] for j in c.jobs(state="failed", page_size=1)] == [bad["id"]]
        assert list(c.jobs(state="canceled")) == []
        with pytest.raises(ProblemError) as ei:
            list(c.jobs(state="sleeping"))
        assert ei.value.code == "bad-request"


def test_auth(daemons, serve_bin, monkeypatch):
    data = daemons.data_dir()
    token = D.token_create(serve_bin, data, "alice")
    dmn = daemons.new(data_dir=data, token=token)
    monkeypatch.delenv("SPARSITYD_TOKEN", raising=False)
    with Client(dmn.url, progress=False) as anon:
        with pytest.raises(ProblemError) as ei:
            anon.submit("check", CHAIN)
        assert (ei.value.status, ei.value.code) == (401, "unauthorized")
        with pytest.raises(ProblemError) as ei:
            list(anon.jobs())
        assert ei.value.code == "unauthorized"
    with Client(dmn.url, token=token, progress=False) as c:
        j = c.submit("check", CHAIN)
        assert c.wait(j)["state"] == "succeeded"
    # both default to the environment
    monkeypatch.setenv("SPARSITYD_URL", dmn.url)
    monkeypatch.setenv("SPARSITYD_TOKEN", token)
    with Client(progress=False) as c:
        assert c.url == dmn.url
        assert [x["id"] for x in c.jobs()] == [j["id"]]
    monkeypatch.setenv("SPARSITYD_TOKEN", "sdt_" + "0" * 64)
    with Client(progress=False) as c, pytest.raises(ProblemError) as ei:
        c.get(j)
    assert ei.value.code == "unauthorized"


# ---------------------------------------------------------------------------------------
# A daemon with one worker and a queue of one: cancel, delete, long-poll, 429


@pytest.fixture(scope="module")
def one_worker(module_daemons):
    """A daemon with one worker and a queue of one: while conftest's big model runs (for
    a second or two), one more job waits queued and the next is refused."""
    return module_daemons.new(args=["--workers", "1", "--queue-max", "1"])


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """2 MatMul layers of 2048 x 2048 in text format (128 MiB): an insert job on it runs
    for seconds (about ten times its upload), a prune of the binary big model for less
    than its upload now."""
    path = D.write_mlp_text(str(tmp_path_factory.mktemp("slow") / "slow.pbtxt"), 2, 2048)
    yield path
    os.unlink(path)


def test_cancel_delete_and_wait_timeout(one_worker, contract, slow_model):
    dmn = one_worker
    with Client(dmn.url, progress=False) as c:
        # b stays queued behind the running slow job for the long-poll below, and that
        # job is canceled once the poll has timed out: a running job is canceled once
        # its stage returns, so it stays running until then. A try in which the job
        # ended first proves nothing, so it is made again, at most three times.
        for attempt in range(3):
            a = D.start_big(dmn, contract, slow_model, stage="insert")
            b = c.submit("check", CHAIN, name="queued")
            # b cannot change while a runs: one held GET, answered 304 at the timeout
            m0 = metrics(dmn)
            t0 = time.monotonic()
            try:
                c.wait(b, timeout=0.5)
            except WaitTimeout as ex:
                took = time.monotonic() - t0
                m1 = metrics(dmn)
                if ex.job["state"] == "queued" and c.get(a)["state"] == "running":
                    with contextlib.suppress(ProblemError):  # it may end meanwhile
                        a = c.cancel(a)
                        break
            for job in (a, b):
                with contextlib.suppress(JobFailed):
                    c.wait(job, timeout=60)
                c.delete(job)
        else:
            pytest.fail("the slow job ended before each of 3 tries could cancel it running")
        assert 0.5 <= took < 2.5, "wait(timeout=0.5) took %.2f s" % took
        assert m1.get(304, 0) - m0.get(304, 0) == 1, "wait polled instead of long-polling"
        assert sum(m1.values()) - sum(m0.values()) <= 4, (m0, m1)

        for job in (a, b):  # running, queued
            with pytest.raises(ProblemError) as ei:
                c.delete(job)
            assert (ei.value.status, ei.value.code) == (409, "conflict")
        assert c.cancel(b)["state"] == "canceled"
        with pytest.raises(ProblemError) as ei:
            c.cancel(b)  # already canceled
        assert ei.value.code == "conflict"
        with pytest.raises(JobFailed) as ei:
            c.wait(b)
        assert (ei.value.code, ei.value.state) == ("canceled", "canceled")
        assert c.delete(b) is None
        with pytest.raises(ProblemError) as ei:
            c.get(b)
        assert ei.value.code == "not-found"
        with pytest.raises(ProblemError) as ei:
            c.delete(b)
        assert ei.value.code == "not-found"

        with pytest.raises(JobFailed) as ei:
            c.wait(a, timeout=60)
        assert ei.value.state == "canceled"
        c.delete(a)
        assert list(c.jobs()) == []


def test_queue_full_is_retried_after_retry_after(one_worker, contract, big_model, workdir):
    dmn = one_worker
    model = write_random(os.path.join(workdir, "m.bin"), 3 * MiB, seed=3)
    D.start_big(dmn, contract, big_model)
    with Client(dmn.url, progress=False) as c:
        b = c.submit("check", CHAIN, name="queued")
        with Client(dmn.url, retries=0, progress=False) as once:
            with pytest.raises(ProblemError) as ei:
                once.submit("check", model)
        assert (ei.value.status, ei.value.code) == (429, "queue-full")
        retry_after = int(dmn.submit("check", model=CHAIN).header("retry-after"))
        # the queue frees a second after the client's first try; its retry waits the
        # Retry-After, then uploads the model again from the file
        t = threading.Timer(1.0, c.cancel, args=(b,))
        m0 = metrics(dmn)
        t0 = time.monotonic()
        t.start()
        job = c.submit("check", model, name="retried")
        took = time.monotonic() - t0
        t.join()
        assert metrics(dmn).get(429, 0) - m0.get(429, 0) == 1, \
            "the first try was not refused: the big job ended too early"
        assert retry_after - 0.2 <= took < retry_after + 5, (took, retry_after)
        assert job["name"] == "retried"
        assert artifact(c.get(job), "input_model")["sha256"] == sha256_file(model)
        with pytest.raises(JobFailed):  # random bytes are no model
            c.wait(job, timeout=60)


# ---------------------------------------------------------------------------------------
# Downloads


@pytest.fixture
def artifact_job(client, workdir):
    """A job whose input_model is 16 MiB of random bytes (the check fails: not a model)."""
    path = write_random(os.path.join(workdir, "random.bin"), 16 * MiB, seed=1)
    job = client.submit("check", path)
    with pytest.raises(JobFailed):
        client.wait(job)
    return client.get(job), path


def test_download_resumes_a_part(client, d, artifact_job, workdir):
    job, src = artifact_job
    etag = '"%s"' % artifact(job, "input_model")["sha256"]
    with open(src, "rb") as f:
        data = f.read()
    target = os.path.join(workdir, "dl.bin")
    # a .part with the first 5 MiB and its ETag: only the rest is asked for (206)
    with open(target + ".part", "wb") as f:
        f.write(data[:5 * MiB])
    write_text(target + ".part.etag", etag)
    m0 = metrics(d)
    assert client.download(job, "input_model", target) == target
    assert metrics(d).get(206, 0) - m0.get(206, 0) == 1
    assert sha256_file(target) == sha256_file(src)
    assert not os.path.exists(target + ".part") and not os.path.exists(target + ".part.etag")

    # a .part of another artifact: If-Range does not match, the whole artifact comes
    # (200; from a daemon that ignored If-Range, the client sees the ETag differ)
    os.unlink(target)
    with open(target + ".part", "wb") as f:
        f.write(b"x" * (3 * MiB))
    write_text(target + ".part.etag", '"%s"' % ("0" * 64))
    client.download(job["id"], "input_model", target)
    assert sha256_file(target) == sha256_file(src)

    # a .part without its ETag is of unknown origin: started over
    os.unlink(target)
    write_text(target + ".part", "junk")
    client.download(job, "input_model", target)
    assert sha256_file(target) == sha256_file(src)

    # a .part as long as the artifact (416 to its range): started over
    os.unlink(target)
    with open(target + ".part", "wb") as f:
        f.write(b"y" * len(data))
    write_text(target + ".part.etag", etag)
    client.download(job, "input_model", target)
    assert sha256_file(target) == sha256_file(src)


def test_download_with_wrong_bytes_leaves_no_file(client, artifact_job, workdir):
    job, src = artifact_job
    target = os.path.join(workdir, "dl.bin")
    # the right length and ETag, wrong bytes: the whole file's SHA-256 gives it away
    with open(target + ".part", "wb") as f:
        f.write(b"\0" * (4 * MiB))
    write_text(target + ".part.etag", '"%s"' % artifact(job, "input_model")["sha256"])
    with pytest.raises(SparsitydError) as ei:
        client.download(job, "input_model", target)
    assert "SHA-256" in str(ei.value)
    assert not os.path.exists(target), "a file that failed its SHA-256 check was left"
    assert not os.path.exists(target + ".part")
    # the next download starts from zero and succeeds
    client.download(job, "input_model", target)
    assert sha256_file(target) == sha256_file(src)


def test_download_cut_midway_resumes(d, artifact_job, workdir):
    job, src = artifact_job
    target = os.path.join(workdir, "cut.bin")
    proxy = CutProxy((d.host, d.port), down=6 * MiB)
    try:
        m0 = metrics(d)
        with Client(proxy.url, progress=False) as c:
            c.download(job, "input_model", target)
    finally:
        proxy.close()
    assert proxy.connections == 2, "the download did not reconnect once"
    assert metrics(d).get(206, 0) - m0.get(206, 0) == 1, "the second request was no resume"
    assert sha256_file(target) == sha256_file(src)


# ---------------------------------------------------------------------------------------
# Uploads: retried while cut, never once sent whole; memory


def test_cut_upload_is_retried(daemons, workdir):
    dmn = daemons.new()
    model = write_random(os.path.join(workdir, "m.bin"), 16 * MiB, seed=2)
    proxy = CutProxy((dmn.host, dmn.port), up=2 * MiB)
    try:
        with Client(proxy.url, progress=False) as c:
            job = c.submit("check", model, name="cut")
    finally:
        proxy.close()
    assert proxy.connections == 2
    with Client(dmn.url, progress=False) as c:
        assert [j["id"] for j in c.jobs()] == [job["id"]], "not exactly one job"
        assert artifact(c.get(job), "input_model")["sha256"] == sha256_file(model)


def test_upload_with_lost_answer_is_not_repeated(daemons, workdir):
    dmn = daemons.new()
    model = write_random(os.path.join(workdir, "m.bin"), 2 * MiB, seed=4)
    proxy = CutProxy((dmn.host, dmn.port), down=0)
    try:
        with Client(proxy.url, progress=False) as c:
            with pytest.raises(SparsitydError) as ei:
                c.submit("check", model, name="lost")
    finally:
        proxy.close()
    assert "may have been created" in str(ei.value), str(ei.value)
    assert not isinstance(ei.value, ProblemError)
    assert proxy.connections == 1, "the upload was sent again"
    with Client(dmn.url, progress=False) as c:
        assert [j["name"] for j in c.jobs()] == ["lost"], "the job is not there exactly once"


def test_refused_connections_are_retried(daemons):
    dmn = daemons.new(start=False)  # its port is chosen, nothing listens yet
    with Client(dmn.url, retries=1, progress=False) as c:
        t0 = time.monotonic()
        with pytest.raises(SparsitydError) as ei:
            c.get("01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert "refused" in str(ei.value) and "2 attempts" in str(ei.value), str(ei.value)
        assert time.monotonic() - t0 >= 0.25, "no backoff between the attempts"
    starter = threading.Timer(0.3, dmn.start)
    starter.start()
    try:
        with Client(dmn.url, retries=8, progress=False) as c:
            assert list(c.jobs()) == []
    finally:
        starter.join()


def test_progress_bars(client, workdir, capfd):
    pytest.importorskip("tqdm")
    target = os.path.join(workdir, "report.json")
    capfd.readouterr()
    with Client(client.url, progress=True) as c:
        j = c.submit("check", CHAIN)
        c.wait(j)
        c.download(j, "report", target)
    err = capfd.readouterr().err
    assert "upload check" in err and "download report" in err, err
    client.download(j, "report", target)  # progress=False
    client.get(j)
    with Client(client.url) as c:  # default: only on a terminal, and stderr is none here
        c.download(j, "report", target)
    assert capfd.readouterr().err == ""


UPLOAD_RSS = r"""
import json, sys
from sparsityd import Client

def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

with Client(sys.argv[1], progress=False) as c:
    list(c.jobs())  # everything imported and connected before the baseline
    before = hwm_kib()
    job = c.submit("check", sys.argv[2])
    print(json.dumps({"before": before, "after": hwm_kib(), "id": job["id"]}))
"""


def test_one_gib_upload_streams_from_disk(daemons, workdir):
    dmn = daemons.new()
    big = os.path.join(workdir, "big.bin")
    with open(big, "wb") as f:
        # sparse: made at once; the engine rejects it at its first bytes (a GraphDef of
        # zeros it would scan for many seconds)
        f.write(b"not a model\n")
        f.truncate(1 << 30)
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(sparsityd.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in [env.get("PYTHONPATH")] if p])
    try:
        p = subprocess.run([sys.executable, "-c", UPLOAD_RSS, dmn.url, big], env=env,
                           capture_output=True, text=True, timeout=300)
    finally:
        os.unlink(big)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    grew = (r["after"] - r["before"]) * 1024
    print("1 GiB upload: peak RSS %d KiB -> %d KiB" % (r["before"], r["after"]))
    assert grew < 64 * MiB, "peak RSS grew by %.1f MiB during a 1 GiB upload" % (grew / MiB)
    with Client(dmn.url, progress=False) as c:
        assert artifact(c.get(r["id"]), "input_model")["size"] == 1 << 30
        with pytest.raises(JobFailed) as ei:
            c.wait(r["id"], timeout=120)
        assert ei.value.code == "bad-model"
        c.delete(r["id"])
