"""`sparsityd export` against real TensorFlow: the seed's whole AMCT workflow (SPEC 6, 7, 8).

insert into the training graph -> train 20 steps running sparsityd/update -> checkpoint ->
build the inference graph (same names) -> insert with the same config (record R2) ->
restore -> freeze with convert_variables_to_constants -> sparsityd export with R2.

The exported .pb must import and run, give the masked frozen graph's outputs, hold in each
recorded layer's weight Const exactly checkpoint weight * mask (the stored mask, or the fresh
2:4 mask of the checkpoint weight when the frozen step refreshes), exactly 2:4, and be, node
for node, the original inference graph frozen from the same checkpoint without insert.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

import ref24
import sdrun
import workflow
from sdrun import prefix
from workflow import bit_equal, node_map, trace_const

tf1 = tf.compat.v1

_WF = {}


@pytest.fixture(scope="session")
def small_wf(sparsityd, model_cache, tmp_path_factory):
    def get(variant, freq):
        key = ("small", variant, freq)
        if key not in _WF:
            save_at = (20, 21) if freq else (20,)
            root = str(tmp_path_factory.mktemp("wf_small_%s_%d" % (variant, freq)))
            _WF[key] = workflow.small_workflow(sparsityd, model_cache, root, variant, freq,
                                               save_at=save_at)
        return _WF[key]
    return get


@pytest.fixture(scope="session")
def resnet_wf(sparsityd, tmp_path_factory):
    key = ("ResNet50",)
    if key not in _WF:
        root = str(tmp_path_factory.mktemp("wf_resnet50"))
        _WF[key] = workflow.keras_workflow(sparsityd, root, "ResNet50", size=64, classes=10,
                                           freq=0, steps=20, batch=2)
    return _WF[key]


# ---------------------------------------------------------------------------------------
# The checks


def check_nodes_like_plain(out_gd, plain_gd, changed_consts, what):
    """out_gd has plain_gd's nodes (names, ops, inputs, attrs); Const values equal except the
    ones in changed_consts (checked by the caller). Returns the list of differences."""
    out, plain = node_map(out_gd), node_map(plain_gd)
    diffs = []
    missing = sorted(set(plain) - set(out))
    extra = sorted(set(out) - set(plain))
    if missing:
        diffs.append("%s: nodes missing: %s" % (what, missing[:20]))
    if extra:
        diffs.append("%s: nodes not in the plain frozen graph: %s" % (what, extra[:20]))
    for name in sorted(set(out) & set(plain)):
        o, p = out[name], plain[name]
        if o.op != p.op:
            diffs.append("%s: %s op %s, plain %s" % (what, name, o.op, p.op))
            continue
        if list(o.input) != list(p.input):
            diffs.append("%s: %s inputs %s, plain %s" % (what, name, list(o.input), list(p.input)))
        if o.device != p.device:
            diffs.append("%s: %s device %r, plain %r" % (what, name, o.device, p.device))
        keys = (set(o.attr) | set(p.attr)) - {"value"}
        for k in sorted(keys):
            if o.attr.get(k) != p.attr.get(k):
                diffs.append("%s: %s attr %s differs" % (what, name, k))
        if o.op == "Const" and name not in changed_consts:
            if not bit_equal(workflow.const_value(o), workflow.const_value(p)):
                diffs.append("%s: Const %s value changed" % (what, name))
    return diffs


def check_export_result(r, wf, step, exported_path=None, feed_batch=2):
    """All the acceptance checks of one export of wf's masked frozen graph at `step`."""
    assert r.rc == 0, "export failed\n" + r.describe()
    layers = wf.built_infer.layers
    pruned = wf.pruned
    exp = workflow.expected_from_ckpt(wf.ckpt[step], layers, pruned, wf.freq, ref24.mask24)
    masked_gd = workflow.read_pb(wf.masked[step])
    plain_gd = workflow.read_pb(wf.plain[step])
    out_gd = workflow.read_pb(exported_path or r.out_path)

    # Self-check of the test: the masked frozen graph uses exactly the expected w * mask.
    mw = workflow.run_graph_def(masked_gd, [prefix(p) + "/masked_weight" for p in pruned], {})
    for p, v in zip(pruned, mw):
        assert bit_equal(v, exp[p]["masked"]), (
            "TEST PRECONDITION: masked frozen graph's %s/masked_weight != ckpt weight * "
            "expected mask (step %d, freq %d)" % (p, exp[p]["step"], wf.freq))
    assert not check_nodes_like_plain(
        type(masked_gd)(node=[n for n in masked_gd.node if not workflow.is_inserted_name(n.name)
                              and n.name not in pruned]),
        type(plain_gd)(node=[n for n in plain_gd.node if n.name not in pruned]),
        set(), "masked vs plain"), "TEST PRECONDITION: the two frozen graphs differ"

    # 1. no inserted node left, node for node the plain frozen graph
    left = sorted(n.name for n in out_gd.node if workflow.is_inserted_name(n.name))
    assert not left, "inserted nodes left in the export: %s" % left[:20]
    out_nodes = node_map(out_gd)
    plain_nodes = node_map(plain_gd)
    assert set(out_nodes) == set(plain_nodes), (
        "exported node names != original inference graph frozen without insert: "
        "missing %s, extra %s" % (sorted(set(plain_nodes) - set(out_nodes))[:20],
                                  sorted(set(out_nodes) - set(plain_nodes))[:20]))
    weight_consts = {}
    problems = []
    for p in pruned:
        node = out_nodes[p]
        want_input = layers[p]["weight_input"]
        if node.input[1] != want_input:
            problems.append("%s reads %s, not its original weight input %s" % (
                p, node.input[1], want_input))
        c = trace_const(out_nodes, node.input[1])
        if c is None:
            problems.append("%s: weight does not trace to a Const" % p)
            continue
        weight_consts[c.name] = p
        v = workflow.const_value(c)
        if not ref24.is_2of4(v, layers[p]["axis"]):
            problems.append("%s: exported weight %s is not 2:4 along axis %d" % (
                p, c.name, layers[p]["axis"]))
        if not bit_equal(v, exp[p]["masked"]):
            same_val = v.shape == exp[p]["masked"].shape and np.array_equal(v, exp[p]["masked"])
            problems.append("%s: exported weight %s != checkpoint weight * %s mask (step %d, "
                            "update_freq %d)%s" % (
                                p, c.name, "fresh" if workflow.refresh(exp[p]["step"], wf.freq)
                                else "stored", exp[p]["step"], wf.freq,
                                " (equal values, sign of zero differs)" if same_val else ""))
    assert not problems, "\n".join(problems)
    diffs = check_nodes_like_plain(out_gd, plain_gd, set(weight_consts), "export vs plain")
    assert not diffs, "\n".join(diffs[:30])

    # 2. runs, same outputs as the masked frozen graph
    feed = workflow.random_feed(wf.built_infer.inputs, feed_batch, 123)
    want = workflow.run_graph_def(masked_gd, wf.outputs, feed)
    got = workflow.run_graph_def(out_gd, wf.outputs, feed)
    workflow.compare_outputs(got, want, wf.outputs)

    # 3. the JSON result
    j = r.json()
    assert j["stage"] == "export", j.get("stage")
    rows = {}
    for row in j["layers"]:
        assert row["name"] not in rows, "layer %s listed twice" % row["name"]
        rows[row["name"]] = row
    got_pruned = sorted(n for n, row in rows.items() if row["action"] == "pruned")
    assert got_pruned == sorted(pruned), (got_pruned, sorted(pruned))
    for n, row in rows.items():
        assert row["action"] in ("pruned", "skipped"), row
    total_w = total_zeroed = 0
    for p in pruned:
        row = rows[p]
        v = exp[p]["masked"]
        zeroed = int(np.sum((exp[p]["w"] != 0) & (v == 0)))
        assert row["is_2of4"] is True, row
        assert row["zeros"] == int(np.sum(v == 0)), (row, int(np.sum(v == 0)))
        assert row["zeroed"] == zeroed, (row, zeroed)
        assert row["prune_axis"] == layers[p]["axis"], row
        total_w += v.size
        total_zeroed += zeroed
    t = j["totals"]
    assert t["pruned"] == len(pruned), t
    assert t["weights"] == total_w, (t, total_w)
    assert t["weights_zeroed"] == total_zeroed, (t, total_zeroed)
    return exp, out_gd


