"""Keras mixed precision and tensor-name outputs, against real TensorFlow.

Under the tf_keras `mixed_float16` policy a layer keeps its kernel as a float32 variable
and reads it through a Cast to float16 for every call (VarHandleOp -> ReadVariableOp ->
Cast -> Conv2D / Conv2DBackpropInput / MatMul). sparsityd prunes such a layer in float32,
before the Cast: insert rewires the Cast's input to `weight * mask`, export folds the mask
into the frozen float32 Const and points the Cast back at it, prune does the same in one
shot, check reads the value through the Cast.

The model is built once per module (graph mode, like the AMCT workflow) and run through
workflow.run_workflow: insert, train with sparsityd/update, checkpoint, insert the
inference graph, restore and freeze. Also here: `--outputs` given as tensor names
(`logits:0`) on the CLI and in the daemon's `outputs` part, and the refusals of `^name`
and a suffix that is not an index.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import daemon as D
import models
import ref24
import sdrun
import workflow
from sdrun import prefix
from workflow import bit_equal, node_map, trace_const

tf1 = tf.compat.v1

# Layer name -> (op, kernel variable, prune axis, kernel shape).
LAYERS = {
    "conv/Conv2D": ("Conv2D", "conv/kernel", 2, [3, 3, 3, 8]),
    "deconv/conv2d_transpose": ("Conv2DBackpropInput", "deconv/kernel", 3, [3, 3, 6, 8]),
    "dense/MatMul": ("MatMul", "dense/kernel", 0, [16 * 16 * 6, 10]),
}
FREQ = 2
SAVE_AT = (5, 6)  # step 5 uses the stored mask, step 6 a fresh one (6 % 2 == 0)


def build_mixed():
    """conv -> Conv2DTranspose -> dense under mixed_float16, logits cast back to float32.

    Expectations are read from the graph TensorFlow built: each layer's input 1 is a Cast
    to float16 whose input reads the float32 kernel."""
    import tf_keras

    tf_keras.backend.clear_session()
    policy = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        g = tf.Graph()
        with g.as_default():
            tf1.set_random_seed(3)
            inp = tf_keras.Input((8, 8, 3), name="x")
            h = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
            h = tf_keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same",
                                                activation="relu", name="deconv")(h)
            h = tf_keras.layers.Flatten(name="flatten")(h)
            h = tf_keras.layers.Dense(10, name="dense")(h)
            out = tf_keras.layers.Activation("linear", dtype="float32", name="logits")(h)
            variables = [v.op.name for v in tf1.global_variables()]
    finally:
        tf_keras.mixed_precision.set_global_policy(policy)
    layers = {}
    for name, (op_type, kernel, axis, shape) in LAYERS.items():
        op = g.get_operation_by_name(name)
        cast = op.inputs[1].op
        assert op.type == op_type and cast.type == "Cast", (name, op.type, cast.type)
        assert cast.inputs[0].dtype == tf.float32 and cast.outputs[0].dtype == tf.float16
        read = cast.inputs[0].op
        assert read.type == "ReadVariableOp" and read.inputs[0].op.name == kernel
        layers[name] = dict(type=op_type, weight=kernel, cast=cast.name,
                            weight_input=cast.node_def.input[0], shape=shape, axis=axis,
                            dtype="float32", reason=None)
    assert out.dtype == tf.float32
    return models.Built("mixed", g, [out.op.name], {"x": [None, 8, 8, 3]}, layers, [],
                        variables)


@pytest.fixture(scope="module")
def mixed(sparsityd, tmp_path_factory):
    """The workflow on the mixed-precision model (the same graph trains and infers)."""
    root = str(tmp_path_factory.mktemp("mixed"))
    built = build_mixed()
    meta = models.write_model(built, os.path.join(root, "model"), "meta")
    rng = np.random.RandomState(4)
    xs = rng.rand(8, 8, 8, 3).astype(np.float32)
    ys = rng.randint(0, 10, size=8).astype(np.int64)

    def make_feed(step):
        i = (step * 4) % len(xs)
        return {"x:0": xs[i:i + 4], "test_labels:0": ys[i:i + 4]}

    wf = workflow.run_workflow(sparsityd, root, meta, built, meta, built, FREQ, max(SAVE_AT),
                               SAVE_AT, workflow.classification_loss, make_feed, optimizer="gd", lr=0.05)
    wf.meta = meta
    return wf


def weight_const(gd, layer, cast):
    """The Const the exported layer's Cast reads (through Identity), checking the wiring."""
    nodes = node_map(gd)
    assert nodes[layer].input[1] == cast, (layer, list(nodes[layer].input))
    c = trace_const(nodes, nodes[cast].input[0])
    assert c is not None, "%s: the Cast does not read a Const" % layer
    return c


