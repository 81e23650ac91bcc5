"""The seed's AMCT workflow over HTTP with real TensorFlow.

insert job (training graph) -> train a few steps with sparsityd/update -> checkpoint ->
insert job (inference graph) -> restore + freeze -> export job with record_from = the
inference insert job -> download the model: it imports and runs in TensorFlow, gives the
masked graph's outputs, and every pruned weight is 2:4. Then a prune job and check jobs.
The daemon's outputs are also compared byte for byte with the CLI's on the same inputs.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import daemon as D
import ref24
import sdrun
import workflow
from sdrun import UPDATE_OP, tname
from workflow import node_map, trace_const

tf1 = tf.compat.v1
CFG = D.SAMPLE_CONFIG


def run_ok(dmn, contract, stage, **kw):
    r = dmn.submit(stage, **kw)
    assert r.status == 202, r.describe()
    contract.check(r)
    j = dmn.wait_job(r.json()["id"])
    assert j["state"] == "succeeded", json.dumps(j, indent=1)
    return contract.check(dmn.job(j["id"]))


def download(dmn, job, name, path):
    a = [x for x in job["artifacts"] if x["name"] == name]
    assert a, "job %s has no artifact %s: %s" % (job["id"], name, job["artifacts"])
    r = dmn.get(a[0]["href"])
    assert r.status == 200 and D.sha256(r.body) == a[0]["sha256"], r.describe()
    with open(path, "wb") as f:
        f.write(r.body)
    return path


def weights_are_2of4(gd, layers, pruned):
    nodes = node_map(gd)
    for p in pruned:
        assert p in nodes, "layer %s missing from the exported graph" % p
        c = trace_const(nodes, nodes[p].input[1])
        assert c is not None, "layer %s: weight is not a Const" % p
        w = workflow.const_value(c)
        assert ref24.is_2of4(w, layers[p]["axis"]), "layer %s: weight is not 2:4" % p


@pytest.fixture(scope="module")
def wf_daemon(serve_bin, tmp_path_factory):
    f = D.DaemonFactory(serve_bin, tmp_path_factory.mktemp("wfdaemon"))
    yield f.new()
    f.close()


class HttpWorkflow:
    pass


@pytest.fixture(scope="module")
def http_wf(wf_daemon, contract, model_cache, tmp_path_factory, serve_bin):
    """Steps 1-4 of the workflow over HTTP: insert (training graph), train, insert
    (inference graph), restore + freeze. The export is the tests' own."""
    dmn = wf_daemon
    root = str(tmp_path_factory.mktemp("http_wf"))
    train_meta, bt = model_cache.file("meta", "small", "resource", "train")
    infer_meta, bi = model_cache.file("meta", "small", "resource", "infer")
    outputs = ",".join(bt.outputs)

    # 1. insert into the training graph
    j1 = run_ok(dmn, contract, "insert", model=train_meta, config=CFG, outputs=outputs,
                name="train")
    assert j1["result"]["model"]["format"] == "metagraph", j1["result"]["model"]
    train_sparse = download(dmn, j1, "model", os.path.join(root, "train_sparse.meta"))
    download(dmn, j1, "record", os.path.join(root, "train.record.txt"))
    pruned_train = sorted(l["name"] for l in j1["result"]["layers"] if l["action"] == "pruned")
    assert "dense1/MatMul" in pruned_train and "conv_narrow/Conv2D" not in pruned_train

    # 2. train a few steps, running sparsityd/update, save a checkpoint
    rng = np.random.RandomState(3)
    xs = rng.randn(8, 8, 8, 3).astype(np.float32)
    ys = rng.randn(8, 7).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(train_sparse)
        out_t = g.get_tensor_by_name(tname(bt.outputs[0]))
        y = tf1.placeholder(tf.float32, [None, 7], name="test_y")
        loss = tf.reduce_mean(tf.square(out_t - y))
        train_op = tf1.train.RMSPropOptimizer(0.02, momentum=0.9).minimize(loss)
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        assert UPDATE_OP in [o.name for o in update_ops]
        init = tf1.global_variables_initializer()
        saver = tf1.train.Saver()
    with tf1.Session(graph=g) as sess:
        sess.run(init)
        for step in range(5):
            _, _, lv = sess.run([train_op, update_ops, loss], {"x:0": xs, "test_y:0": ys})
            assert np.isfinite(lv)
        ckpt = saver.save(sess, os.path.join(root, "ckpt", "model"))

    # 3. insert into the inference graph with the same config
    j2 = run_ok(dmn, contract, "insert", model=infer_meta, config=CFG,
                outputs=",".join(bi.outputs), name="infer")
    infer_sparse = download(dmn, j2, "model", os.path.join(root, "infer_sparse.meta"))
    infer_record = download(dmn, j2, "record", os.path.join(root, "infer.record.txt"))
    pruned = sorted(l["name"] for l in j2["result"]["layers"] if l["action"] == "pruned")
    assert pruned == pruned_train

    # the daemon's insert outputs are the CLI's, byte for byte
    r = sdrun.insert(serve_bin, infer_meta, CFG, bi.outputs, os.path.join(root, "cli"), tag="i")
    sdrun.assert_ok(r)
    with open(r.out_path, "rb") as a, open(infer_sparse, "rb") as b:
        assert a.read() == b.read(), "insert job output differs from the CLI's"
    with open(r.record_path, "rb") as a, open(infer_record, "rb") as b:
        assert a.read() == b.read(), "insert job record differs from the CLI's"

    # 4. restore and freeze
    masked = os.path.join(root, "masked.pb")
    workflow._freeze_from_ckpt(infer_sparse, ckpt, bi.outputs, masked)
    w = HttpWorkflow()
    w.__dict__.update(root=root, bi=bi, infer_meta=infer_meta, infer_job=j2,
                      infer_record=infer_record, pruned=pruned, masked=masked, exported=None)
    return w