# ---------------------------------------------------------------------------------------
# Small model: conv (Cin 3, 6, 4), deconv, MatMul transpose_b false/true, one skipped layer


SMALL_CASES = [("resource", 0), ("resource", 3), ("ref", 0), ("ref", 3)]


@pytest.mark.parametrize("variant,freq", SMALL_CASES,
                         ids=["%s-freq%d" % c for c in SMALL_CASES])
def test_small_workflow_export(sparsityd, small_wf, workdir, variant, freq):
    wf = small_wf(variant, freq)
    assert "deconv/conv2d_transpose" in wf.pruned and "dense1/MatMul" in wf.pruned
    assert "conv_narrow/Conv2D" not in wf.pruned
    for step in sorted(wf.ckpt):
        out = os.path.join(workdir, "exported-%d.pb" % step)
        r = workflow.export(sparsityd, wf.masked[step], wf.record, wf.outputs, out)
        exp, out_gd = check_export_result(r, wf, step, feed_batch=4)
        refreshing = workflow.refresh(step, freq)
        if not refreshing:
            # The stored mask is what counts: make sure the test can tell it from a fresh one.
            assert any(not np.array_equal(e["stored"], e["fresh"]) for e in exp.values()), (
                "TEST PRECONDITION: at step %d the stored mask equals the fresh mask of "
                "every checkpoint weight: the stale-mask case proves nothing" % step)
        else:
            assert any(not np.array_equal(e["stored"], e["fresh"]) for e in exp.values()), (
                "TEST PRECONDITION: at refresh step %d the fresh mask equals the stored one "
                "everywhere: the refresh case proves nothing" % step)
        # the skipped layer keeps its dense weight
        nodes = node_map(out_gd)
        c = trace_const(nodes, nodes["conv_narrow/Conv2D"].input[1])
        plain = node_map(workflow.read_pb(wf.plain[step]))
        assert bit_equal(workflow.const_value(c), workflow.const_value(
            trace_const(plain, plain["conv_narrow/Conv2D"].input[1])))


