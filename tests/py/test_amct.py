"""sparsityd.tensorflow, the AMCT drop-in, in real TensorFlow.

The heart of the file is the seed's sample code (AMCT's 2:4 workflow) transcribed with
`import sparsityd.tensorflow as amct` as its only change (run_seed_sample below), run end
to end on Keras ResNet50 and on models.py's small conv + deconv + dense model, once with
each backend: the sparsityd binary, and a real daemon (SPARSITYD_URL set, as a user would).
On top of what the sample does, the tests check that:
  - create_prune_retrain_model's in-place graph is the graph TensorFlow gets from the CLI
    path (export_meta_graph -> `sparsityd insert` -> import_meta_graph): same nodes, ops,
    inputs, attrs, same collections;
  - the pruned model runs and gives the frozen masked graph's outputs, every pruned weight
    is 2:4 (ref24), no inserted op is left;
  - binary and daemon give byte-identical in-place graphs, records and exported models.
Then: a Keras mixed_float16 model (weights read through Cast), the forms `outputs` takes,
a bad config (EngineError / JobFailed naming line:col), set_logging_level's file, and the
one-shot prune and check calls.

Run with the package importable (PYTHONPATH=$PWD/python, or installed) and SPARSITYD_BIN.
"""

import contextlib
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import models
import ref24
import sdrun
import workflow
from sdrun import UPDATE_OP, prefix, tname
from workflow import node_map

import sparsityd.tensorflow as amct
from sparsityd.errors import EngineError, JobFailed, SparsitydError

tf1 = tf.compat.v1
# ResNet50's smallest input: two training steps at batch 2 keep the file within minutes.
RESNET_SIZE = 32
BATCH = 2
STEPS = 2
CONFIG = sdrun.SAMPLE_CONFIG


# ---------------------------------------------------------------------------------------
# The user's side of the sample: graphs, loss, data


class User:
    """What the seed's sample leaves to the user ("user_load_train_graph()" ...).

    load(phase) builds the model (phase 1: training graph, batch norm is_training; 0:
    inference graph) and returns (graph, output tensors, input tensor name)."""

    def __init__(self, name, load, input_shape, classes):
        self.name = name
        self.load = load
        self.input_shape = input_shape
        self.classes = classes
        rng = np.random.RandomState(7)
        self.xs = rng.rand(STEPS * BATCH, *input_shape).astype(np.float32)
        self.ys = rng.randint(0, classes, size=STEPS * BATCH).astype(np.int64)
        # models.build_small's inference graph has a fixed batch of 4
        self.test_x = rng.rand(4, *input_shape).astype(np.float32)
        self.built = {}

    def load_graph(self, phase):
        b = self.load(phase)
        self.built[phase] = b
        g = b.graph
        return g, [g.get_tensor_by_name(tname(o)) for o in b.outputs], tname(list(b.inputs)[0])

    def loss(self, graph, logits):
        with graph.as_default():
            labels = tf1.placeholder(tf.int64, [None], name="user_labels")
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits)), labels


def _keras_resnet(phase):
    import tf_keras

    # Keras draws its initializers' seeds from Python's random: fixed, both backends'
    # runs start from the same weights and build byte-identical graphs.
    tf_keras.utils.set_random_seed(1)
    return workflow.build_keras_phase("ResNet50", RESNET_SIZE, 10, phase, seed=1)


def _small(phase):
    return models.build_small("resource", "train" if phase else "infer")


def _mixed(phase):
    """A tf_keras model under the mixed_float16 policy: every layer reads its float32
    weight through a Cast to float16 (conv, conv, transposed conv, dense)."""
    import tf_keras

    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(3)
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        g = tf.Graph()
        with g.as_default():
            tf_keras.backend.set_learning_phase(phase)
            L = tf_keras.layers
            x = L.Input((16, 16, 3), name="image")
            h = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
            h = L.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
            h = L.Conv2DTranspose(8, 3, strides=2, padding="same", name="deconv")(h)
            h = L.GlobalAveragePooling2D(name="pool")(h)
            h = L.Dense(12, name="fc")(h)
            out = L.Activation("linear", dtype="float32", name="logits")(h)
            model = tf_keras.Model(x, out)
            for op in model.updates:
                tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, op)
            layers = models.describe_layers(g, [out.op.name])
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    return models.Built("mixed-phase%d" % phase, g, [out.op.name],
                        {x.op.name: [None, 16, 16, 3]}, layers, [], [])