def test_insert_prunes_through_the_cast(mixed):
    layers = mixed.built_infer.layers
    for r in (mixed.insert_train, mixed.insert_infer):
        got = {l["name"]: l for l in r.json()["layers"]}
        assert set(got) == set(layers), sorted(got)
        for name, exp in layers.items():
            g = got[name]
            assert g["action"] == "pruned" and g["reason"] is None, g
            for key, want in (("type", exp["type"]), ("weight", exp["weight"]),
                              ("weight_input", exp["weight_input"]),
                              ("weight_shape", exp["shape"]), ("prune_axis", exp["axis"]),
                              ("dtype", "float32"), ("update_freq", FREQ)):
                assert g[key] == want, (name, key, g)
        _, rec, _ = sdrun.read_record(r.record_path)
        for name, exp in layers.items():
            assert rec[name]["cast"] == (3, exp["cast"]), rec[name]
            assert rec[name]["weight_input"] == (3, exp["weight_input"]), rec[name]
            assert rec[name]["dtype"] == (3, "float32"), rec[name]

    # The layer still reads its Cast; the Cast reads the float32 masked weight.
    gd, _ = sdrun.read_model(mixed.insert_infer.out_path, "meta")
    nodes = node_map(gd)
    for name, exp in layers.items():
        P = prefix(name)
        assert nodes[name].input[1] == exp["cast"], list(nodes[name].input)
        assert nodes[exp["cast"]].input[0] == P + "/masked_weight"
        mw = nodes[P + "/masked_weight"]
        assert list(mw.input) == [exp["weight_input"], P + "/mask_value"]
        assert tf.dtypes.as_dtype(mw.attr["T"].type) == tf.float32
        assert tf.dtypes.as_dtype(nodes[P + "/mask"].attr["dtype"].type) == tf.float32

    # Training ran the update with every step: the checkpoint holds the step count and a
    # 2:4 mask of the kernel's shape.
    assert np.all(np.isfinite(mixed.losses)) and len(mixed.losses) == max(SAVE_AT)
    reader = tf.train.load_checkpoint(mixed.ckpt[max(SAVE_AT)])
    for name, exp in layers.items():
        assert int(reader.get_tensor(prefix(name) + "/step")) == max(SAVE_AT)
        mask = reader.get_tensor(prefix(name) + "/mask")
        assert mask.dtype == np.float32 and list(mask.shape) == exp["shape"]
        assert ref24.is_2of4(mask, exp["axis"]), name


@pytest.mark.parametrize("step", SAVE_AT)
def test_export_folds_the_mask_before_the_cast(sparsityd, mixed, tmp_path, step):
    layers = mixed.built_infer.layers
    out = str(tmp_path / "exported.pb")
    outputs = [o + ":0" for o in mixed.outputs]  # tensor names work as well
    r = workflow.ok(workflow.export(sparsityd, mixed.masked[step], mixed.record, outputs, out),
                    "export")
    j = r.json()
    assert j["totals"]["pruned"] == len(layers) and j["totals"]["layers_2of4"] == len(layers), j
    got, plain = workflow.read_pb(out), workflow.read_pb(mixed.plain[step])

    # Exactly the original frozen graph's nodes and wiring; the kernels hold the
    # checkpoint's weight * mask in float32, 2:4.
    assert sorted(node_map(got)) == sorted(node_map(plain))
    for n in got.node:
        assert list(n.input) == list(node_map(plain)[n.name].input), n.name
    exp = workflow.expected_from_ckpt(mixed.ckpt[step], layers, list(layers), FREQ, ref24.mask24)
    for name, info in layers.items():
        w = workflow.const_value(weight_const(got, name, info["cast"]))
        assert w.dtype == np.float32
        assert ref24.is_2of4(w, info["axis"]), name
        assert bit_equal(w, exp[name]["masked"]), name
        assert (exp[name]["step"] % FREQ == 0) == (step % FREQ == 0)

    # It runs in TensorFlow and computes what the masked frozen graph computes.
    feed = workflow.random_feed(mixed.built_infer.inputs, 3, seed=step)
    want = workflow.run_graph_def(workflow.read_pb(mixed.masked[step]), mixed.outputs, feed)
    have = workflow.run_graph_def(got, mixed.outputs, feed)
    workflow.compare_outputs(have, want, mixed.outputs, rel=0)