def test_small_export_deterministic_and_table(sparsityd, small_wf, workdir):
    """Same bytes with and without --json; without --json a readable report on stdout."""
    wf = small_wf("resource", 0)
    a = os.path.join(workdir, "a.pb")
    b = os.path.join(workdir, "b.pb")
    r1 = workflow.ok(workflow.export(sparsityd, wf.masked[20], wf.record, wf.outputs, a), "export")
    r2 = workflow.ok(workflow.export(sparsityd, wf.masked[20], wf.record, wf.outputs, b,
                                     as_json=False), "export")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), "export output differs between two runs"
    for p in wf.pruned:
        assert p in r2.stdout, "table lacks layer %s\n%s" % (p, r2.describe())
    check_export_result(r1, wf, 20, feed_batch=4)


def test_small_export_outputs_with_tensor_suffix(sparsityd, small_wf, workdir):
    wf = small_wf("ref", 0)
    out = os.path.join(workdir, "e.pb")
    r = workflow.export(sparsityd, wf.masked[20], wf.record, ["logits:0"], out)
    check_export_result(r, wf, 20, feed_batch=4)


def test_shared_weight_const_not_modified_in_place(sparsityd, small_wf, workdir):
    """A weight Const that another node also reads keeps its value for that node."""
    wf = small_wf("resource", 0)
    gd = workflow.read_pb(wf.masked[20])
    nodes = node_map(gd)
    layer = "dense1/MatMul"
    wconst = trace_const(nodes, wf.built_infer.layers[layer]["weight_input"])
    assert wconst is not None
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
        probe = tf.reduce_sum(g.get_tensor_by_name(wconst.name + ":0"), name="probe/sum")
        assert probe.op.inputs[0].op.name == wconst.name
    gd2 = g.as_graph_def()
    src = workflow.write_pb(gd2, os.path.join(workdir, "masked_shared.pb"))
    outputs = wf.outputs + ["probe/sum"]
    out = os.path.join(workdir, "exported.pb")
    r = workflow.export(sparsityd, src, wf.record, outputs, out)
    assert r.rc == 0, "export failed\n" + r.describe()
    og = workflow.read_pb(out)
    onodes = node_map(og)
    assert not [n for n in onodes if workflow.is_inserted_name(n)]
    orig = workflow.const_value(wconst)
    assert wconst.name in onodes, "shared Const %s removed" % wconst.name
    assert bit_equal(workflow.const_value(onodes[wconst.name]), orig), (
        "shared weight Const %s modified in place" % wconst.name)
    c = trace_const(onodes, onodes[layer].input[1])
    assert c is not None and c.name != wconst.name, (
        "%s still reads the shared Const %s" % (layer, c and c.name))
    exp = workflow.expected_from_ckpt(wf.ckpt[20], wf.built_infer.layers, [layer], 0, ref24.mask24)
    assert bit_equal(workflow.const_value(c), exp[layer]["masked"])
    feed = workflow.random_feed(wf.built_infer.inputs, 4, 7)
    want = workflow.run_graph_def(gd2, outputs, feed)
    got = workflow.run_graph_def(og, outputs, feed)
    workflow.compare_outputs(got, want, outputs)
    assert got[1] == want[1]


