"""A running job shows where it is: progress moves layer by layer (not only 0 and 100),
never backwards, and the job's log has a line per stage phase. HTTP only."""

import time

import daemon as D
from daemon import start_big


def test_progress_moves_by_layer_and_phases_are_logged(daemons, contract, big_model):
    dmn = daemons.new(args=["--workers", "1"])
    job = start_big(dmn, contract, big_model)
    # long-poll each change (every progress write is a new version, so a poller wakes
    # on each one instead of hoping to sample the right moment)
    seen = []
    r = dmn.job(job["id"])
    deadline = time.time() + 120
    while time.time() < deadline:
        if r.status == 200:
            j = r.json()
            seen.append(j["progress"])
            if j["state"] in D.TERMINAL:
                break
        r = dmn.job(job["id"] + "?wait=30", headers={"If-None-Match": r.header("etag")})
        assert r.status in (200, 304), r.describe()
    assert j["state"] == "succeeded", j
    print("progress seen:", seen)
    assert seen == sorted(seen), "progress went backwards: %s" % seen
    assert seen[-1] == 100
    per_layer = sorted({p for p in seen if 20 < p < 60})
    assert per_layer, "no progress between 'model loaded' (20) and 'stage done' (60): " \
        "the layers did not report (seen %s)" % sorted(set(seen))
    log = dmn.get("/v1/jobs/%s/log" % job["id"]).text
    for phase in ("model loaded:", "prune done:", "model written:"):
        assert phase in log, "the job log lacks the phase %r:\n%s" % (phase, log)
