"""The seed's AMCT workflow in real TensorFlow, and runners for export / prune / check.

insert (training graph) -> train with sparsityd/update -> checkpoint -> insert (inference
graph, same config) -> restore -> freeze with convert_variables_to_constants -> export.

Alongside, the ORIGINAL inference graph (no insert) is restored from the same checkpoint
(only its own variables) and frozen the same way: the exported graph must have exactly its
node names.

Builders here are variants of models.py (which belongs to the insert tests and is reused
as is): tf_keras applications with a fixed learning phase (1 = training graph, batch norm
is_training; 0 = inference graph), so both builds share every layer and variable name.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
import sdrun  # noqa: E402
from sdrun import UPDATE_OP, prefix, tname  # noqa: E402

tf1 = tf.compat.v1


# ---------------------------------------------------------------------------------------
# Runners for the new stages


def _run(binary, args):
    proc, argv = sdrun.run(binary, args)
    return sdrun.Result(argv, proc, None, None)


def export(binary, model, record, outputs, out, as_json=True, extra=()):
    args = ["export", "--model", model, "--record", record, "--outputs", ",".join(outputs),
            "-o", out]
    if as_json:
        args.append("--json")
    args += list(extra)
    r = _run(binary, args)
    r.out_path = out
    r.record_path = record
    return r


def prune(binary, model, config_text, outputs, workdir, tag="pruned", record=False,
          as_json=True, extra=()):
    os.makedirs(workdir, exist_ok=True)
    cfg = os.path.join(workdir, tag + ".cfg")
    with open(cfg, "w") as f:
        f.write(config_text)
    out = os.path.join(workdir, tag + ".pb")
    args = ["prune", "--model", model, "--config", cfg, "--outputs", ",".join(outputs), "-o", out]
    rec = None
    if record:
        rec = os.path.join(workdir, tag + ".record.txt")
        args += ["--record", rec]
    if as_json:
        args.append("--json")
    args += list(extra)
    r = _run(binary, args)
    r.out_path = out
    r.record_path = rec
    r.config_path = cfg
    return r


def check(binary, model, outputs=None, as_json=True, extra=()):
    args = ["check", "--model", model]
    if outputs:
        args += ["--outputs", ",".join(outputs)]
    if as_json:
        args.append("--json")
    args += list(extra)
    return _run(binary, args)


def ok(r, what):
    assert r.rc == 0, "%s failed\n%s" % (what, r.describe())
    return r


# ---------------------------------------------------------------------------------------
# GraphDef helpers


def read_pb(path):
    gd = tf1.GraphDef()
    with open(path, "rb") as f:
        gd.ParseFromString(f.read())
    return gd


def write_pb(gd, path):
    with open(path, "wb") as f:
        f.write(gd.SerializeToString())
    return path


def node_map(gd):
    return {n.name: n for n in gd.node}


def clean(name):
    return name.lstrip("^").split(":")[0]


def trace_const(gd_nodes, input_name):
    """Follows Identity nodes from a tensor name to a Const; returns the Const node or None."""
    n = gd_nodes.get(clean(input_name))
    while n is not None and n.op == "Identity":
        n = gd_nodes.get(clean(n.input[0]))
    return n if n is not None and n.op == "Const" else None


def const_value(node):
    return tf.make_ndarray(node.attr["value"].tensor)


def bits(a):
    """A view of a float array as unsigned integers (bit patterns; catches the sign of zero)."""
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64, 2: np.uint16}[a.dtype.itemsize])


def bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bits(a), bits(b))


def is_inserted_name(name):
    return "/sparsityd/" in name or name.startswith("sparsityd/") or name.endswith("/sparsityd")


def run_graph_def(gd, fetches, feed):
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
    with tf1.Session(graph=g) as sess:
        return sess.run([tname(f) for f in fetches], {tname(k): v for k, v in feed.items()})


def random_feed(inputs, batch, seed):
    rng = np.random.RandomState(seed)
    return {name: rng.randn(*[batch if d is None else d for d in shape]).astype(np.float32)
            for name, shape in inputs.items()}


def compare_outputs(got, want, names, rel=1e-6):
    """Exactly equal, or within `rel` relative to the largest |value| of each output.

    Returns a printable note per output (printed by the caller; -s shows it)."""
    notes = []
    for name, a, b in zip(names, got, want):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        assert np.all(np.isfinite(b)), "%s: reference output not finite" % name
        if np.array_equal(a, b):
            notes.append("%s: exactly equal" % name)
            continue
        scale = float(np.max(np.abs(b))) or 1.0
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        notes.append("%s: NOT exactly equal, max |diff| %.3g (%.3g relative)" % (
            name, diff, diff / scale))
        assert diff <= rel * scale, "%s: outputs differ by %.3g (relative %.3g > %g)" % (
            name, diff, diff / scale, rel)
    print("\n".join(notes))
    return notes


# ---------------------------------------------------------------------------------------
# tf_keras applications with a fixed learning phase


def build_keras_phase(app, size, classes, phase, logits=True, seed=None):
    """A tf_keras application built in graph mode with learning phase `phase` (0/1).

    Training builds (phase 1) put the batch-norm moving-average updates into the TF1
    update_ops collection (where sparsityd/update joins them after insert).
    Returns a models.Built with extra attributes keras_input / keras_output."""
    import tf_keras

    tf_keras.backend.clear_session()
    g = tf.Graph()
    with g.as_default():
        if seed is not None:
            tf1.set_random_seed(seed)
        tf_keras.backend.set_learning_phase(phase)
        kwargs = dict(weights=None, input_shape=(size, size, 3), classes=classes)
        if logits:
            kwargs["classifier_activation"] = None
        model = getattr(tf_keras.applications, app)(**kwargs)
        for op in model.updates:
            tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, op if isinstance(op, tf.Operation)
                                  else op.op)
        out = model.outputs[0].op.name
        inp = model.inputs[0].op.name
        layers = models.describe_layers(g, [out])
        variables = [v.op.name for v in tf1.global_variables()]
    b = models.Built("%s-%d-phase%d" % (app, size, phase), g, [out], {inp: [None, size, size, 3]},
                     layers, [], variables)
    b.keras_input = inp
    b.keras_output = out
    return b


def freeze_random(built, path, seed=0):
    """Initialises a built (variable) graph at random and freezes it to `path`."""
    g = built.graph
    with g.as_default():
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=g) as sess:
        sess.run(init)
        frozen = tf1.graph_util.convert_variables_to_constants(sess, built.graph_def,
                                                                list(built.outputs))
    return write_pb(frozen, path)


# ---------------------------------------------------------------------------------------
# The workflow


class Workflow:
    """Everything the export tests need, produced once per (model, variant, update_freq)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _freeze_from_ckpt(meta_path, ckpt, outputs, out_path):
    """Imports a MetaGraphDef, restores all its global variables from ckpt, freezes."""
    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(meta_path)
        var_list = tf1.global_variables()
        saver = tf1.train.Saver(var_list=var_list)
    with tf1.Session(graph=g) as sess:
        saver.restore(sess, ckpt)
        frozen = tf1.graph_util.convert_variables_to_constants(
            sess, g.as_graph_def(), [clean(o) for o in outputs])
    write_pb(frozen, out_path)
    return frozen, sorted(v.op.name for v in var_list)