# ---------------------------------------------------------------------------------------
# tf_keras ResNet50 (weights=None, 64x64x3, 10 classes), learning phase 1 / 0


def test_resnet50_workflow_export(sparsityd, resnet_wf, workdir):
    wf = resnet_wf
    assert len(wf.pruned) == 54, len(wf.pruned)
    assert len(wf.losses) == 20
    out = os.path.join(workdir, "resnet50_pruned.pb")
    r = workflow.export(sparsityd, wf.masked[20], wf.record, wf.outputs, out)
    exp, _ = check_export_result(r, wf, 20, feed_batch=2)
    # update_freq 0, step 20: the mask of step 0 (stored), not a fresh one
    assert any(not np.array_equal(e["stored"], e["fresh"]) for e in exp.values()), (
        "TEST PRECONDITION: training never moved a weight across a mask boundary")


# ---------------------------------------------------------------------------------------
# Errors


def _write_record(msg, path):
    with open(path, "w") as f:
        f.write(text_format.MessageToString(msg))
    return path


def _record_without(wf, layer, workdir, rename=None):
    msg, _, _ = sdrun.read_record(wf.record)
    cls = type(msg)
    new = cls()
    for pr in msg.prune_record:
        if pr.selective_prune.name == layer:
            if rename is None:
                continue
            c = new.prune_record.add()
            c.CopyFrom(pr)
            c.selective_prune.name = rename
        else:
            new.prune_record.add().CopyFrom(pr)
    return _write_record(new, os.path.join(workdir, "edited.record.txt"))


def test_export_plain_frozen_graph_is_an_error(sparsityd, small_wf, workdir):
    wf = small_wf("resource", 0)
    out = os.path.join(workdir, "x.pb")
    r = workflow.export(sparsityd, wf.plain[20], wf.record, wf.outputs, out)
    sdrun.assert_error(r, 1)
    assert not os.path.exists(out), "output written despite the error"


@pytest.mark.parametrize("layer", ["conv2/Conv2D", "deconv/conv2d_transpose", "dense2/MatMul"])
def test_export_record_layer_removed(sparsityd, small_wf, workdir, layer):
    wf = small_wf("resource", 0)
    rec = _record_without(wf, layer, workdir)
    r = workflow.export(sparsityd, wf.masked[20], rec, wf.outputs, os.path.join(workdir, "x.pb"))
    sdrun.assert_error(r, 1, [layer])