def test_workflow_over_http(wf_daemon, contract, http_wf, serve_bin):
    dmn = wf_daemon
    w = http_wf
    root, bi, j2, masked, pruned = w.root, w.bi, w.infer_job, w.masked, w.pruned
    infer_record = w.infer_record

    # 5. export with record_from = the inference insert job
    j3 = run_ok(dmn, contract, "export", model=masked, record_from=j2["id"],
                outputs=",".join(bi.outputs), name="export")
    assert j3["record_from"] == j2["id"]
    assert {a["name"] for a in j3["artifacts"] if a["kind"] == "output"} == {"model", "report"}
    exported = download(dmn, j3, "model", os.path.join(root, "exported.pb"))
    out_gd = workflow.read_pb(exported)
    assert not [n.name for n in out_gd.node if workflow.is_inserted_name(n.name)]
    weights_are_2of4(out_gd, bi.layers, pruned)

    # it runs in TensorFlow and gives the masked graph's outputs
    feed = workflow.random_feed({"x": [4, 8, 8, 3]}, 4, seed=9)
    got = workflow.run_graph_def(out_gd, bi.outputs, feed)
    want = workflow.run_graph_def(workflow.read_pb(masked), bi.outputs, feed)
    workflow.compare_outputs(got, want, bi.outputs, rel=1e-5)

    # and is the CLI's export, byte for byte
    cli_out = os.path.join(root, "cli_export.pb")
    workflow.ok(workflow.export(serve_bin, masked, infer_record, bi.outputs, cli_out), "export")
    with open(cli_out, "rb") as a, open(exported, "rb") as b:
        assert a.read() == b.read(), "export job output differs from the CLI's"
    w.exported = exported

    # 6. check job on the export: every pruned layer 2:4
    j4 = run_ok(dmn, contract, "check", model=exported, outputs=",".join(bi.outputs))
    by = {l["name"]: l for l in j4["result"]["layers"]}
    for p in pruned:
        assert by[p]["is_2of4"], by[p]


