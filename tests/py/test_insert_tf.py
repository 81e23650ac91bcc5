"""`sparsityd insert` against real TensorFlow (SPEC sections 2-4, 6, 7).

The AMCT workflow of the seed: insert into the training graph, build the optimizer on top,
train (running sparsityd/update with every step), save a checkpoint, insert into the
inference graph with the same config, restore, freeze with convert_variables_to_constants.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

import ref24
import sdrun
import tfcheck
from sdrun import INIT_OP, UPDATE_OP, prefix, tname

tf1 = tf.compat.v1

SAMPLE = sdrun.SAMPLE_CONFIG


def const_freq(f):
    return lambda name: f


def insert_and_read(sparsityd, model_cache, workdir, fmt, kind, args, config, tag="out",
                    outputs=None, freq=const_freq(0), reasons=None, allow_reasons=None,
                    format_source="detected", extra=(), stated=None):
    path, built = model_cache.file(fmt, kind, *args)
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, config, outputs or built.outputs, workdir,
                                     tag=tag, fmt=stated, extra=extra))
    gd, meta = sdrun.read_model(r.out_path, fmt)
    ogd = tfcheck.orig_graph_def(built, fmt)
    pruned = tfcheck.check_json(r, built, fmt, ogd, gd, freq, reasons=reasons,
                                allow_reasons=allow_reasons, format_source=format_source)
    tfcheck.check_record(r.record_path, built, pruned, freq)
    tfcheck.check_preserved(ogd, gd, pruned, built.layers)
    tfcheck.check_forward_pure(gd, outputs or built.outputs)
    if meta is not None:
        tfcheck.check_meta_preserved(built.meta_graph_def, meta, pruned)
    return r, built, gd, meta, pruned


# ---------------------------------------------------------------------------------------
# Training harness (MetaGraphDef)


class Trainer:
    def __init__(self, meta_path, built, pruned, optimizer, lr):
        self.built = built
        self.pruned = pruned
        self.graph = g = tf.Graph()
        with g.as_default():
            tf1.train.import_meta_graph(meta_path)
            self.x = g.get_tensor_by_name("x:0")
            self.logits = g.get_tensor_by_name("logits:0")
            self.y = tf1.placeholder(tf.float32, [None, 7], name="test_y")
            self.loss = tf.reduce_mean(tf.square(self.logits - self.y))
            if optimizer == "gd":
                opt = tf1.train.GradientDescentOptimizer(lr)
            else:
                opt = tf1.train.RMSPropOptimizer(lr, momentum=0.9)
            self.train_op = opt.minimize(self.loss)
            self.update = g.get_operation_by_name(UPDATE_OP)
            self.st = tfcheck.state_tensors(g, pruned, built.layers)
            self.grads = {p: tf.gradients(self.loss, [self.st[p]["w"], self.st[p]["mw"]])
                          for p in pruned}
            self.init = tf1.global_variables_initializer()
            self.global_names = {v.op.name for v in tf1.global_variables()}
            self.trainable_names = {v.op.name for v in tf1.trainable_variables()}
            self.update_ops = [o.name for o in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)]
            self.saver = tf1.train.Saver()
        self.sess = tf1.Session(graph=g)

    def close(self):
        self.sess.close()


def _data(seed, n=16):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 8, 8, 3).astype(np.float32), rng.randn(n, 7).astype(np.float32)


def train_and_check(tr, freq_by_layer, steps=11):
    """Steps 0..steps-1 of training with the update op; checks every step. Returns history."""
    sess, st, pruned, layers = tr.sess, tr.st, tr.pruned, tr.built.layers
    for p in pruned:
        assert prefix(p) + "/mask" in tr.global_names, "mask of %s not a global variable" % p
        assert prefix(p) + "/step" in tr.global_names, "step of %s not a global variable" % p
        assert prefix(p) + "/mask" not in tr.trainable_names, "mask of %s is trainable" % p
        assert prefix(p) + "/step" not in tr.trainable_names, "step of %s is trainable" % p
    assert UPDATE_OP in tr.update_ops, tr.update_ops
    x, y = _data(0)
    feed = {tr.x: x, tr.y: y}
    sess.run(tr.init)
    init_state = sess.run({p: (st[p]["w"], st[p]["mask"], st[p]["step"]) for p in pruned})
    for p in pruned:
        _, m, s = init_state[p]
        assert np.all(m == 1) and s == 0, "%s: global_variables_initializer gave mask/step %s" % (p, s)
    w_init = {p: init_state[p][0] for p in pruned}
    losses = []
    masks_used = {p: [] for p in pruned}
    stale_seen = False
    for step in range(steps):
        before = sess.run({p: (st[p]["w"], st[p]["mask"], st[p]["step"]) for p in pruned})
        expected = {}
        for p in pruned:
            w, mask_before, s = before[p]
            assert s == step, "%s: step variable %s before step %d" % (p, s, step)
            fresh = ref24.mask24(w, layers[p]["axis"])
            if refresh(step, freq_by_layer(p)):
                expected[p] = fresh
            else:
                expected[p] = mask_before
                if not np.array_equal(fresh, mask_before):
                    stale_seen = True
        if step == 0:
            # No gradient flows into the mask: d loss/d w == d loss/d masked_weight * mask.
            g = sess.run({p: tr.grads[p] + [st[p]["mvalue"]] for p in pruned}, feed)
            for p in pruned:
                gw, gmw, mv = g[p]
                np.testing.assert_allclose(gw, gmw * mv, rtol=1e-6, atol=1e-7,
                                           err_msg="%s: gradient leaks through the mask" % p)
        fetch = {p: (st[p]["mw"], st[p]["fresh"], st[p]["mvalue"]) for p in pruned}
        _, _, loss, res = sess.run([tr.train_op, tr.update, tr.loss, fetch], feed)
        losses.append(loss)
        for p in pruned:
            tfcheck.check_step_values(layers, p, before[p][0], *res[p], expected[p],
                                      "training step %d" % step)
            masks_used[p].append(expected[p])
        after = sess.run({p: (st[p]["mask"], st[p]["step"]) for p in pruned})
        for p in pruned:
            assert np.array_equal(after[p][0], expected[p]), (
                "%s: stored mask after update at step %d is not the mask used" % (p, step))
            assert after[p][1] == step + 1, "%s: step after update %s" % (p, after[p][1])
    w_final = sess.run({p: st[p]["w"] for p in pruned})
    return dict(losses=losses, masks=masks_used, w_init=w_init, w_final=w_final,
                stale_seen=stale_seen)


refresh = tfcheck.refresh


def check_learning(hist, pruned, freq_by_layer):
    losses = hist["losses"]
    assert losses[-1] < losses[0], "loss did not fall: %s" % losses
    changed_kept = total_kept = 0
    for p in pruned:
        w0, w1 = hist["w_init"][p], hist["w_final"][p]
        final_mask = hist["masks"][p][-1]
        kept = final_mask != 0
        moved = (w0 != w1) & kept
        assert moved.any(), "%s: no kept weight changed in training" % p
        changed_kept += int(moved.sum())
        total_kept += int(kept.sum())
        if freq_by_layer(p) == 0:
            first = hist["masks"][p][0]
            for m in hist["masks"][p]:
                assert np.array_equal(m, first), "%s: kept positions changed with update_freq 0" % p
            pruned_pos = first == 0
            assert np.array_equal(w0[pruned_pos], w1[pruned_pos]), (
                "%s: pruned weights changed (gradient reached masked-out weights)" % p)
    assert changed_kept > total_kept // 2, "only %d of %d kept weights changed" % (
        changed_kept, total_kept)


def checkpoint_roundtrip(sparsityd, model_cache, workdir, tr, variant, config, pruned, freq):
    """Save from the training graph, restore into the inserted inference graph, freeze."""
    sess = tr.sess
    with tr.graph.as_default():  # Saver.save outside the graph context thinks it is eager
        ckpt = tr.saver.save(sess, os.path.join(workdir, "ckpt", "model"))
    x_eval = _data(1, n=4)[0]
    out_train = sess.run(tr.logits, {tr.x: x_eval})
    state_train = sess.run({p: (tr.st[p]["w"], tr.st[p]["mask"], tr.st[p]["step"]) for p in pruned})

    path, ibuilt = model_cache.file("meta", "small", variant, "infer")
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, config, ibuilt.outputs, workdir, tag="infer"))
    igd, imeta = sdrun.read_model(r.out_path, "meta")
    iogd = ibuilt.meta_graph_def.graph_def
    ipruned = tfcheck.check_json(r, ibuilt, "meta", iogd, igd, freq)
    assert sorted(ipruned) == sorted(pruned)
    tfcheck.check_preserved(iogd, igd, ipruned, ibuilt.layers)
    tfcheck.check_meta_preserved(ibuilt.meta_graph_def, imeta, ipruned)

    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(r.out_path)
        st = tfcheck.state_tensors(g, pruned, ibuilt.layers)
        logits = g.get_tensor_by_name("logits:0")
        saver = tf1.train.Saver()
        init = tf1.global_variables_initializer()
    with g.as_default(), tf1.Session(graph=g) as isess:
        isess.run(init)
        saver.restore(isess, ckpt)
        restored = isess.run({p: (st[p]["w"], st[p]["mask"], st[p]["step"]) for p in pruned})
        for p in pruned:
            for a, b, what in zip(state_train[p], restored[p], ("weight", "mask", "step")):
                assert np.array_equal(a, b), "%s: %s not restored from the checkpoint" % (p, what)
        out_inf = isess.run(logits, {"x:0": x_eval})
        np.testing.assert_allclose(out_inf, out_train, rtol=1e-5, atol=1e-6,
                                   err_msg="inference graph output != training graph output")
        frozen = tf1.graph_util.convert_variables_to_constants(isess, g.as_graph_def(), ["logits"])
    bad = [n.name for n in frozen.node if n.op in (
        "VarHandleOp", "VariableV2", "Assign", "AssignVariableOp", "AssignAddVariableOp",
        "AssignAdd")]
    assert not bad, "frozen graph still has variables/assignments: %s" % bad
    names = {n.name for n in frozen.node}
    for p in pruned:
        assert prefix(p) + "/masked_weight" in names, "frozen graph lost %s/masked_weight" % p
    fg = tf.Graph()
    with fg.as_default():
        tf.import_graph_def(frozen, name="")
    with tf1.Session(graph=fg) as fsess:
        out_frozen = fsess.run("logits:0", {"x:0": x_eval})
    np.testing.assert_allclose(out_frozen, out_inf, rtol=1e-6, atol=1e-7,
                               err_msg="frozen graph output != restored inference graph output")
    with open(os.path.join(workdir, "frozen.pb"), "wb") as f:
        f.write(frozen.SerializeToString())


TRAIN_CASES = [
    # variant, optimizer, lr, update_freq
    ("ref", "gd", 0.05, 0),
    ("resource", "rmsprop", 0.01, 0),
    ("ref", "rmsprop", 0.01, 3),
    ("resource", "gd", 0.05, 3),
]


@pytest.mark.parametrize("variant,optimizer,lr,freq", TRAIN_CASES,
                         ids=["%s-%s-freq%d" % (c[0], c[1], c[3]) for c in TRAIN_CASES])
def test_metagraph_train_checkpoint_freeze(sparsityd, model_cache, workdir, variant, optimizer,
                                           lr, freq):
    config = sdrun.config_text(freq)
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "meta",
                                                 "small", (variant, "train"), config,
                                                 freq=const_freq(freq))
    tr = Trainer(r.out_path, built, pruned, optimizer, lr)
    try:
        hist = train_and_check(tr, const_freq(freq))
        check_learning(hist, pruned, const_freq(freq))
        if freq:
            assert hist["stale_seen"], (
                "weights never moved enough for the fresh mask to differ from the stored one "
                "between refresh steps: the update_freq test proves nothing")
        checkpoint_roundtrip(sparsityd, model_cache, workdir, tr, variant, config, pruned,
                             const_freq(freq))
    finally:
        tr.close()


def test_metagraph_mixed_update_freq_overrides(sparsityd, model_cache, workdir):
    """override_layer_configs > override_layer_types > prune_config, each with its own freq."""
    config = sdrun.config_text(0, extra="""