USERS = {
    "small": lambda: User("small", _small, (8, 8, 3), 7),
    "resnet50": lambda: User("resnet50", _keras_resnet, (RESNET_SIZE, RESNET_SIZE, 3), 10),
    "mixed": lambda: User("mixed", _mixed, (16, 16, 3), 12),
}


# ---------------------------------------------------------------------------------------
# The seed's sample code, with `import amct_tensorflow as amct` replaced


class Run:
    """What one run of the sample left behind, and what the tests observed on the way."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def run_seed_sample(amct, user, root):
    """The sample, step by step (numbers as in the seed). Observation points the sample
    does not have are marked `# test:`. Paths are relative to `root` (the cwd)."""
    seen = Run(root=root, user=user)

    # 1. Import the AMCT package and set the log level.
    amct.set_logging_level(print_level='info', save_level='info')

    # 3. Build a training graph.
    train_graph, user_model_outputs, x_name = user.load_graph(1)
    with train_graph.as_default():  # test: the graph the CLI path starts from
        seen.train_before = tf1.train.export_meta_graph(graph=train_graph)

    # 4.1 Insert the sparsity operator into the training graph.
    record_file = './tmp/record.txt'
    simple_cfg = './retrain.cfg'
    seen.insert_train = amct.create_prune_retrain_model(graph=train_graph,
                                                        outputs=user_model_outputs,
                                                        record_file=record_file,
                                                        config_defination=simple_cfg)
    seen.train_after = train_graph.as_graph_def()  # test
    with train_graph.as_default():
        seen.train_after_meta = tf1.train.export_meta_graph(graph=train_graph)  # test
    seen.record_train = shutil.copy(record_file, "record_train.txt")  # test

    # 4.2.1 Gradient descent on the modified graph (RMSProp with momentum).
    with train_graph.as_default():
        loss, labels = user.loss(train_graph, user_model_outputs[0])
        optimizer = tf.compat.v1.train.RMSPropOptimizer(0.01, momentum=0.9)
        train_op = optimizer.minimize(loss)
        outputs = [train_op, tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS),
                   loss]
        seen.global_variables = [v.op.name for v in tf.compat.v1.global_variables()]  # test
        seen.update_ops = [o.name for o in outputs[1]]  # test
        saver_save = tf.compat.v1.train.Saver()
    retrain_ckpt = './ckpt/retrain'

    # 4.2.2 Train the model and save the trained parameters as a checkpoint file.
    seen.losses = []
    with train_graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for step in range(STEPS):
            batch = slice(step * BATCH, (step + 1) * BATCH)
            _, _, lv = sess.run(outputs, {x_name: user.xs[batch], labels: user.ys[batch]})
            seen.losses.append(float(lv))
        # Save the trained parameters as a checkpoint file.
        retrain_ckpt = saver_save.save(sess, retrain_ckpt, global_step=0)
    seen.ckpt = os.path.abspath(retrain_ckpt)

    # 5. Build an inference graph.
    test_graph, user_model_outputs, x_name = user.load_graph(0)
    eval_graph = test_graph
    with test_graph.as_default():  # test
        seen.test_before = tf1.train.export_meta_graph(graph=test_graph)

    # 6.1 Insert the sparsity operator into the inference graph.
    record_file = './tmp/record.txt'
    simple_cfg = './retrain.cfg'
    seen.insert_test = amct.create_prune_retrain_model(graph=test_graph,
                                                       outputs=user_model_outputs,
                                                       record_file=record_file,
                                                       config_defination=simple_cfg)
    seen.test_after = test_graph.as_graph_def()  # test
    with test_graph.as_default():
        seen.test_after_meta = tf1.train.export_meta_graph(graph=test_graph)  # test

    # 6.2 Restore the checkpoint and freeze the inference graph into a .pb model.
    masked_pb_path = './masked.pb'
    outputs = user_model_outputs
    with test_graph.as_default():
        variables_to_restore = tf.compat.v1.global_variables()
        saver_restore = tf.compat.v1.train.Saver(variables_to_restore)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            # Restore training parameters.
            saver_restore.restore(sess, retrain_ckpt)
            # Save the model as a .pb model.
            constant_graph = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, eval_graph.as_graph_def(), [output.name[:-2] for output in outputs])
            with tf.io.gfile.GFile(masked_pb_path, 'wb') as f:
                f.write(constant_graph.SerializeToString())

    # 6.3 Save the model, delete the inserted operators, and implement sparsity.
    pruned_model_path = './result/user_model'
    seen.pruned_pb = amct.save_prune_retrain_model(pb_model=masked_pb_path,
                                                   outputs=user_model_outputs,
                                                   record_file=record_file,
                                                   save_path=pruned_model_path)

    # 7. Inference on the pruned model (here: and on the masked one, to compare).
    seen.outputs = [o.op.name for o in user_model_outputs]
    seen.x_name = x_name
    seen.masked_pb = os.path.abspath(masked_pb_path)
    seen.pruned_pb = os.path.abspath(seen.pruned_pb)
    seen.record = os.path.abspath(record_file)
    seen.record_train = os.path.abspath(seen.record_train)
    seen.log_file = os.path.abspath("amct_log/amct_tensorflow.log")
    return seen


@contextlib.contextmanager
def backend_env(backend, daemon_url):
    """The daemon backend the way a user gets it: SPARSITYD_URL in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        if backend == "daemon":
            mp.setenv("SPARSITYD_URL", daemon_url)
        else:
            mp.delenv("SPARSITYD_URL", raising=False)
        yield