def test_export_record_layer_renamed(sparsityd, small_wf, workdir):
    wf = small_wf("ref", 0)
    rec = _record_without(wf, "conv1/Conv2D", workdir, rename="conv1_renamed/Conv2D")
    r = workflow.export(sparsityd, wf.masked[20], rec, wf.outputs, os.path.join(workdir, "x.pb"))
    msg = sdrun.assert_error(r, 1)
    assert "conv1_renamed/Conv2D" in msg or "conv1/Conv2D" in msg, r.describe()


def test_export_record_extra_layer_not_in_model(sparsityd, small_wf, workdir):
    wf = small_wf("resource", 0)
    msg, _, _ = sdrun.read_record(wf.record)
    pr = msg.prune_record.add()
    pr.CopyFrom(msg.prune_record[0])
    pr.selective_prune.name = "ghost/Conv2D"
    rec = _write_record(msg, os.path.join(workdir, "ghost.record.txt"))
    r = workflow.export(sparsityd, wf.masked[20], rec, wf.outputs, os.path.join(workdir, "x.pb"))
    sdrun.assert_error(r, 1, ["ghost/Conv2D"])


def test_export_record_mask_shape_mismatch(sparsityd, small_wf, workdir):
    wf = small_wf("resource", 0)
    msg, _, _ = sdrun.read_record(wf.record)
    for pr in msg.prune_record:
        if pr.selective_prune.name == "conv2/Conv2D":
            for a in pr.selective_prune.attr:
                if a.name == "mask_shape":
                    assert list(a.ints) == [3, 3, 6, 5]
                    a.ClearField("ints")
                    a.ints.extend([3, 3, 6, 4])
    rec = _write_record(msg, os.path.join(workdir, "shape.record.txt"))
    r = workflow.export(sparsityd, wf.masked[20], rec, wf.outputs, os.path.join(workdir, "x.pb"))
    sdrun.assert_error(r, 1, ["conv2/Conv2D"])


def test_export_outputs_missing(sparsityd, small_wf, workdir):
    wf = small_wf("resource", 0)
    r = workflow.export(sparsityd, wf.masked[20], wf.record, ["no_such_output"],
                        os.path.join(workdir, "x.pb"))
    sdrun.assert_error(r, 1, ["no_such_output"])


def test_export_nan_weight(sparsityd, small_wf, workdir):
    wf = small_wf("resource", 3)
    for step in (20, 21):  # stored mask and fresh mask: both refuse a NaN weight
        gd = workflow.read_pb(wf.masked[step])
        nodes = node_map(gd)
        c = trace_const(nodes, wf.built_infer.layers["conv2/Conv2D"]["weight_input"])
        v = workflow.const_value(c).copy()
        v.flat[5] = np.nan
        c.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(v))
        src = workflow.write_pb(gd, os.path.join(workdir, "nan-%d.pb" % step))
        r = workflow.export(sparsityd, src, wf.record, wf.outputs,
                            os.path.join(workdir, "x-%d.pb" % step))
        sdrun.assert_error(r, 1, ["conv2/Conv2D"])


def test_export_usage_errors(sparsityd, small_wf, workdir):
    """Missing option / unknown option: exit 2 with a message (as the insert tests accept:
    'sparsityd: error: ' or the usage text)."""
    wf = small_wf("resource", 0)
    out = os.path.join(workdir, "x.pb")
    for args in (["export", "--model", wf.masked[20], "--outputs", "logits", "-o", out],
                 ["export", "--record", wf.record, "--outputs", "logits", "-o", out],
                 ["export", "--model", wf.masked[20], "--record", wf.record, "-o", out],
                 ["export", "--model", wf.masked[20], "--record", wf.record,
                  "--outputs", "logits"],
                 ["export", "--model", wf.masked[20], "--record", wf.record,
                  "--outputs", "logits", "-o", out, "--bogus"]):
        r = workflow._run(sparsityd, args)
        assert r.rc == 2, "expected exit 2\n" + r.describe()
        assert "sparsityd: error: " in r.stderr or "usage" in r.stderr.lower(), r.describe()
        assert not os.path.exists(out)
