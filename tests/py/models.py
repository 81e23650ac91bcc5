"""TF1-style test graphs for the sparsityd insert tests.

Every builder returns a `Built`: the GraphDef, the MetaGraphDef (with collections, as
tf.compat.v1.train.export_meta_graph writes it) and what the tests expect of it: the layers
with weight source, weight input, shape, prune axis and expected skip reason (None = pruned).

Layer names are given explicitly (raw ops), so a training-mode and an inference-mode build of
the same model share every layer and variable name, as in the AMCT workflow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import collections  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1

LAYER_OPS = ("Conv2D", "MatMul", "Conv2DBackpropInput")

# Small model shapes.
SMALL_IN = (8, 8, 3)
SMALL_OUT = 7


class Built:
    def __init__(self, name, graph, outputs, inputs, layers, init_ops, variables):
        self.name = name
        self.graph = graph
        self.graph_def = graph.as_graph_def()
        with graph.as_default():
            self.meta_graph_def = tf1.train.export_meta_graph(graph=graph)
        self.outputs = list(outputs)
        self.inputs = dict(inputs)  # placeholder name -> shape (None for batch)
        self.layers = layers  # OrderedDict name -> dict
        self.init_ops = list(init_ops)
        self.variables = list(variables)

    def pruned(self):
        return [n for n, l in self.layers.items() if l["reason"] is None]

    def skipped(self):
        return [n for n, l in self.layers.items() if l["reason"] is not None]


def prune_axis(op, transpose_b=False):
    if op == "Conv2D":
        return 2
    if op == "Conv2DBackpropInput":
        return 3
    if op == "MatMul":
        return 1 if transpose_b else 0
    raise ValueError(op)


class _Maker:
    """Creates weights as ref variables, resource variables or constants."""

    def __init__(self, variant, seed):
        assert variant in ("ref", "resource", "const")
        self.variant = variant
        self.rng = np.random.RandomState(seed)
        self.init_ops = []
        self.variables = []

    def weight(self, name, shape, scale=None, value=None, dtype=np.float32, trainable=True):
        if value is None:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
            scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
            value = (self.rng.randn(*shape) * scale).astype(dtype)
        value = np.asarray(value, dtype=dtype)
        if self.variant == "const":
            return tf.constant(value, name=name)
        if self.variant == "ref":
            v = tf1.Variable(value, name=name, use_resource=False, trainable=trainable)
        else:
            v = tf1.Variable(value, name=name, use_resource=True, trainable=trainable)
        self.init_ops.append(v.initializer.name)
        self.variables.append(v.op.name)
        return v


def _trace_weight(graph, tensor):
    """Returns the source node name of a weight tensor (through Identity/ReadVariableOp)."""
    op = tensor.op
    while op.type in ("Identity", "ReadVariableOp"):
        op = op.inputs[0].op
    return op.name


def describe_layers(graph, output_names, skip_reasons=None):
    """Layers of `graph` on the path to outputs, with what insert should report.

    Computed from the graph itself (SPEC section 3), independently of the engine.
    skip_reasons: {layer: reason} forced by the caller (e.g. config-driven skips).
    """
    skip_reasons = dict(skip_reasons or {})
    seen = set()
    stack = [graph.get_operation_by_name(n.split(":")[0]) for n in output_names]
    order = []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        order.append(op)
        for t in op.inputs:
            stack.append(t.op)
        for c in op.control_inputs:
            stack.append(c)
    layer_ops = [op for op in graph.get_operations() if op.name in seen and op.type in LAYER_OPS]
    sources = collections.Counter()
    info = collections.OrderedDict()
    for op in layer_ops:
        w = op.inputs[1]
        src_name = _trace_weight(graph, w)
        src = graph.get_operation_by_name(src_name)
        tb = bool(op.get_attr("transpose_b")) if op.type == "MatMul" else False
        ta = bool(op.get_attr("transpose_a")) if op.type == "MatMul" else False
        axis = prune_axis(op.type, tb)
        d = {
            "type": op.type,
            "weight": src_name,
            "weight_input": op.node_def.input[1],
            "shape": [int(x) for x in w.shape],
            "axis": axis,
            "dtype": w.dtype.base_dtype.name,
            "transpose_a": ta,
            "src_type": src.type,
        }
        if src.type in ("Const", "VariableV2", "VarHandleOp"):
            sources[src_name] += 1
        info[op.name] = d
    for name, d in info.items():
        if name in skip_reasons:
            reason = skip_reasons[name]
        elif d["transpose_a"]:
            reason = "transpose_a"
        elif d["dtype"] not in ("float32", "float64"):
            reason = "dtype"
        elif d["src_type"] not in ("Const", "VariableV2", "VarHandleOp"):
            reason = "not_constant"
        elif sources[d["weight"]] > 1:
            reason = "shared_weight"
        elif d["shape"][d["axis"]] <= 2:
            reason = "axis_too_short"
        else:
            reason = None
        d["reason"] = reason
    return info


def build_small(variant="resource", mode="train", seed=1234):
    """conv1 -> conv2 -> deconv -> conv3 -> conv_narrow -> flatten -> dense1 -> dense2.

    Prune-axis lengths: conv1 Cin=3, conv2 Cin=6, deconv (Conv2DBackpropInput) input
    channels 5, conv3 Cin=4, conv_narrow Cin=2 (skipped: axis_too_short), dense1 K=192
    (transpose_b false), dense2 K=10 (transpose_b true, weight [7, 10]).
    mode="train" adds a dropout (rate placeholder defaulting to 0) after flatten and leaves
    the batch dimension open; mode="infer" has a fixed batch of 4.
    """
    g = tf.Graph()
    with g.as_default():
        mk = _Maker(variant, seed)
        batch = None if mode == "train" else 4
        x = tf1.placeholder(tf.float32, [batch, 8, 8, 3], name="x")
        s1 = [1, 1, 1, 1]
        w1 = mk.weight("conv1/kernel", [3, 3, 3, 6])
        b1 = mk.weight("conv1/bias", [6], scale=0.1)
        h = tf.raw_ops.Conv2D(input=x, filter=w1, strides=s1, padding="SAME", name="conv1/Conv2D")
        h = tf.nn.relu(tf.nn.bias_add(h, b1, name="conv1/BiasAdd"), name="conv1/Relu")
        w2 = mk.weight("conv2/kernel", [3, 3, 6, 5])
        h = tf.raw_ops.Conv2D(input=h, filter=w2, strides=[1, 2, 2, 1], padding="SAME",
                              name="conv2/Conv2D")
        h = tf.nn.relu(h, name="conv2/Relu")  # [B,4,4,5]
        wd = mk.weight("deconv/kernel", [3, 3, 4, 5])
        sizes = tf.stack([tf.shape(x)[0], 8, 8, 4], name="deconv/input_sizes")
        h = tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes, filter=wd, out_backprop=h,
                                           strides=[1, 2, 2, 1], padding="SAME",
                                           name="deconv/conv2d_transpose")
        h = tf.nn.relu(h, name="deconv/Relu")  # [B,8,8,4]
        w3 = mk.weight("conv3/kernel", [1, 1, 4, 2])
        h = tf.raw_ops.Conv2D(input=h, filter=w3, strides=s1, padding="SAME", name="conv3/Conv2D")
        w4 = mk.weight("conv_narrow/kernel", [1, 1, 2, 3])
        h = tf.raw_ops.Conv2D(input=h, filter=w4, strides=s1, padding="SAME",
                              name="conv_narrow/Conv2D")  # [B,8,8,3]
        h = tf.reshape(h, [-1, 192], name="flatten")
        if mode == "train":
            rate = tf1.placeholder_with_default(0.0, [], name="dropout_rate")
            h = tf.nn.dropout(h, rate=rate, name="dropout")
        wf1 = mk.weight("dense1/kernel", [192, 10])
        h = tf.raw_ops.MatMul(a=h, b=wf1, transpose_a=False, transpose_b=False, name="dense1/MatMul")
        h = tf.nn.relu(h, name="dense1/Relu")
        wf2 = mk.weight("dense2/kernel", [SMALL_OUT, 10], scale=0.3)
        h = tf.raw_ops.MatMul(a=h, b=wf2, transpose_a=False, transpose_b=True, name="dense2/MatMul")
        tf.identity(h, name="logits")
        layers = describe_layers(g, ["logits"])
    return Built("small-%s-%s" % (variant, mode), g, ["logits"], {"x": [None, 8, 8, 3]},
                 layers, mk.init_ops, mk.variables)


def build_skips(seed=99):
    """One layer per skip reason, plus ones that are pruned, plus dead layers.

    Weights are ref variables except where a reason needs otherwise.
    """
    g = tf.Graph()
    with g.as_default():
        mk = _Maker("ref", seed)
        x = tf1.placeholder(tf.float32, [None, 12], name="x")
        outs = []
        w = mk.weight("ok/kernel", [12, 8])
        outs.append(tf.raw_ops.MatMul(a=x, b=w, name="ok/MatMul"))
        # transpose_a: (x^T)^T @ w
        w = mk.weight("ta/kernel", [12, 8])
        outs.append(tf.raw_ops.MatMul(a=tf.transpose(x, name="ta/xT"), b=w, transpose_a=True,
                                      name="ta/MatMul"))
        # weight from a placeholder
        wph = tf1.placeholder_with_default(np.ones([12, 8], np.float32), [12, 8], name="w_ph")
        outs.append(tf.raw_ops.MatMul(a=x, b=wph, name="ph/MatMul"))
        # computed weight
        w = mk.weight("comp/kernel", [12, 8])
        outs.append(tf.raw_ops.MatMul(a=x, b=tf.multiply(w, 2.0, name="comp/scaled"),
                                      name="comp/MatMul"))
        # shared weight
        w = mk.weight("shared/kernel", [12, 8])
        outs.append(tf.raw_ops.MatMul(a=x, b=w, name="shared1/MatMul"))
        outs.append(tf.raw_ops.MatMul(a=tf.nn.relu(x), b=w, name="shared2/MatMul"))
        # prune axis of length 2
        w = mk.weight("short/kernel", [2, 8])
        outs.append(tf.raw_ops.MatMul(a=x[:, :2], b=w, name="short/MatMul"))
        # int32 weight
        xi = tf.cast(tf.round(x * 4.0), tf.int32, name="int/x")
        wi = tf.constant(np.arange(96, dtype=np.int32).reshape(12, 8) % 5 - 2, name="int/kernel")
        outs.append(tf.cast(tf.raw_ops.MatMul(a=xi, b=wi, name="int/MatMul"), tf.float32))
        # float64 weight: pruned, mask in float64
        x64 = tf.cast(x[:, :6], tf.float64, name="f64/x")
        w = mk.weight("f64/kernel", [6, 8], dtype=np.float64)
        outs.append(tf.cast(tf.raw_ops.MatMul(a=x64, b=w, name="f64/MatMul"), tf.float32))
        # weight is a Const node (frozen layer), transpose_b
        wc = tf.constant(mk.rng.randn(8, 12).astype(np.float32), name="constw/kernel")
        outs.append(tf.raw_ops.MatMul(a=x, b=wc, transpose_b=True, name="constw/MatMul"))
        # weight reached through a chain of Identity nodes (ref variable)
        w = mk.weight("idchain/kernel", [12, 8])
        wid = tf.identity(tf.identity(w, name="idchain/id1"), name="idchain/id2")
        outs.append(tf.raw_ops.MatMul(a=x, b=wid, name="idchain/MatMul"))
        # resource variable: VarHandleOp -> ReadVariableOp -> Identity
        rv = tf1.Variable(mk.rng.randn(12, 8).astype(np.float32), name="rchain/kernel",
                          use_resource=True)
        mk.init_ops.append(rv.initializer.name)
        rread = tf.raw_ops.ReadVariableOp(resource=rv.handle, dtype=tf.float32, name="rchain/read")
        outs.append(tf.raw_ops.MatMul(a=x, b=tf.identity(rread, name="rchain/id"),
                                      name="rchain/MatMul"))
        # a weight that also feeds a non-layer consumer (a regularizer): not shared
        w = mk.weight("l2/kernel", [12, 8])
        outs.append(tf.raw_ops.MatMul(a=x, b=w, name="l2/MatMul"))
        outs.append(tf.zeros_like(outs[0]) + tf.nn.l2_loss(w.read_value(), name="l2/loss"))
        # a layer not on the path to the output: not a layer at all
        w = mk.weight("dead/kernel", [12, 8])
        tf.raw_ops.MatMul(a=x, b=w, name="dead/MatMul")
        tf.add_n(outs, name="out")
        layers = describe_layers(g, ["out"])
    return Built("skips", g, ["out"], {"x": [None, 12]}, layers, mk.init_ops, mk.variables)


def build_fp16(seed=5):
    """A float16 layer next to a float32 one (float16 is optional: pruned or skipped 'dtype')."""
    g = tf.Graph()
    with g.as_default():
        mk = _Maker("resource", seed)
        x = tf1.placeholder(tf.float32, [None, 12], name="x")
        w = mk.weight("f32/kernel", [12, 8])
        a = tf.raw_ops.MatMul(a=x, b=w, name="f32/MatMul")
        w16 = mk.weight("f16/kernel", [12, 8], dtype=np.float16)
        b = tf.raw_ops.MatMul(a=tf.cast(x, tf.float16), b=w16, name="f16/MatMul")
        tf.add(a, tf.cast(b, tf.float32), name="out")
        layers = describe_layers(g, ["out"])
    return Built("fp16", g, ["out"], {"x": [None, 12]}, layers, mk.init_ops, mk.variables)


TIE_WEIGHT = np.array([
    # columns: all-equal, equal magnitudes of both signs, zeros/-0 and a tail group
    [1.0, -2.0, 0.0],
    [1.0, 2.0, -0.0],
    [1.0, 1.0, 0.0],
    [1.0, -2.0, 3.0],
    [1.0, 0.0, 1.0],
    [1.0, 0.0, 0.0],
    [1.0, 0.0, -0.0],
], dtype=np.float32)


def build_consts(seed=7):
    """Frozen-style graph: Const weights, including the splat form and hand-made ties.

    splat/MatMul's weight is stored as a single float_val for a [10, 4] shape; ties/MatMul's
    weight is TIE_WEIGHT [7, 3]; nchw/Conv2D is an NCHW conv (prune axis still 2) that is
    only evaluated through its masked weight (CPU has no NCHW Conv2D kernel).
    """
    g = tf.Graph()
    with g.as_default():
        rng = np.random.RandomState(seed)
        x = tf1.placeholder(tf.float32, [None, 10], name="x")
        splat = tf.constant(0.5, shape=[10, 4], dtype=tf.float32, name="splat/kernel")
        a = tf.raw_ops.MatMul(a=x, b=splat, name="splat/MatMul")  # [B,4]
        xt = tf.concat([a, x[:, :3]], axis=1, name="ties/x")  # [B,7]
        tie = tf.constant(TIE_WEIGHT, name="ties/kernel")
        b = tf.raw_ops.MatMul(a=xt, b=tie, name="ties/MatMul")  # [B,3]
        img = tf.reshape(tf.concat([x, x[:, :5]], axis=1), [-1, 15, 1, 1], name="nchw/x")  # N,C=15,H,W
        wc = tf.constant(rng.randn(1, 1, 15, 3).astype(np.float32), name="nchw/kernel")
        c = tf.raw_ops.Conv2D(input=img, filter=wc, strides=[1, 1, 1, 1], padding="VALID",
                              data_format="NCHW", name="nchw/Conv2D")
        c = tf.reshape(c, [-1, 3])
        tf.add(b, c, name="out")
        layers = describe_layers(g, ["out"])
    built = Built("consts", g, ["out"], {"x": [None, 10]}, layers, [], [])
    # Store ties/kernel in the typed float_val field (every value), not tensor_content.
    for gd in (built.graph_def, built.meta_graph_def.graph_def):
        for n in gd.node:
            if n.name == "ties/kernel":
                t = n.attr["value"].tensor
                t.ClearField("tensor_content")
                t.float_val.extend(TIE_WEIGHT.reshape(-1).tolist())
    return built


# ---------------------------------------------------------------------------------------
# Keras application models (tf_keras, graph mode)


def build_keras(app="ResNet50", size=64, classes=10):
    import tf_keras

    tf_keras.backend.clear_session()
    g = tf.Graph()
    with g.as_default():
        ctor = getattr(tf_keras.applications, app)
        kwargs = dict(weights=None, input_shape=(size, size, 3), classes=classes)
        model = ctor(**kwargs)
        out = model.outputs[0].op.name
        inp = model.inputs[0].op.name
        layers = describe_layers(g, [out])
    b = Built(app, g, [out], {inp: [None, size, size, 3]}, layers, [], [])
    b.keras_output = out
    b.keras_input = inp
    return b


# ---------------------------------------------------------------------------------------
# Writers


def write_model(built, directory, fmt):
    """Writes built as 'pb' (binary GraphDef), 'meta' (binary MetaGraphDef) or 'pbtxt'."""
    os.makedirs(directory, exist_ok=True)
    if fmt == "pb":
        path = os.path.join(directory, built.name + ".pb")
        data = built.graph_def.SerializeToString()
        with open(path, "wb") as f:
            f.write(data)
    elif fmt == "meta":
        path = os.path.join(directory, built.name + ".meta")
        with open(path, "wb") as f:
            f.write(built.meta_graph_def.SerializeToString())
    elif fmt == "pbtxt":
        path = os.path.join(directory, built.name + ".pbtxt")
        tf.io.write_graph(built.graph_def, directory, built.name + ".pbtxt", as_text=True)
    else:
        raise ValueError(fmt)
    return path