def run_workflow(binary, root, train_meta, built_train, infer_meta, built_infer, freq, steps,
                 save_at, make_loss, make_feed, optimizer="rmsprop", lr=0.01):
    """Runs the seed's workflow.

    make_loss(graph, output_tensor) -> (loss tensor, {placeholder name: role}),
    make_feed(step) -> {tensor name: value} for a training step.
    save_at: steps counts (number of completed training steps) at which to save a checkpoint.
    Returns a Workflow with, per saved step s: ckpt[s], masked[s] (frozen masked .pb),
    plain[s] (original inference graph frozen from the same checkpoint)."""
    os.makedirs(root, exist_ok=True)
    config = sdrun.config_text(freq)
    outputs = list(built_train.outputs)

    # 1. insert into the training graph
    r1 = sdrun.insert(binary, train_meta, config, outputs, os.path.join(root, "train"), tag="train")
    ok(r1, "insert (training graph)")
    train_pruned = [l["name"] for l in r1.json()["layers"] if l["action"] == "pruned"]

    # 2. train, running sparsityd/update (via update_ops) with every step, save checkpoints
    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(r1.out_path)
        out_t = g.get_tensor_by_name(tname(outputs[0]))
        loss = make_loss(g, out_t)
        if optimizer == "gd":
            opt = tf1.train.GradientDescentOptimizer(lr)
        else:
            opt = tf1.train.RMSPropOptimizer(lr, momentum=0.9)
        train_op = opt.minimize(loss)
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        assert UPDATE_OP in [o.name for o in update_ops], "sparsityd/update not in update_ops"
        init = tf1.global_variables_initializer()
        saver = tf1.train.Saver(max_to_keep=None)
    ckpts = {}
    losses = []
    with g.as_default(), tf1.Session(graph=g) as sess:
        sess.run(init)
        for step in range(max(save_at)):
            _, _, lv = sess.run([train_op, update_ops, loss], make_feed(step))
            losses.append(float(lv))
            if step + 1 in save_at:
                ckpts[step + 1] = saver.save(sess, os.path.join(root, "ckpt", "model"),
                                             global_step=step + 1)
    assert all(np.isfinite(losses)), losses

    # 3. insert into the inference graph with the same config (record R2)
    r2 = sdrun.insert(binary, infer_meta, config, list(built_infer.outputs),
                      os.path.join(root, "infer"), tag="infer")
    ok(r2, "insert (inference graph)")
    pruned = [l["name"] for l in r2.json()["layers"] if l["action"] == "pruned"]
    assert sorted(pruned) == sorted(train_pruned), (pruned, train_pruned)

    # 4. restore and freeze (masked), and the original inference graph frozen the same way
    masked, plain = {}, {}
    plain_vars = None
    for s, ck in ckpts.items():
        masked[s] = os.path.join(root, "masked-%d.pb" % s)
        _freeze_from_ckpt(r2.out_path, ck, built_infer.outputs, masked[s])
        plain[s] = os.path.join(root, "plain-%d.pb" % s)
        _, plain_vars = _freeze_from_ckpt(infer_meta, ck, built_infer.outputs, plain[s])
    return Workflow(root=root, config=config, freq=freq, steps=steps, outputs=outputs,
                    built_train=built_train, built_infer=built_infer, insert_train=r1,
                    insert_infer=r2, record=r2.record_path, record_train=r1.record_path,
                    pruned=pruned, ckpt=ckpts, masked=masked, plain=plain, losses=losses,
                    plain_vars=plain_vars)


