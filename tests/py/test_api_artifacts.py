"""Reading a job and its artifacts: byte ranges, If-Range, entity tags and If-None-Match
(lists, weak comparison, "*"), and a big artifact streamed from disk, not copied into the heap.
"""

import re
import threading
import time

from daemon import CFG, CHAIN, assert_problem, run_ok


def test_artifact_ranges(d, contract):
    job = run_ok(d, contract, "insert", model=CHAIN, config=CFG, outputs="out")
    a = [x for x in job["artifacts"] if x["name"] == "model"][0]
    full = d.get(a["href"]).body
    n = len(full)
    assert n > 20
    for rng, lo, hi in (("bytes=0-9", 0, 9), ("bytes=5-", 5, n - 1), ("bytes=-7", n - 7, n - 1),
                        ("bytes=3-%d" % (n + 100), 3, n - 1)):
        r = d.get(a["href"], headers={"Range": rng})
        assert r.status == 206, "%s\n%s" % (rng, r.describe())
        contract.check(r)
        assert r.header("content-range") == "bytes %d-%d/%d" % (lo, hi, n), (rng, r.headers)
        assert r.body == full[lo:hi + 1], rng
        assert int(r.header("content-length")) == hi - lo + 1
    for rng in ("bytes=%d-" % n, "bytes=%d-%d" % (n + 5, n + 9)):
        r = d.get(a["href"], headers={"Range": rng})
        assert_problem(r, 416)
        contract.check(r)
        assert r.header("content-range") == "bytes */%d" % n, r.headers
    r = d.get(a["href"], headers={"If-None-Match": '"%s"' % a["sha256"]})
    assert r.status == 304 and r.body == b"", r.describe()
    r = d.get(a["href"], headers={"If-None-Match": '"%s"' % ("0" * 64)})
    assert r.status == 200 and r.body == full
    # If-Range: the artifact's own ETag keeps the range, anything else gets it whole
    etag = '"%s"' % a["sha256"]
    r = d.get(a["href"], headers={"Range": "bytes=5-", "If-Range": etag})
    assert r.status == 206 and r.body == full[5:], r.describe()
    for other in ('"%s"' % ("0" * 64), "W/" + etag, "Wed, 21 Oct 2015 07:28:00 GMT"):
        r = d.get(a["href"], headers={"Range": "bytes=5-", "If-Range": other})
        assert r.status == 200 and r.body == full, (other, r.describe())
        assert r.header("content-range") is None
        contract.check(r)
    assert_problem(d.get("/v1/jobs/%s/artifacts/nope" % job["id"]), 404, "not-found")
    assert_problem(d.get("/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/artifacts/model"), 404, "not-found")


def test_job_etag_304(d, contract):
    job = run_ok(d, contract, "check", model=CHAIN)
    r = d.job(job["id"])
    etag = r.header("etag")
    assert etag and re.match(r'^(W/)?"[^"]*"$', etag), r.headers
    r2 = d.job(job["id"], headers={"If-None-Match": etag})
    assert r2.status == 304 and r2.body == b"", r2.describe()
    contract.check(r2)
    r3 = d.job(job["id"], headers={"If-None-Match": '"something-else"'})
    assert r3.status == 200 and r3.header("etag") == etag


def test_if_none_match_lists_and_weak(d, contract):
    """If-None-Match as HTTP defines it (RFC 9110 13.1.2): a list of entity tags, weak
    comparison, and "*" all match the current tag -> 304."""
    job = run_ok(d, contract, "check", model=CHAIN)
    art = [a for a in job["artifacts"] if a["name"] == "report"][0]
    bad = []
    for path in ("/v1/jobs/" + job["id"], art["href"], "/v1/jobs"):
        etag = d.get(path).header("etag")
        weak = etag if etag.startswith("W/") else "W/" + etag
        for inm in ('"nope", ' + etag, weak, "*"):
            r = d.get(path, headers={"If-None-Match": inm})
            if r.status != 304:
                bad.append("GET %s with If-None-Match: %s -> %d (want 304)" % (path, inm,
                                                                               r.status))
    assert not bad, "\n".join(bad)


def rss_anon(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def test_download_streams_from_disk(daemons, big_model):
    """Downloading a 256 MiB artifact does not copy it into the daemon's heap (anonymous
    RSS stays low while the bytes flow), and the bytes hash to the listed sha256."""
    import hashlib
    dmn = daemons.new()
    r = dmn.submit_file("check", big_model)
    assert r.status == 202, r.describe()
    j = dmn.wait_job(r.json()["id"])
    art = [a for a in j["artifacts"] if a["name"] == "input_model"][0]
    base = rss_anon(dmn.proc.pid)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_anon(dmn.proc.pid))
            except (OSError, AssertionError):
                return
            time.sleep(0.01)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    conn = dmn.connection(120)
    h = hashlib.sha256()
    n = 0
    try:
        conn.request("GET", art["href"])
        resp = conn.getresponse()
        assert resp.status == 200
        while True:
            b = resp.read(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
            time.sleep(0.001)
    finally:
        conn.close()
        done.set()
        th.join(5)
    assert n == art["size"] and h.hexdigest() == art["sha256"]
    print("anon RSS %d MiB -> peak %d MiB while serving %d MiB" % (base >> 20, peak[0] >> 20,
                                                                   n >> 20))
    assert peak[0] - base < 64 << 20, "anonymous RSS grew by %d MiB while serving a %d MiB " \
        "artifact" % ((peak[0] - base) >> 20, n >> 20)
