"""`sparsityd insert` and the Saver a MetaGraphDef carries (saver_def), against real TensorFlow.

import_meta_graph rebuilds the model's Saver from saver_def; insert extends that Saver's
save and restore sub-graph so it also saves and restores every `<layer>/sparsityd/mask` and
`.../step`. A checkpoint taken with it then restores into a fresh import and into the
inserted inference graph with the same masks and steps. A saver layout insert does not
extend (here a V1 saver) leaves the saver as it was and says so in the result.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import models
import sdrun
import tfcheck
from sdrun import UPDATE_OP, prefix, read_var_tensor

tf1 = tf.compat.v1

STEPS = 3


def saver_model(mode, workdir, **saver_kw):
    """The small model (resource variables) with a tf.compat.v1.train.Saver, exported as
    export_meta_graph writes it. Returns (path, Built, MetaGraphDef)."""
    built = models.build_small("resource", mode)
    with built.graph.as_default():
        saver = tf1.train.Saver(**saver_kw)
        meta = tf1.train.export_meta_graph(graph=built.graph, saver_def=saver.as_saver_def())
    path = os.path.join(workdir, "%s-%s.meta" % (mode, "-".join(sorted(saver_kw)) or "default"))
    with open(path, "wb") as f:
        f.write(meta.SerializeToString())
    return path, built, meta


def sparsityd_vars(pruned):
    return sorted(prefix(p) + "/" + v for p in pruned for v in ("mask", "step"))


def insert(sparsityd, path, built, workdir, tag):
    r = sdrun.assert_ok(sdrun.insert(sparsityd, path, sdrun.SAMPLE_CONFIG, built.outputs,
                                     workdir, tag=tag))
    pruned = [l["name"] for l in r.json()["layers"] if l["action"] == "pruned"]
    assert pruned, r.describe()
    return r, pruned


def read_state(graph, sess, names):
    """{variable name: value} read through fresh ReadVariableOps."""
    ts = {n: read_var_tensor(graph, n, tf.int64 if n.endswith("/step") else tf.float32)
          for n in names}
    return sess.run(ts)


def assert_same_state(got, want, where):
    assert sorted(got) == sorted(want), where
    for n in want:
        assert np.array_equal(got[n], want[n]), "%s: %s differs" % (where, n)


@pytest.mark.parametrize("sharded", [False, True], ids=["default", "sharded"])
def test_saver_covers_sparsityd_variables(sparsityd, workdir, sharded):
    kw = {"sharded": True} if sharded else {}
    train_path, bt, train_meta = saver_model("train", workdir, **kw)
    infer_path, bi, _ = saver_model("infer", workdir, **kw)
    rt, pruned = insert(sparsityd, train_path, bt, workdir, "train")
    ri, pruned_i = insert(sparsityd, infer_path, bi, workdir, "infer")
    assert sorted(pruned) == sorted(pruned_i)
    for r in (rt, ri):
        assert "warnings" not in r.json(), r.json().get("warnings")
    names = sparsityd_vars(pruned)
    _, out_meta = sdrun.read_model(rt.out_path, "meta")
    tfcheck.check_meta_preserved(train_meta, out_meta, pruned)

    # Train with the update op so masks and steps leave their initial values, then save
    # with the Saver import_meta_graph rebuilt from saver_def.
    g = tf.Graph()
    with g.as_default():
        saver = tf1.train.import_meta_graph(rt.out_path)
        assert saver is not None
        y = tf1.placeholder(tf.float32, [None, models.SMALL_OUT], name="test_y")
        loss = tf.reduce_mean(tf.square(g.get_tensor_by_name("logits:0") - y))
        train_op = tf1.train.GradientDescentOptimizer(0.05).minimize(loss)
        update = g.get_operation_by_name(UPDATE_OP)
        init = tf1.global_variables_initializer()
    rng = np.random.RandomState(3)
    feed = {"x:0": rng.randn(8, 8, 8, 3).astype(np.float32),
            "test_y:0": rng.randn(8, models.SMALL_OUT).astype(np.float32)}
    for d in ("ckpt", "ckpt_after"):
        os.makedirs(os.path.join(workdir, d))  # a sharded save needs the directory
    with tf1.Session(graph=g) as sess:
        sess.run(init)
        for _ in range(STEPS):
            sess.run([train_op, update], feed)
        trained = read_state(g, sess, names)
        ckpt = saver.save(sess, os.path.join(workdir, "ckpt", "model"))
        with g.as_default():
            after = tf1.train.Saver()
        ckpt_after = after.save(sess, os.path.join(workdir, "ckpt_after", "model"))
    for n in names:
        if n.endswith("/step"):
            assert trained[n] == STEPS, (n, trained[n])
        else:
            assert not np.all(trained[n] == 1), "%s still all ones after training" % n

    saved = {name for name, _ in tf.train.list_variables(ckpt)}
    assert set(names) <= saved, sorted(set(names) - saved)
    assert set(bt.variables) <= saved, sorted(set(bt.variables) - saved)
    saved_after = {name for name, _ in tf.train.list_variables(ckpt_after)}
    assert set(names) <= saved_after, sorted(set(names) - saved_after)

    # Restore into a fresh import of the same output, and into the inference graph, each
    # with the Saver its own saver_def gives: no initializer runs, so a variable the
    # restore missed would fail to read.
    for path, where in ((rt.out_path, "fresh training import"), (ri.out_path, "inference")):
        g2 = tf.Graph()
        with g2.as_default():
            s2 = tf1.train.import_meta_graph(path)
        with tf1.Session(graph=g2) as sess:
            s2.restore(sess, ckpt)
            assert_same_state(read_state(g2, sess, names), trained, where)


def test_unrecognised_saver_is_left_with_a_warning(sparsityd, workdir):
    """A V1 saver: insert succeeds, says why the saver is as it was, and a Saver built
    after import still covers the sparsityd variables."""
    path, built, meta = saver_model("train", workdir, write_version=tf1.train.SaverDef.V1)
    r, pruned = insert(sparsityd, path, built, workdir, "v1")
    warnings = r.json().get("warnings")
    assert warnings and len(warnings) == 1, r.describe()
    assert "save/restore_all" in warnings[0] and "V1" in warnings[0], warnings
    out_gd, out_meta = sdrun.read_model(r.out_path, "meta")
    tfcheck.check_meta_preserved(meta, out_meta, pruned)
    before = {n.name: n for n in meta.graph_def.node if n.name.startswith("save/")}
    after = {n.name: n for n in out_gd.node if n.name.startswith("save/")}
    assert before == after, "the V1 saver's nodes changed"

    table = sdrun.assert_ok(sdrun.insert(sparsityd, path, sdrun.SAMPLE_CONFIG, built.outputs,
                                         workdir, tag="v1-table", as_json=False))
    assert "warning: " + warnings[0] in table.stdout, table.describe()

    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(r.out_path)
        init = tf1.global_variables_initializer()
        saver = tf1.train.Saver()
    os.makedirs(os.path.join(workdir, "ckpt"))
    with tf1.Session(graph=g) as sess:
        sess.run(init)
        ckpt = saver.save(sess, os.path.join(workdir, "ckpt", "model"))
    saved = {name for name, _ in tf.train.list_variables(ckpt)}
    assert set(sparsityd_vars(pruned)) <= saved
