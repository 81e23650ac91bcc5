"""bench_client: sparsityd.Client's upload and download throughput against curl's, on
the same file and the same daemon (loopback).

Target (issue 10): client / curl >= 0.8x, for uploads and for downloads.

Method:
  - the daemon and the input file come from bench_daemon.py's helpers (Daemon,
    make_input: random bytes, written once, then in the page cache); the daemon has a
    fresh data dir under build/bench-client.
  - upload: POST /v1/jobs (stage=check, model=<file>) by Client.submit and by
    `curl -F stage=check -F model=@FILE`, each answered 202 once the daemon has hashed
    and fsynced the blob. Each job is deleted (after it fails: the file is no model)
    before the next run, so runs see the same disk.
  - download: the input_model artifact of one such job, by Client.download (which also
    computes the SHA-256 and renames .part into place) and by `curl -o FILE`; the
    output file is removed before each run.
  - paired runs A B A B ...: client then curl, --pairs times, so drift in the machine's
    load hits both alike. Time: the client's call, wall clock; curl's own time_total
    (its process start is not counted, which favours curl slightly).
  - figures: median MB/s and spread (min..max) of each, and client/curl as the ratio
    of the medians and the median of the per-pair ratios.

usage: bench_client.py [--size-mib N] [--pairs N] [--sparsityd PATH] [--keep]
Exit status: 0 targets met, 1 a target missed, 2 the benchmark itself failed.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import bench_daemon as BD  # noqa: E402

try:
    from sparsityd import Client, JobFailed
except ImportError as e:
    BD.die(f"the sparsityd package is not importable ({e}): pip install . into the venv")

WORK = os.path.join(ROOT, "build", "bench-client")
TARGET_X = 0.8


def curl(*args):
    """Runs curl; returns (HTTP status, time_total seconds, stdout before the stats)."""
    p = subprocess.run(["curl", "-sS", "-w", "\n%{http_code} %{time_total}"] + list(args),
                       capture_output=True, text=True)
    if p.returncode != 0:
        BD.die(f"curl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    body, _, stats = p.stdout.rpartition("\n")
    code, secs = stats.split()
    return int(code), float(secs), body


def finish(c, job_id):
    """Waits for the (failing) check job and deletes it, freeing its blob."""
    try:
        c.wait(job_id, timeout=300)
    except JobFailed:
        pass
    c.delete(job_id)


def bench_upload(d, c, src, size, pairs):
    url = f"http://127.0.0.1:{d.port}/v1/jobs"
    runs = {"client": [], "curl": []}
    for i in range(pairs):
        t0 = time.perf_counter()
        job = c.submit("check", src)
        runs["client"].append(size / (time.perf_counter() - t0) / 1e6)
        finish(c, job["id"])
        code, secs, body = curl("-F", "stage=check", "-F", f"model=@{src}", url)
        if code != 202:
            BD.die(f"curl upload: HTTP {code}: {body[:300]}")
        runs["curl"].append(size / secs / 1e6)
        finish(c, json.loads(body)["id"])
        print(f"  upload pair {i + 1}: client {runs['client'][-1]:,.0f} MB/s, "
              f"curl {runs['curl'][-1]:,.0f} MB/s", flush=True)
    return runs


def bench_download(d, c, src, size, pairs):
    job = c.submit("check", src)
    try:
        c.wait(job, timeout=300)
    except JobFailed:
        pass
    url = f"http://127.0.0.1:{d.port}/v1/jobs/{job['id']}/artifacts/input_model"
    dst = os.path.join(WORK, "download.bin")
    runs = {"client": [], "curl": []}
    for i in range(pairs):
        if os.path.exists(dst):
            os.unlink(dst)
        t0 = time.perf_counter()
        c.download(job, "input_model", dst)
        runs["client"].append(size / (time.perf_counter() - t0) / 1e6)
        os.unlink(dst)
        code, secs, _ = curl("-o", dst, url)
        if code != 200 or os.path.getsize(dst) != size:
            BD.die(f"curl download: HTTP {code}, {os.path.getsize(dst)} bytes")
        runs["curl"].append(size / secs / 1e6)
        print(f"  download pair {i + 1}: client {runs['client'][-1]:,.0f} MB/s, "
              f"curl {runs['curl'][-1]:,.0f} MB/s", flush=True)
    os.unlink(dst)
    c.delete(job)
    return runs


def summary(what, runs):
    cl, cu = runs["client"], runs["curl"]
    ratio = statistics.median(cl) / statistics.median(cu)
    pair_ratio = statistics.median(a / b for a, b in zip(cl, cu))
    ok = ratio >= TARGET_X
    rows = [(f"{what}: client", f"{statistics.median(cl):,.0f} MB/s",
             f"{min(cl):,.0f}..{max(cl):,.0f}", ""),
            (f"{what}: curl", f"{statistics.median(cu):,.0f} MB/s",
             f"{min(cu):,.0f}..{max(cu):,.0f}", ""),
            (f"{what}: client / curl (medians)", f"{ratio:.2f}x", f">= {TARGET_X}x",
             "PASS" if ok else "FAIL"),
            (f"{what}: client / curl (median of pairs)", f"{pair_ratio:.2f}x", "", "-")]
    return rows, ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--sparsityd", default=os.environ.get("SPARSITYD_BIN") or
                    os.path.join(ROOT, "build", "daemon", "sparsityd"))
    ap.add_argument("--keep", action="store_true", help="keep the input file for next time")
    args = ap.parse_args()
    if args.pairs < 1 or args.size_mib < 1:
        BD.die("--pairs and --size-mib must be at least 1")
    if not shutil.which("curl"):
        BD.die("curl is not installed")
    if not os.access(args.sparsityd, os.X_OK):
        BD.die(f"no sparsityd binary at {args.sparsityd} (build it, or pass --sparsityd)")
    os.makedirs(WORK, exist_ok=True)
    BD.WORK = WORK  # the daemon helper writes its log there
    size = args.size_mib * BD.MIB
    src = os.path.join(WORK, f"input-{args.size_mib}m.bin")
    BD.make_input(src, size)
    data_dir = os.path.join(WORK, "data")
    shutil.rmtree(data_dir, ignore_errors=True)
    d = BD.Daemon(args.sparsityd, BD.free_port(), data_dir, workers=2, http_threads=2)
    try:
        with Client(f"http://127.0.0.1:{d.port}", progress=False) as c:
            print(f"bench_client: {args.size_mib} MiB, {args.pairs} pairs (client, curl)")
            up = bench_upload(d, c, src, size, args.pairs)
            down = bench_download(d, c, src, size, args.pairs)
    finally:
        d.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        if not args.keep:
            os.unlink(src)
    rows, failed = [], False
    for what, runs in (("upload", up), ("download", down)):
        r, ok = summary(what, runs)
        rows += r
        failed |= not ok
    w = [max(len(r[k]) for r in rows) for k in range(3)]
    print()
    print(f"{'measure':<{w[0]}}  {'median':>{w[1]}}  {'spread/target':<{w[2]}}  verdict")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    print()
    print("bench_client: " + ("a target was missed (FAIL above)" if failed
                              else "all targets met"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