@contextlib.contextmanager
def quiet_amct_logger():
    """Restores the logger after a sample run (set_logging_level installs handlers)."""
    log = logging.getLogger("sparsityd.tensorflow")
    saved = (list(log.handlers), log.level, log.propagate)
    try:
        yield
    finally:
        for h in list(log.handlers):
            if h not in saved[0]:
                log.removeHandler(h)
                h.close()
        log.setLevel(saved[1])
        log.propagate = saved[2]


@pytest.fixture(scope="module")
def sample_runs(sparsityd, d, tmp_path_factory):
    """Runs the sample once per (model, backend) on first use."""
    os.environ["SPARSITYD_BIN"] = sparsityd
    cache = {}

    def get(model, backend):
        key = (model, backend)
        if key not in cache:
            root = str(tmp_path_factory.mktemp("%s-%s" % key))
            with open(os.path.join(root, "retrain.cfg"), "w") as f:
                f.write(CONFIG)
            with backend_env(backend, d.url), pytest.MonkeyPatch.context() as mp, \
                    quiet_amct_logger():
                mp.chdir(root)
                cache[key] = run_seed_sample(amct, USERS[model](), root)
        return cache[key]

    return get


# ---------------------------------------------------------------------------------------
# Checks


def trace_weight_const(nodes, input_name):
    """The Const a layer's weight input reads, through Identity and Cast (mixed
    precision); None when it is not a constant."""
    n = nodes.get(workflow.clean(input_name))
    while n is not None and n.op in ("Identity", "Cast"):
        n = nodes.get(workflow.clean(n.input[0]))
    return n if n is not None and n.op == "Const" else None


def pruned_names(result):
    return sorted(l["name"] for l in result["layers"] if l["action"] == "pruned")


