"""Real architectures: tf_keras ResNet50 and MobileNetV2 (weights=None), built in graph mode,
exported as MetaGraphDef, inserted, imported and trained for one step with the update op.

Expected layers are computed from the graph itself (models.describe_layers: every Conv2D /
MatMul / Conv2DBackpropInput on the path to the output; depthwise convs are not layers) and
cross-checked against hand counts.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import ref24
import sdrun
import tfcheck
from sdrun import UPDATE_OP, prefix

tf1 = tf.compat.v1

CASES = [
    # app, input size, layers (Conv2D + MatMul), first conv
    ("ResNet50", 64, 53 + 1, "conv1_conv/Conv2D"),
    ("MobileNetV2", 96, 35 + 1, "Conv1/Conv2D"),
]


@pytest.mark.parametrize("app,size,n_layers,first_conv", CASES, ids=[c[0] for c in CASES])
def test_keras_application(sparsityd, model_cache, workdir, app, size, n_layers, first_conv):
    path, built = model_cache.file("meta", "keras", app, size)
    # Expectations computed from the graph, checked against hand counts.
    assert len(built.layers) == n_layers
    counts = collections.Counter(l["type"] for l in built.layers.values())
    assert counts["MatMul"] == 1 and counts["Conv2D"] == n_layers - 1
    assert built.layers[first_conv]["shape"][2] == 3
    assert built.layers[first_conv]["reason"] is None
    if app == "MobileNetV2":
        assert any(n.op == "DepthwiseConv2dNative" for n in built.graph_def.node)

    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, sdrun.SAMPLE_CONFIG, built.outputs, workdir))
    gd, meta = sdrun.read_model(r.out_path, "meta")
    freq = lambda n: 0  # noqa: E731
    ogd = built.meta_graph_def.graph_def
    pruned = tfcheck.check_json(r, built, "meta", ogd, gd, freq)
    assert sorted(pruned) == sorted(built.pruned())
    assert first_conv in pruned
    j = r.json()
    assert j["totals"]["pruned"] == len(built.pruned())
    assert j["totals"]["skipped"] == len(built.skipped())
    assert not any(l["type"] == "DepthwiseConv2dNative" for l in j["layers"])
    tfcheck.check_record(r.record_path, built, pruned, freq)
    tfcheck.check_preserved(ogd, gd, pruned, built.layers)
    tfcheck.check_meta_preserved(built.meta_graph_def, meta, pruned)

    # One real training step with the update op.
    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(r.out_path)
        x = g.get_tensor_by_name(built.keras_input + ":0")
        probs = g.get_tensor_by_name(built.keras_output + ":0")
        labels = tf1.placeholder(tf.int32, [None], name="test_labels")
        picked = tf.gather(probs, labels, axis=1, batch_dims=1)
        loss = -tf.reduce_mean(tf.math.log(picked + 1e-7))
        train_op = tf1.train.GradientDescentOptimizer(0.01).minimize(loss)
        update = g.get_operation_by_name(UPDATE_OP)
        st = tfcheck.state_tensors(g, pruned, built.layers)
        init = tf1.global_variables_initializer()
        assert UPDATE_OP in [o.name for o in tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)]
        trainable = {v.op.name for v in tf1.trainable_variables()}
        assert not any(prefix(p) + "/mask" in trainable for p in pruned)
    rng = np.random.RandomState(0)
    feed = {x: rng.rand(2, size, size, 3).astype(np.float32), labels: np.array([1, 7])}
    try:
        lp = g.get_tensor_by_name("keras_learning_phase:0")
        feed[lp] = True
    except KeyError:
        pass
    with tf1.Session(graph=g) as sess:
        sess.run(init)
        before = sess.run({p: st[p]["w"] for p in pruned})
        fetch = {p: (st[p]["mw"], st[p]["fresh"], st[p]["mvalue"]) for p in pruned}
        _, _, lv, res = sess.run([train_op, update, loss, fetch], feed)
        assert np.isfinite(lv)
        after = sess.run({p: (st[p]["w"], st[p]["mask"], st[p]["step"]) for p in pruned})
    bad = []
    for p in pruned:
        w = before[p]
        exp = ref24.mask24(w, built.layers[p]["axis"])
        try:
            tfcheck.check_step_values(built.layers, p, w, *res[p], exp, "step 0")
        except AssertionError as e:
            bad.append(str(e).splitlines()[0])
            continue
        if after[p][2] != 1:
            bad.append("%s: step after update is %s" % (p, after[p][2]))
        if not np.array_equal(after[p][1], exp):
            bad.append("%s: stored mask after update differs from the mask used" % p)
    assert not bad, "%d of %d layers wrong:\n%s" % (len(bad), len(pruned), "\n".join(bad[:20]))
    moved = sum(int(np.any(after[p][0] != before[p])) for p in pruned)
    assert moved > len(pruned) // 2, "only %d of %d weights changed in the step" % (moved, len(pruned))