override_layer_types { layer_type: "MatMul"
  prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 4 } } } }
override_layer_configs { layer_name: "dense2/MatMul"
  prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 2 } } } }
override_layer_configs { layer_name: "conv2/Conv2D"
  prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 3 } } } }
""")
    freqs = {"dense1/MatMul": 4, "dense2/MatMul": 2, "conv2/Conv2D": 3}
    freq = lambda n: freqs.get(n, 0)  # noqa: E731
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "meta",
                                                 "small", ("resource", "train"), config, freq=freq)
    tr = Trainer(r.out_path, built, pruned, "rmsprop", 0.01)
    try:
        hist = train_and_check(tr, freq, steps=9)
        check_learning(hist, pruned, freq)
    finally:
        tr.close()


@pytest.mark.parametrize("variant", ["ref", "resource", "const"])
def test_graphdef_insert_runs(sparsityd, model_cache, workdir, variant):
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "pb", "small",
                                                 (variant, "train"), SAMPLE)
    tfcheck.check_graphdef_runtime(gd, built, pruned, const_freq(0))


def test_graphdef_update_freq_2(sparsityd, model_cache, workdir):
    """Stateful semantics without an optimizer: weights are changed by hand between steps."""
    freq = const_freq(2)
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "pb", "small",
                                                 ("resource", "train"), sdrun.config_text(2),
                                                 freq=freq)
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
        st = tfcheck.state_tensors(g, pruned, built.layers)
        new_w = {}
        assigns = []
        for p in pruned:
            info = built.layers[p]
            ph = tf1.placeholder(tf.float32, info["shape"])
            new_w[p] = ph
            assigns.append(tf.raw_ops.AssignVariableOp(
                resource=g.get_tensor_by_name(info["weight"] + ":0"), value=ph))
        update = g.get_operation_by_name(UPDATE_OP)
    rng = np.random.RandomState(3)
    with tf1.Session(graph=g) as sess:
        for op in built.init_ops:
            sess.run(op)
        sess.run(INIT_OP)
        stale_seen = False
        for step in range(6):
            # new random weights every step: the mask must follow only at steps 0, 2, 4
            sess.run(assigns, {new_w[p]: rng.randn(*built.layers[p]["shape"]).astype(np.float32)
                               for p in pruned})
            before = sess.run({p: (st[p]["w"], st[p]["mask"]) for p in pruned})
            res, _ = sess.run([{p: (st[p]["mw"], st[p]["fresh"], st[p]["mvalue"]) for p in pruned},
                               update])
            for p in pruned:
                w, mb = before[p]
                fresh = ref24.mask24(w, built.layers[p]["axis"])
                exp = fresh if step % 2 == 0 else mb
                stale_seen |= not np.array_equal(fresh, exp)
                tfcheck.check_step_values(built.layers, p, w, *res[p], exp, "step %d" % step)
        assert stale_seen


def test_pbtxt_insert(sparsityd, model_cache, workdir):
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "pbtxt",
                                                 "small", ("resource", "train"), SAMPLE)
    with open(r.out_path) as f:
        text_format.Parse(f.read(), tf1.GraphDef())  # text, not binary
    tfcheck.check_graphdef_runtime(gd, built, pruned, const_freq(0))


def test_pbtxt_ref_stated_format(sparsityd, model_cache, workdir):
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "pbtxt",
                                                 "small", ("ref", "infer"), SAMPLE,
                                                 stated="pbtxt", format_source="stated")
    tfcheck.check_graphdef_runtime(gd, built, pruned, const_freq(0), steps=2)


@pytest.mark.parametrize("fmt", ["pb", "meta"])
def test_stated_format(sparsityd, model_cache, workdir, fmt):
    insert_and_read(sparsityd, model_cache, workdir, fmt, "small", ("ref", "infer"), SAMPLE,
                    stated=fmt, format_source="stated")


@pytest.mark.parametrize("fmt,disguise", [("pb", ".meta"), ("meta", ".pb"), ("pbtxt", ".pb")])
def test_format_detected_from_content_not_name(sparsityd, model_cache, workdir, fmt, disguise):
    path, built = model_cache.file(fmt, "small", "resource", "infer")
    fake = os.path.join(workdir, "model" + disguise)
    with open(path, "rb") as src, open(fake, "wb") as dst:
        dst.write(src.read())
    r = sdrun.assert_ok(sdrun.insert(sparsityd, fake, SAMPLE, built.outputs, workdir))
    assert r.json()["model"]["format"] == tfcheck.FORMAT_NAMES[fmt], r.describe()
    assert r.json()["model"]["format_source"] == "detected", r.describe()
    gd, meta = sdrun.read_model(r.out_path, fmt)  # written in the input's format
    pruned = [l["name"] for l in r.json()["layers"] if l["action"] == "pruned"]
    tfcheck.check_preserved(tfcheck.orig_graph_def(built, fmt), gd, pruned, built.layers)


def test_graphdef_meta_ref_resource_json(sparsityd, model_cache, workdir):
    """The JSON and record of all four (variant x container) inputs agree on the layers."""
    results = {}
    for variant in ("ref", "resource"):
        for fmt in ("pb", "meta"):
            r, built, gd, meta, pruned = insert_and_read(
                sparsityd, model_cache, os.path.join(workdir, variant + fmt), fmt, "small",
                (variant, "infer"), SAMPLE)
            results[(variant, fmt)] = sorted(pruned)
            # conv_narrow has Cin=2: skipped, left dense
            j = {l["name"]: l for l in r.json()["layers"]}
            assert j["conv_narrow/Conv2D"]["reason"] == "axis_too_short"
            assert j["dense2/MatMul"]["prune_axis"] == 1
            assert j["deconv/conv2d_transpose"]["prune_axis"] == 3
    assert len(set(map(tuple, results.values()))) == 1, results
    assert results[("ref", "pb")] == sorted(["conv1/Conv2D", "conv2/Conv2D", "conv3/Conv2D",
                                            "deconv/conv2d_transpose", "dense1/MatMul",
                                            "dense2/MatMul"])


def test_skip_reasons(sparsityd, model_cache, workdir):
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "pb", "skips",
                                                 (), SAMPLE)
    assert "dead/MatMul" not in {l["name"] for l in r.json()["layers"]}
    reasons = {l["name"]: l["reason"] for l in r.json()["layers"]}
    assert reasons == {
        "ok/MatMul": None, "ta/MatMul": "transpose_a", "ph/MatMul": "not_constant",
        "comp/MatMul": "not_constant", "shared1/MatMul": "shared_weight",
        "shared2/MatMul": "shared_weight", "short/MatMul": "axis_too_short",
        "int/MatMul": "dtype", "f64/MatMul": None, "constw/MatMul": None,
        "idchain/MatMul": None, "rchain/MatMul": None, "l2/MatMul": None}
    j = {l["name"]: l for l in r.json()["layers"]}
    assert j["idchain/MatMul"]["weight"] == "idchain/kernel"
    assert j["idchain/MatMul"]["weight_input"] == "idchain/id2"
    assert j["rchain/MatMul"]["weight"] == "rchain/kernel"
    f64 = next(l for l in r.json()["layers"] if l["name"] == "f64/MatMul")
    assert f64["dtype"] == "float64"
    tfcheck.check_graphdef_runtime(gd, built, pruned, const_freq(0))


def test_float16_never_crashes(sparsityd, model_cache, workdir):
    r, built, gd, meta, pruned = insert_and_read(
        sparsityd, model_cache, workdir, "meta", "fp16", (), SAMPLE,
        allow_reasons={"f16/MatMul": {None, "dtype"}})
    assert "f32/MatMul" in pruned
    tfcheck.check_graphdef_runtime(gd, built, pruned, const_freq(0), steps=2)


def test_const_weights_ties_splat_nchw(sparsityd, model_cache, workdir):
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "pb", "consts",
                                                 (), SAMPLE)
    assert sorted(pruned) == ["nchw/Conv2D", "splat/MatMul", "ties/MatMul"]
    masks = tfcheck.check_graphdef_runtime(gd, built, pruned, const_freq(0), steps=2)
    import models
    assert np.array_equal(masks["ties/MatMul"], ref24.mask24(models.TIE_WEIGHT, 0))
    # hand-checked: all-equal column keeps rows 0,1 and 4,5; [-2,2,1,-2] keeps 0,1
    assert masks["ties/MatMul"][:, 0].tolist() == [1, 1, 0, 0, 1, 1, 0]
    assert masks["ties/MatMul"][:, 1].tolist() == [1, 1, 0, 0, 1, 1, 0]
    assert masks["ties/MatMul"][:, 2].tolist() == [1, 0, 0, 1, 1, 1, 0]
    assert np.array_equal(masks["splat/MatMul"],
                          np.tile(np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1], np.float32)[:, None],
                                  (1, 4)))


# ---------------------------------------------------------------------------------------
# Config-driven behaviour (successful runs)


def test_skip_lists(sparsityd, model_cache, workdir):
    config = SAMPLE + """