def check_run(run):
    """Everything one run of the sample must have produced."""
    user = run.user
    layers = user.built[0].layers
    expected = sorted(n for n, l in layers.items() if l["reason"] is None)
    if user.name != "mixed":  # describe_layers calls Cast-read weights not_constant
        assert pruned_names(run.insert_test) == expected
    pruned = pruned_names(run.insert_test)
    assert pruned and pruned == pruned_names(run.insert_train)

    # after the training insert: the variables and the update op are where TF looks
    for p in pruned:
        assert prefix(p) + "/mask" in run.global_variables, p
        assert prefix(p) + "/step" in run.global_variables, p
    assert UPDATE_OP in run.update_ops
    assert all(np.isfinite(run.losses)), run.losses

    # the checkpoint holds the masks and steps, each step advanced once per training step
    reader = tf.train.load_checkpoint(run.ckpt)
    for p in pruned:
        assert int(reader.get_tensor(prefix(p) + "/step")) == STEPS, p

    # the record lists exactly the pruned layers
    _, _, order = sdrun.read_record(run.record)
    assert sorted(order) == pruned

    # the pruned model: no inserted op, 2:4 weights, the masked graph's outputs
    out_gd = workflow.read_pb(run.pruned_pb)
    assert not [n.name for n in out_gd.node if workflow.is_inserted_name(n.name)]
    nodes = node_map(out_gd)
    for p in pruned:
        c = trace_weight_const(nodes, nodes[p].input[1])
        assert c is not None, "layer %s: weight is not a Const" % p
        assert ref24.is_2of4(workflow.const_value(c), layers[p]["axis"]), (
            "layer %s: weight is not 2:4" % p)
    masked_gd = workflow.read_pb(run.masked_pb)
    assert [n.name for n in masked_gd.node if workflow.is_inserted_name(n.name)]
    feed = {run.x_name: user.test_x}
    got = workflow.run_graph_def(out_gd, run.outputs, feed)
    want = workflow.run_graph_def(masked_gd, run.outputs, feed)
    workflow.compare_outputs(got, want, run.outputs, rel=1e-5)

    # the log file (set_logging_level('info', 'info')) has the per-layer table
    with open(run.log_file) as f:
        log = f.read()
    for p in pruned:
        assert p in log, "layer %s missing from %s" % (p, run.log_file)
    assert "sparsityd export" in log


def without_output_shapes(node):
    n = type(node).FromString(node.SerializeToString())
    if "_output_shapes" in n.attr:
        del n.attr["_output_shapes"]
    return n


def check_same_as_cli(sparsityd, workdir, before_meta, after_gd, after_meta, outputs):
    """The in-place graph vs the CLI path on the same MetaGraphDef: `sparsityd insert`,
    then TensorFlow's import_meta_graph. Compared: the node set, each node (op, inputs,
    device, attrs), and every collection.

    Normalised, and only this: `_output_shapes`, which export_meta_graph adds to every
    node of the CLI path's input (the live nodes never carry it). The engine's own
    output is compared after TensorFlow's import, which fills in attrs left at their
    op default (e.g. VarHandleOp's debug_name): both sides get them the same way."""
    os.makedirs(workdir)
    path = os.path.join(workdir, "before.meta")
    with open(path, "wb") as f:
        f.write(before_meta.SerializeToString())
    r = sdrun.insert(sparsityd, path, CONFIG, outputs, os.path.join(workdir, "cli"))
    sdrun.assert_ok(r)
    cli_gd, cli_meta = sdrun.read_model(r.out_path, "meta")
    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(r.out_path)
    imported = node_map(g.as_graph_def())
    got = node_map(after_gd)
    assert set(got) == {n.name for n in cli_gd.node}, (
        "node sets differ: only in place %s, only CLI %s" % (
            sorted(set(got) - {n.name for n in cli_gd.node})[:10],
            sorted({n.name for n in cli_gd.node} - set(got))[:10]))
    for name, node in got.items():
        a, b = without_output_shapes(node), without_output_shapes(imported[name])
        assert a == b, "node %s differs:\nin place:\n%s\nCLI path:\n%s" % (name, a, b)
    assert set(after_meta.collection_def) == set(cli_meta.collection_def)
    for key, col in cli_meta.collection_def.items():
        assert after_meta.collection_def[key] == col, "collection %s differs" % key