# Small model (models.build_small: conv Cin 3 and 6, deconv, Cin 4, Cin 2 skipped, MatMul
# transpose_b false and true).

def classification_loss(g, out):
    """Softmax cross-entropy against int64 labels fed as "test_labels:0"."""
    with g.as_default():
        y = tf1.placeholder(tf.int64, [None], name="test_labels")
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=out))


def small_workflow(binary, model_cache, root, variant, freq, save_at=(20,)):
    train_meta, bt = model_cache.file("meta", "small", variant, "train")
    infer_meta, bi = model_cache.file("meta", "small", variant, "infer")
    rng = np.random.RandomState(11)
    xs = rng.randn(16, 8, 8, 3).astype(np.float32)
    ys = rng.randn(16, 7).astype(np.float32)

    def make_loss(g, out):
        with g.as_default():
            y = tf1.placeholder(tf.float32, [None, 7], name="test_y")
            return tf.reduce_mean(tf.square(out - y))

    def make_feed(step):
        i = (step * 8) % 16
        return {"x:0": xs[i:i + 8], "test_y:0": ys[i:i + 8]}

    return run_workflow(binary, root, train_meta, bt, infer_meta, bi, freq, max(save_at), save_at,
                        make_loss, make_feed, optimizer="rmsprop", lr=0.02)


def keras_workflow(binary, root, app="ResNet50", size=64, classes=10, freq=0, steps=20,
                   batch=2):
    bt = build_keras_phase(app, size, classes, 1)
    train_meta = models.write_model(bt, os.path.join(root, "model_train"), "meta")
    bi = build_keras_phase(app, size, classes, 0)
    infer_meta = models.write_model(bi, os.path.join(root, "model_infer"), "meta")
    assert set(bt.layers) == set(bi.layers)
    rng = np.random.RandomState(5)
    xs = rng.rand(4 * batch, size, size, 3).astype(np.float32)
    ys = rng.randint(0, classes, size=4 * batch).astype(np.int64)
    inp = tname(bt.keras_input)

    def make_feed(step):
        i = (step * batch) % len(xs)
        return {inp: xs[i:i + batch], "test_labels:0": ys[i:i + batch]}

    return run_workflow(binary, root, train_meta, bt, infer_meta, bi, freq, steps, (steps,),
                        classification_loss, make_feed, optimizer="gd", lr=0.01)


# ---------------------------------------------------------------------------------------
# What export must produce


def refresh(step, freq):
    return step == 0 if freq == 0 else step % freq == 0


def expected_from_ckpt(ckpt, layers, pruned, freq, mask_fn):
    """{layer: (weight, mask, step, weight * mask)} from the checkpoint (SPEC 6, 8)."""
    reader = tf.train.load_checkpoint(ckpt)
    exp = {}
    for p in pruned:
        w = reader.get_tensor(layers[p]["weight"])
        stored = reader.get_tensor(prefix(p) + "/mask")
        step = int(reader.get_tensor(prefix(p) + "/step"))
        mask = mask_fn(w, layers[p]["axis"]) if refresh(step, freq) else stored
        exp[p] = dict(w=w, stored=stored, step=step, mask=mask,
                      fresh=mask_fn(w, layers[p]["axis"]),
                      masked=(w * mask.astype(w.dtype)).astype(w.dtype))
    return exp