skip_layers: "conv2/Conv2D"
skip_layer_types: "Conv2DBackpropInput"
regular_prune_skip_layers: "dense1/MatMul"
"""
    r, built, gd, meta, pruned = insert_and_read(
        sparsityd, model_cache, workdir, "pb", "small", ("resource", "infer"), config,
        reasons={"conv2/Conv2D": "skip_layers", "deconv/conv2d_transpose": "skip_layer_types",
                 "dense1/MatMul": "regular_prune_skip_layers"})
    assert sorted(pruned) == ["conv1/Conv2D", "conv3/Conv2D", "dense2/MatMul"]
    tfcheck.check_graphdef_runtime(gd, built, pruned, const_freq(0), steps=1)


def test_regular_prune_skip_types(sparsityd, model_cache, workdir):
    config = SAMPLE + 'regular_prune_skip_types: "MatMul"\n'
    r, built, gd, meta, pruned = insert_and_read(
        sparsityd, model_cache, workdir, "meta", "small", ("ref", "infer"), config,
        reasons={"dense1/MatMul": "regular_prune_skip_types",
                 "dense2/MatMul": "regular_prune_skip_types"})
    assert "dense1/MatMul" not in pruned


def test_no_prune_config_only_override(sparsityd, model_cache, workdir):
    config = """override_layer_configs {
  layer_name: "dense1/MatMul"
  prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 6 } } }
}
"""
    path, built = model_cache.file("pb", "small", "resource", "infer")
    reasons = {n: "no_prune_config" for n in built.layers if n != "dense1/MatMul"}
    reasons["dense1/MatMul"] = None
    r, built, gd, meta, pruned = insert_and_read(
        sparsityd, model_cache, workdir, "pb", "small", ("resource", "infer"), config,
        freq=const_freq(6), reasons=reasons,
        allow_reasons={"conv_narrow/Conv2D": {"no_prune_config", "axis_too_short"}})
    assert pruned == ["dense1/MatMul"]


def test_override_type_only(sparsityd, model_cache, workdir):
    config = """override_layer_types {
  layer_type: "Conv2DBackpropInput"
  prune_config { n_out_of_m_pruner { l1_selective_prune { } } }
}
"""
    path, built = model_cache.file("pb", "small", "resource", "infer")
    reasons = {n: "no_prune_config" for n in built.layers}
    reasons["deconv/conv2d_transpose"] = None
    r, built, gd, meta, pruned = insert_and_read(
        sparsityd, model_cache, workdir, "pb", "small", ("resource", "infer"), config,
        reasons=reasons, allow_reasons={"conv_narrow/Conv2D": {"no_prune_config", "axis_too_short"}})
    assert pruned == ["deconv/conv2d_transpose"]


def test_text_format_features(sparsityd, model_cache, workdir):
    """Comments, ':' before '{', enums by name and by number, last value wins."""
    config = """# AMCT simplified retrain config