MODELS = ["small", "resnet50"]
BACKENDS = ["binary", "daemon"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_seed_sample(sample_runs, model, backend):
    check_run(sample_runs(model, backend))


@pytest.mark.parametrize("model", MODELS + ["mixed"])
def test_in_place_graph_is_the_cli_path(sample_runs, sparsityd, workdir, model):
    """For mixed, insert also rewires each Cast (an existing node) to the masked weight."""
    run = sample_runs(model, "binary")
    check_same_as_cli(sparsityd, os.path.join(workdir, "train"), run.train_before,
                      run.train_after, run.train_after_meta, run.outputs)
    check_same_as_cli(sparsityd, os.path.join(workdir, "test"), run.test_before,
                      run.test_after, run.test_after_meta, run.outputs)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("model", MODELS)
def test_backends_byte_identical(sample_runs, d, workdir, model):
    b, dm = sample_runs(model, "binary"), sample_runs(model, "daemon")
    for what in ("train_after", "test_after"):
        assert getattr(b, what).SerializeToString(deterministic=True) == \
            getattr(dm, what).SerializeToString(deterministic=True), what
    assert read_bytes(b.record_train) == read_bytes(dm.record_train)
    assert read_bytes(b.record) == read_bytes(dm.record)
    # The two runs trained separately: export each one's masked model with the other
    # backend too, and compare with what its own backend exported.
    for run, other in ((b, "daemon"), (dm, "binary")):
        with backend_env(other, d.url):
            path = amct.save_prune_retrain_model(run.masked_pb, run.outputs, run.record,
                                                 os.path.join(workdir, other, run.user.name))
        assert read_bytes(path) == read_bytes(run.pruned_pb), "export via %s differs" % other


def test_mixed_float16(sample_runs):
    """Keras mixed precision: float32 variables read through Cast to float16. Needs the
    engine to prune through the Cast (insert masks the float32 value before it)."""
    run = sample_runs("mixed", "binary")
    by = {l["name"]: l for l in run.insert_test["layers"]}
    convs = [n for n, l in by.items() if l["type"] in ("Conv2D", "Conv2DBackpropInput")]
    assert {"conv2/Conv2D", "deconv/conv2d_transpose"} <= set(convs), sorted(by)
    not_pruned = {n: (by[n]["action"], by[n]["reason"]) for n in convs
                  if by[n]["action"] != "pruned" and by[n]["reason"] != "axis_too_short"}
    assert not not_pruned, "convolutions not pruned: %s" % not_pruned
    assert by["fc/MatMul"]["action"] == "pruned", by["fc/MatMul"]
    check_run(run)


# ---------------------------------------------------------------------------------------
# Arguments


def _small_graph():
    return models.build_small("resource", "train").graph


def test_outputs_forms(sparsityd, workdir, monkeypatch):
    """Node names, name:0 tensor names, tf.Tensor, tf.Operation and lists mixing them
    all mean the same outputs: same graph, same record."""
    monkeypatch.setenv("SPARSITYD_BIN", sparsityd)
    monkeypatch.delenv("SPARSITYD_URL", raising=False)
    cfg = os.path.join(workdir, "c.cfg")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    forms = {
        "name": lambda g: "logits",
        "tensor_name": lambda g: ["logits:0"],
        "tensor": lambda g: g.get_tensor_by_name("logits:0"),
        "operation": lambda g: [g.get_operation_by_name("logits")],
        "mixed": lambda g: ["logits:0", g.get_operation_by_name("logits"), "logits"],
    }
    seen = {}
    for form, make in forms.items():
        g = _small_graph()
        rec = os.path.join(workdir, form, "record.txt")
        res = amct.create_prune_retrain_model(g, make(g), rec, cfg)
        assert res["outputs"] == ["logits"], (form, res["outputs"])
        seen[form] = (g.as_graph_def().SerializeToString(deterministic=True), read_bytes(rec))
    assert len(set(seen.values())) == 1, "outputs forms gave different results"

    g = _small_graph()
    before = g.as_graph_def()
    other = _small_graph()
    for bad, what in ((["nope"], "not a node"), ("logits:x", "name:N"), ("^logits", "name:N"),
                      ([], "empty"), ([3], "not a name"),
                      (other.get_tensor_by_name("logits:0"), "another graph")):
        with pytest.raises(SparsitydError, match=what):
            amct.create_prune_retrain_model(g, bad, os.path.join(workdir, "bad.txt"), cfg)
    assert g.as_graph_def() == before
    assert not os.path.exists(os.path.join(workdir, "bad.txt"))


BAD_CONFIG = ("prune_config {\n"
              "  n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } }\n"
              "  no_such_field: 1\n"
              "}\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_config_names_line_and_column(sparsityd, d, workdir, backend, monkeypatch):
    monkeypatch.setenv("SPARSITYD_BIN", sparsityd)
    cfg = os.path.join(workdir, "bad.cfg")
    with open(cfg, "w") as f:
        f.write(BAD_CONFIG)
    g = _small_graph()
    before = g.as_graph_def()
    rec = os.path.join(workdir, "out", "record.txt")
    with backend_env(backend, d.url):
        with pytest.raises((EngineError, JobFailed)) as err:
            amct.create_prune_retrain_model(g, "logits", rec, cfg)
    e = err.value
    assert isinstance(e, EngineError if backend == "binary" else JobFailed), type(e)
    assert (e.line, e.column) == (3, 3), (e.line, e.column, str(e))
    assert "no_such_field" in str(e)
    # nothing changed, nothing written, no temporary directory left behind
    assert g.as_graph_def() == before
    assert os.listdir(os.path.dirname(rec)) == []


def test_set_logging_level_writes_the_file(sparsityd, workdir, monkeypatch, capfd):
    monkeypatch.setenv("SPARSITYD_BIN", sparsityd)
    monkeypatch.delenv("SPARSITYD_URL", raising=False)
    monkeypatch.chdir(workdir)
    with open("c.cfg", "w") as f:
        f.write(CONFIG)
    with quiet_amct_logger():
        with pytest.raises(SparsitydError, match="print_level"):
            amct.set_logging_level(print_level="verbose", save_level="info")
        path = amct.set_logging_level(print_level="ERROR", save_level="Debug")
        assert path == os.path.join(workdir, "amct_log", "amct_tensorflow.log")
        capfd.readouterr()
        amct.create_prune_retrain_model(_small_graph(), "logits", "rec.txt", "c.cfg")
        printed = capfd.readouterr().err
        with open(path) as f:
            saved = f.read()
        # debug and info lines in the file, nothing printed at level error
        assert "DEBUG sparsityd.tensorflow: running " in saved
        assert "INFO sparsityd.tensorflow: dense1/MatMul " in saved
        assert "sparsityd.tensorflow" not in printed, printed
        # a second call starts the file again, and now prints info lines
        amct.set_logging_level(print_level="info", save_level="warning")
        amct.create_prune_retrain_model(_small_graph(), "logits", "rec.txt", "c.cfg")
        printed = capfd.readouterr().err
        with open(path) as f:
            assert f.read() == ""
        assert "INFO sparsityd.tensorflow: dense1/MatMul " in printed


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_and_check(sparsityd, d, workdir, backend, monkeypatch):
    monkeypatch.setenv("SPARSITYD_BIN", sparsityd)
    built = models.build_small("resource", "infer")
    frozen = workflow.freeze_random(built, os.path.join(workdir, "frozen.pb"))
    cfg = os.path.join(workdir, "c.cfg")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    with backend_env(backend, d.url):
        before = amct.check(frozen, ["logits"])
        res = amct.prune(frozen, built.outputs, cfg, os.path.join(workdir, "out", "small"),
                         record_file=os.path.join(workdir, "rec", "prune.txt"))
        after = amct.check(os.path.join(workdir, "out", "small_pruned.pb"))
    assert before["stage"] == "check" and res["stage"] == "prune" and after["stage"] == "check"
    pruned = pruned_names(res)
    assert pruned == sorted(built.pruned())
    assert not all(l["is_2of4"] for l in before["layers"] if l["name"] in pruned)
    by = {l["name"]: l for l in after["layers"]}
    assert all(by[p]["is_2of4"] for p in pruned), by
    _, _, order = sdrun.read_record(os.path.join(workdir, "rec", "prune.txt"))
    assert sorted(order) == pruned


def test_saver_built_before_insert_is_named(sparsityd, workdir, monkeypatch, caplog):
    """A Saver made before the insert cannot know the new variables: the call says so."""
    monkeypatch.setenv("SPARSITYD_BIN", sparsityd)
    monkeypatch.delenv("SPARSITYD_URL", raising=False)
    cfg = os.path.join(workdir, "c.cfg")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    g = _small_graph()
    with g.as_default():
        tf1.train.Saver()
    with caplog.at_level(logging.WARNING, logger="sparsityd.tensorflow"):
        amct.create_prune_retrain_model(g, "logits", os.path.join(workdir, "r.txt"), cfg)
    assert any("already holds a Saver (save/SaveV2)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparsityd.tensorflow"):
        amct.create_prune_retrain_model(_small_graph(), "logits",
                                        os.path.join(workdir, "r2.txt"), cfg)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