def test_record_from_survives_delete_of_insert_job(daemons, contract, http_wf, big_model):
    """An export queued with record_from = an insert job still gets that record when the
    insert job is deleted before the export runs (DELETE of a finished job is allowed)."""
    dmn = daemons.new(args=["--workers", "1"])
    w = http_wf
    outputs = ",".join(w.bi.outputs)
    ins = run_ok(dmn, contract, "insert", model=w.infer_meta, config=CFG, outputs=outputs)
    r = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    r = dmn.submit("export", model=w.masked, record_from=ins["id"], outputs=outputs)
    assert r.status == 202, r.describe()
    exp = r.json()
    r = dmn.request("DELETE", "/v1/jobs/" + ins["id"])
    assert r.status == 204, r.describe()
    j = dmn.wait_job(exp["id"], timeout=180)
    assert j["state"] == "succeeded", "export after its record_from job was deleted: %s" % (
        json.dumps(j)[:1500],)
    got = dmn.artifact(j["id"], "model").body
    if w.exported:  # the main test's export (same inputs), when it ran first
        with open(w.exported, "rb") as f:
            assert got == f.read(), "export differs from the one with the record present"


def test_prune_and_check_over_http(wf_daemon, contract, model_cache, tmp_path):
    dmn = wf_daemon
    built = model_cache.built("small", "resource", "infer")
    frozen = workflow.freeze_random(built, str(tmp_path / "frozen.pb"))
    outputs = ",".join(built.outputs)
    jc = run_ok(dmn, contract, "check", model=frozen, outputs=outputs)
    assert not all(l.get("is_2of4") for l in jc["result"]["layers"]
                   if l["action"] != "skipped"), "random weights are already 2:4?"
    jp = run_ok(dmn, contract, "prune", model=frozen, config=CFG, outputs=outputs)
    pruned = [l["name"] for l in jp["result"]["layers"] if l["action"] == "pruned"]
    assert pruned
    out = download(dmn, jp, "model", str(tmp_path / "pruned.pb"))
    gd = workflow.read_pb(out)
    weights_are_2of4(gd, built.layers, pruned)
    # each pruned weight is the 2:4 of the frozen one
    src = node_map(workflow.read_pb(frozen))
    nodes = node_map(gd)
    for p in pruned:
        w0 = workflow.const_value(trace_const(src, src[p].input[1]))
        w1 = workflow.const_value(trace_const(nodes, nodes[p].input[1]))
        assert workflow.bit_equal(w1, ref24.apply24(w0, built.layers[p]["axis"])), p
    feed = workflow.random_feed({"x": [4, 8, 8, 3]}, 4, seed=2)
    (y,) = workflow.run_graph_def(gd, built.outputs, feed)
    assert np.all(np.isfinite(y))
    jc2 = run_ok(dmn, contract, "check", model=out, outputs=outputs)
    by = {l["name"]: l for l in jc2["result"]["layers"]}
    assert all(by[p]["is_2of4"] for p in pruned), by


def test_curl_walkthrough(serve_bin):
    """tests/daemon/curl_walkthrough.sh: the README's curl walkthrough, run verbatim."""
    import subprocess
    import sys
    script = os.path.join(D.REPO, "tests", "daemon", "curl_walkthrough.sh")
    env = dict(os.environ, SPARSITYD_BIN=serve_bin, PYTHON=sys.executable)
    p = subprocess.run(["bash", script], capture_output=True, text=True, timeout=300, env=env)
    print(p.stdout[-3000:])
    print(p.stderr[-3000:])
    assert p.returncode == 0, "curl_walkthrough.sh failed (exit %d)\n%s\n%s" % (
        p.returncode, p.stdout[-4000:], p.stderr[-4000:])
    assert "curl_walkthrough: ok" in p.stdout