prune_config: {   # colon before brace
  n_out_of_m_pruner {
    l1_selective_prune {
      n_out_of_m_type: M4N2
      update_freq: 2
      update_freq: 5   # last value wins
    }
  }
}
override_layer_configs {
  layer_name: 'conv1/Conv2D'
  prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: 0 update_freq: 1 } } }
}
"""
    freq = lambda n: 1 if n == "conv1/Conv2D" else 5  # noqa: E731
    insert_and_read(sparsityd, model_cache, workdir, "pb", "small", ("resource", "infer"), config,
                    freq=freq)


def test_text_format_list_syntax(sparsityd, model_cache, workdir):
    config = SAMPLE + 'skip_layers: ["conv1/Conv2D", "conv2/Conv2D"]\n'
    insert_and_read(sparsityd, model_cache, workdir, "pb", "small", ("resource", "infer"), config,
                    reasons={"conv1/Conv2D": "skip_layers", "conv2/Conv2D": "skip_layers"})


def test_outputs_with_tensor_suffix(sparsityd, model_cache, workdir):
    path, built = model_cache.file("pb", "small", "ref", "infer")
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, SAMPLE, ["logits:0"], workdir))
    assert [o.split(":")[0] for o in r.json()["outputs"]] == ["logits"], r.describe()
    assert len(r.json()["layers"]) == len(built.layers)


def test_outputs_limit_the_layers(sparsityd, model_cache, workdir):
    """Only layers on the path to the requested outputs are layers."""
    path, built = model_cache.file("pb", "small", "ref", "infer")
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, SAMPLE, ["conv2/Relu"], workdir))
    names = sorted(l["name"] for l in r.json()["layers"])
    assert names == ["conv1/Conv2D", "conv2/Conv2D"], r.describe()
    gd, _ = sdrun.read_model(r.out_path, "pb")
    tfcheck.check_preserved(built.graph_def, gd, names, built.layers)
    _, by_layer, order = sdrun.read_record(r.record_path)
    assert sorted(order) == names


def test_without_json_flag(sparsityd, model_cache, workdir):
    path, built = model_cache.file("pb", "small", "ref", "infer")
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, SAMPLE, built.outputs, workdir, as_json=False))
    assert os.path.getsize(r.out_path) > 0 and os.path.getsize(r.record_path) > 0
    gd, _ = sdrun.read_model(r.out_path, "pb")
    _, _, order = sdrun.read_record(r.record_path)
    assert len(order) == len(built.pruned())


def test_training_without_update_op(sparsityd, model_cache, workdir):
    """If nobody runs the update op, the mask is fresh every step: still 2:4 (SPEC 6)."""
    r, built, gd, meta, pruned = insert_and_read(sparsityd, model_cache, workdir, "meta",
                                                 "small", ("ref", "train"), sdrun.config_text(3),
                                                 freq=const_freq(3))
    tr = Trainer(r.out_path, built, pruned, "rmsprop", 0.02)
    try:
        x, y = _data(2)
        tr.sess.run(tr.init)
        for step in range(4):
            w = tr.sess.run({p: tr.st[p]["w"] for p in pruned})
            _, res = tr.sess.run([tr.train_op, {p: (tr.st[p]["mw"], tr.st[p]["fresh"],
                                                    tr.st[p]["mvalue"]) for p in pruned}],
                                 {tr.x: x, tr.y: y})
            for p in pruned:
                exp = ref24.mask24(w[p], built.layers[p]["axis"])
                tfcheck.check_step_values(built.layers, p, w[p], *res[p], exp,
                                          "no-update step %d" % step)
            steps = tr.sess.run({p: tr.st[p]["step"] for p in pruned})
            assert all(v == 0 for v in steps.values()), steps
    finally:
        tr.close()


def test_multiple_outputs(sparsityd, model_cache, workdir):
    path, built = model_cache.file("pb", "skips")
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, SAMPLE, ["ok/MatMul", "short/MatMul:0"],
                                     workdir))
    assert sorted(l["name"] for l in r.json()["layers"]) == ["ok/MatMul", "short/MatMul"]
    assert [o.split(":")[0] for o in r.json()["outputs"]] == ["ok/MatMul", "short/MatMul"]


def test_devices_and_unknown_fields_survive(sparsityd, model_cache, workdir):
    """SPEC 2: devices and unknown fields (node and graph level) survive the insert."""
    _, built = model_cache.file("pb", "small", "resource", "infer")
    gd = tf1.GraphDef()
    gd.CopyFrom(built.graph_def)
    dev = "/job:localhost/replica:0/task:0/device:CPU:0"
    unknown = b"\xb8\x3e\x07"  # field 999, varint 7
    for n in gd.node:
        if n.name in ("conv1/Conv2D", "conv1/kernel", "dense1/MatMul"):
            n.device = dev
        if n.name == "dense2/MatMul":
            n.MergeFromString(unknown)
    gd.MergeFromString(b"\xc0\x3e\x2a")  # field 1000, varint 42, on the GraphDef
    path = os.path.join(workdir, "annotated.pb")
    with open(path, "wb") as f:
        f.write(gd.SerializeToString())
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, SAMPLE, built.outputs, workdir))
    out, _ = sdrun.read_model(r.out_path, "pb")
    pruned = [l["name"] for l in r.json()["layers"] if l["action"] == "pruned"]
    tfcheck.check_preserved(gd, out, pruned, built.layers)
    node = next(n for n in out.node if n.name == "dense2/MatMul")
    assert unknown in node.SerializeToString(), "unknown NodeDef field dropped"
    assert b"\xc0\x3e\x2a" in out.SerializeToString(), "unknown GraphDef field dropped"
    tfcheck.check_graphdef_runtime(out, built, pruned, const_freq(0), steps=1)


def test_metagraph_extras_survive(sparsityd, model_cache, workdir):
    """saver_def, signature_def, tags, custom collections and an existing update_ops survive."""
    from tensorflow.core.protobuf import meta_graph_pb2
    _, built = model_cache.file("meta", "small", "ref", "infer")
    meta = meta_graph_pb2.MetaGraphDef()
    meta.CopyFrom(built.meta_graph_def)
    meta.meta_info_def.tags.append("train")
    meta.saver_def.filename_tensor_name = "save/Const:0"
    meta.saver_def.save_tensor_name = "save/control_dependency:0"
    meta.saver_def.restore_op_name = "save/restore_all"
    meta.saver_def.max_to_keep = 3
    sig = meta.signature_def["serving_default"]
    sig.inputs["x"].name = "x:0"
    sig.outputs["y"].name = "logits:0"
    sig.method_name = "tensorflow/serving/predict"
    meta.collection_def["custom_nodes"].node_list.value.extend(["logits", "conv1/Conv2D"])
    meta.collection_def["custom_ints"].int64_list.value.extend([1, 2, 3])
    meta.collection_def["update_ops"].node_list.value.append("conv1/Relu")
    path = os.path.join(workdir, "extras.meta")
    with open(path, "wb") as f:
        f.write(meta.SerializeToString())
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, SAMPLE, built.outputs, workdir))
    out_gd, out_meta = sdrun.read_model(r.out_path, "meta")
    pruned = [l["name"] for l in r.json()["layers"] if l["action"] == "pruned"]
    tfcheck.check_meta_preserved(meta, out_meta, pruned)
    assert list(out_meta.collection_def["update_ops"].node_list.value) == ["conv1/Relu", UPDATE_OP]


def test_reinsert_is_refused_or_clean(sparsityd, model_cache, workdir):
    """Inserting into an already inserted graph: an error naming the problem, never a crash."""
    path, built = model_cache.file("pb", "small", "resource", "infer")
    r1 = sdrun.assert_ok(sdrun.insert(sparsityd, path, SAMPLE, built.outputs, workdir, tag="one"))
    r2 = sdrun.insert(sparsityd, r1.out_path, SAMPLE, built.outputs, workdir, tag="two")
    assert r2.rc in (0, 1), r2.describe()
    if r2.rc == 1:
        sdrun.assert_error(r2, 1, ["sparsityd"])