def freeze_at_step_0(meta, ckpt, outputs, path):
    """The inserted inference graph restored from ckpt with every step set to 0, frozen."""
    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(meta)
        saver = tf1.train.Saver(var_list=tf1.global_variables())
        zero = [tf.raw_ops.AssignVariableOp(resource=g.get_tensor_by_name(prefix(p) + "/step:0"),
                                            value=tf.constant(0, tf.int64)) for p in LAYERS]
    with tf1.Session(graph=g) as sess:
        saver.restore(sess, ckpt)
        sess.run(zero)
        frozen = tf1.graph_util.convert_variables_to_constants(sess, g.as_graph_def(), outputs)
    return workflow.write_pb(frozen, path)


def test_prune_equals_insert_freeze_at_step_0_export(sparsityd, mixed, tmp_path):
    layers = mixed.built_infer.layers
    step = max(SAVE_AT)
    at0 = freeze_at_step_0(mixed.insert_infer.out_path, mixed.ckpt[step], mixed.outputs,
                           str(tmp_path / "masked-step0.pb"))
    exported = str(tmp_path / "exported.pb")
    workflow.ok(workflow.export(sparsityd, at0, mixed.record, mixed.outputs, exported), "export")
    p = workflow.ok(workflow.prune(sparsityd, mixed.plain[step], sdrun.config_text(FREQ),
                                   mixed.outputs, str(tmp_path)), "prune")
    assert {l["name"]: l["action"] for l in p.json()["layers"]} == {n: "pruned" for n in layers}
    eg, pg = workflow.read_pb(exported), workflow.read_pb(p.out_path)
    original = workflow.read_pb(mixed.plain[step])
    for name, info in layers.items():
        w0 = workflow.const_value(weight_const(original, name, info["cast"]))
        we = workflow.const_value(weight_const(eg, name, info["cast"]))
        wp = workflow.const_value(weight_const(pg, name, info["cast"]))
        assert bit_equal(wp, we), name
        assert bit_equal(wp, ref24.apply24(w0, info["axis"])), name

    # check reads each weight through its Cast: 2:4 after prune, not before.
    for model, is24 in ((p.out_path, True), (mixed.plain[step], False)):
        c = workflow.ok(workflow.check(sparsityd, model, mixed.outputs), "check").json()
        for l in c["layers"]:
            assert l["action"] == "checked" and l["is_2of4"] is is24, l
            assert "read through Cast '%s'" % layers[l["name"]]["cast"] in l["detail"], l


def test_cli_outputs_as_tensor_names(sparsityd, mixed, tmp_path):
    node = mixed.outputs[0]
    by_node = sdrun.assert_ok(sdrun.insert(sparsityd, mixed.meta, sdrun.config_text(FREQ),
                                           [node], str(tmp_path / "node")))
    by_tensor = sdrun.assert_ok(sdrun.insert(sparsityd, mixed.meta, sdrun.config_text(FREQ),
                                             [node + ":0"], str(tmp_path / "tensor")))
    for a, b in ((by_node.out_path, by_tensor.out_path),
                 (by_node.record_path, by_tensor.record_path)):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read(), (a, b)
    assert by_tensor.json()["outputs"] == [node]
    # "x:1" names node x too (an output of a multi-output node).
    r = workflow.ok(workflow.check(sparsityd, mixed.plain[max(SAVE_AT)], [node + ":1"]), "check")
    assert r.json()["totals"]["checked"] == len(LAYERS)

    for outputs, want in ((["^" + node], ["control input", "'^%s'" % node]),
                          ([node + ":b"], ["'%s:b'" % node, "output index"]),
                          (["dense/BiasAdd", ":0"], ["output 2", "no node name"])):
        for stage in ("insert", "check"):
            if stage == "insert":
                r = sdrun.insert(sparsityd, mixed.meta, sdrun.config_text(FREQ), outputs,
                                 str(tmp_path / "bad"))
            else:
                r = workflow.check(sparsityd, mixed.plain[max(SAVE_AT)], outputs)
            sdrun.assert_error(r, code=2, substrings=want)


def test_daemon_outputs_as_tensor_names(d, mixed):
    node = mixed.outputs[0]
    model = mixed.plain[max(SAVE_AT)]
    j = d.run_job("check", model=model, outputs=node + ":0")
    assert j["state"] == "succeeded", j
    assert j["result"]["outputs"] == [node], j["result"]
    assert j["result"]["totals"]["checked"] == len(LAYERS), j["result"]
    p = D.assert_problem(d.submit("check", model=model, outputs="^" + node), 400)
    assert "control input" in p["detail"], p
