"""Errors: bad configs (SPEC 5), bad models (SPEC 2), bad command lines.

Every error must exit with the documented code (1 bad input, 2 usage, 3 IO), print one
'sparsityd: error: ' message on stderr that names the culprit (file:line:col for config
errors, the node or layer for model errors), and never die by a signal.
Assertions use distinctive substrings, not full wording.
"""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import sdrun
from tensorflow.core.framework import tensor_pb2
from sdrun import SAMPLE_CONFIG

tf1 = tf.compat.v1

LINECOL = r":\d+:\d+"
PRUNE = "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } } }"
FILTER = "filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.3 } }"
NOFM = "n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } }"


@pytest.fixture(scope="module")
def small_pb(model_cache):
    return model_cache.file("pb", "small", "resource", "infer")


def run_cfg(sparsityd, small_pb, workdir, config):
    path, built = small_pb
    return sdrun.insert(sparsityd, path, config, built.outputs, workdir, tag="cfg")


def config_error(r, substrings, line=None, linecol=True):
    """A config error: exit 1, substrings present, file:line:col of the config given."""
    patterns = []
    if linecol:
        base = re.escape(os.path.basename(r.config_path))
        if line is None:
            patterns.append(base + LINECOL)
        else:
            patterns.append(base + r":%d:\d+" % line)
    return sdrun.assert_error(r, 1, substrings, patterns)


# ---------------------------------------------------------------------------------------
# Unsupported configuration (parsed fine, refused with a precise message)

REFUSED = {
    "filter_pruner": (
        "prune_config {\n  %s\n}\n" % FILTER, ["filter_pruner", "not supported"], 2),
    "filter_pruner_in_override": (
        PRUNE + "\noverride_layer_configs {\n  layer_name: \"conv1/Conv2D\"\n"
        "  prune_config { %s }\n}\n" % FILTER, ["filter_pruner", "not supported"], 4),
    "filter_pruner_in_type_override": (
        PRUNE + "\noverride_layer_types {\n  layer_type: \"MatMul\"\n"
        "  prune_config { %s }\n}\n" % FILTER, ["filter_pruner"], 4),
    "both_pruners": (
        "prune_config {\n  %s\n  %s\n}\n" % (NOFM, FILTER), ["filter_pruner"], None),
    "both_pruners_filter_first": (
        "prune_config {\n  %s\n  %s\n}\n" % (FILTER, NOFM), ["filter_pruner"], None),
    "M4N1": (
        "prune_config { n_out_of_m_pruner {\n  l1_selective_prune { n_out_of_m_type: M4N1 } } }\n",
        ["M4N1"], 2),
    "M8N4": (
        "prune_config { n_out_of_m_pruner {\n  l1_selective_prune { n_out_of_m_type: M8N4 } } }\n",
        ["M8N4"], 2),
    "M4N1_in_override": (
        PRUNE + "\noverride_layer_types { layer_type: \"Conv2D\"\n prune_config { n_out_of_m_pruner"
        " { l1_selective_prune { n_out_of_m_type: M4N1 } } } }\n", ["M4N1"], 3),
    "batch_num": (PRUNE + "\nbatch_num: 2\n", ["batch_num"], 2),
    "retrain_data_quant_config": (
        PRUNE + "\nretrain_data_quant_config { algo: \"ulq_quantize\" clip_max: 3.0 }\n",
        ["retrain_data_quant_config"], 2),
    "retrain_weight_quant_config": (
        PRUNE + "\nretrain_weight_quant_config { algo: \"arq_retrain\" channel_wise: true }\n",
        ["retrain_weight_quant_config"], 2),
    "quant_skip_layers": (PRUNE + "\nquant_skip_layers: \"conv1/Conv2D\"\n",
                          ["quant_skip_layers"], 2),
    "quant_skip_types": (PRUNE + "\nquant_skip_types: \"MatMul\"\n", ["quant_skip_types"], 2),
    "quant_in_layer_override": (
        PRUNE + "\noverride_layer_configs {\n  layer_name: \"conv1/Conv2D\"\n"
        "  retrain_weight_quant_config { algo: \"arq_retrain\" }\n}\n",
        ["retrain_weight_quant_config"], 4),
    "quant_in_type_override": (
        PRUNE + "\noverride_layer_types {\n  layer_type: \"Conv2D\"\n"
        "  retrain_data_quant_config { algo: \"ulq_quantize\" }\n}\n",
        ["retrain_data_quant_config"], 4),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_config(sparsityd, small_pb, workdir, case):
    text, subs, line = REFUSED[case]
    r = run_cfg(sparsityd, small_pb, workdir, text)
    config_error(r, subs, line)


def test_M4N1_by_number(sparsityd, small_pb, workdir):
    r = run_cfg(sparsityd, small_pb, workdir,
                "prune_config { n_out_of_m_pruner {\n l1_selective_prune { n_out_of_m_type: 1 } } }\n")
    msg = config_error(r, [], 2)
    assert re.search(r"M4N1|n_out_of_m_type", msg), msg


# ---------------------------------------------------------------------------------------
# Text-format errors

SYNTAX = {
    "unknown_nested_field": (
        "prune_config {\n  n_out_of_m_pruner {\n    l1_selective_prune { update_frq: 0 }\n  }\n}\n",
        ["unknown field", "update_frq"], 3),
    "unknown_top_field": (PRUNE + "\n\nprune_cfg { }\n", ["unknown field", "prune_cfg"], 3),
    "unknown_enum_value": (
        "prune_config { n_out_of_m_pruner {\n l1_selective_prune { n_out_of_m_type: M4N3 } } }\n",
        ["M4N3"], 2),
    "unterminated_message": ("prune_config { n_out_of_m_pruner {\n l1_selective_prune { } }\n",
                             [], None),
    "string_for_int": (
        "prune_config { n_out_of_m_pruner {\n l1_selective_prune { update_freq: \"abc\" } } }\n",
        ["update_freq"], 2),
    "negative_uint": (
        "prune_config { n_out_of_m_pruner {\n l1_selective_prune { update_freq: -1 } } }\n",
        ["update_freq"], 2),
    "uint_overflow": (
        "prune_config { n_out_of_m_pruner {\n l1_selective_prune { update_freq: 99999999999 } } }\n",
        ["update_freq"], 2),
    "unterminated_string": (PRUNE + "\nskip_layers: \"conv1/Conv2D\n", [], 2),
    "message_given_scalar": ("prune_config: 3\n", ["prune_config"], 1),
    "scalar_given_message": (PRUNE + "\nskip_layers { }\n", ["skip_layers"], 2),
    "stray_brace": (PRUNE + "\n}\n", [], 2),
}


@pytest.mark.parametrize("case", sorted(SYNTAX))
def test_config_syntax_error(sparsityd, small_pb, workdir, case):
    text, subs, line = SYNTAX[case]
    r = run_cfg(sparsityd, small_pb, workdir, text)
    config_error(r, subs, line)


def test_config_binary_garbage(sparsityd, small_pb, workdir):
    path, built = small_pb
    cfg = os.path.join(workdir, "garbage.cfg")
    with open(cfg, "wb") as f:
        f.write(np.random.RandomState(1).bytes(512))
    r = sdrun.insert(sparsityd, path, None, built.outputs, workdir, config_path=cfg)
    sdrun.assert_error(r, 1, [], [])


# ---------------------------------------------------------------------------------------
# Names and types that do not match the graph


def test_skip_layer_not_in_graph(sparsityd, small_pb, workdir):
    r = run_cfg(sparsityd, small_pb, workdir, PRUNE + '\nskip_layers: "no_such_layer"\n')
    config_error(r, ["no_such_layer", "conv1/Conv2D", "dense2/MatMul"], 2)


def test_regular_skip_layer_is_not_a_layer(sparsityd, small_pb, workdir):
    """conv2/Relu exists in the graph but is not a layer."""
    r = run_cfg(sparsityd, small_pb, workdir, PRUNE + '\nregular_prune_skip_layers: "conv2/Relu"\n')
    config_error(r, ["conv2/Relu", "deconv/conv2d_transpose"], 2)


def test_override_layer_not_in_graph(sparsityd, small_pb, workdir):
    r = run_cfg(sparsityd, small_pb, workdir,
                PRUNE + '\noverride_layer_configs { layer_name: "nope/MatMul" prune_config { %s } }\n'
                % NOFM)
    config_error(r, ["nope/MatMul", "dense1/MatMul"], 2)


def test_skip_layer_not_on_output_path(sparsityd, model_cache, workdir):
    """dead/MatMul is a MatMul node, but not on the path to the outputs: not a layer."""
    path, built = model_cache.file("pb", "skips")
    r = sdrun.insert(sparsityd, path, PRUNE + '\nskip_layers: "dead/MatMul"\n', built.outputs,
                     workdir, tag="cfg")
    config_error(r, ["dead/MatMul", "ok/MatMul"], 2)


def test_repeated_override_layer(sparsityd, small_pb, workdir):
    o = 'override_layer_configs { layer_name: "dense1/MatMul" prune_config { %s } }\n' % NOFM
    r = run_cfg(sparsityd, small_pb, workdir, PRUNE + "\n" + o + o)
    config_error(r, ["dense1/MatMul"], 3)


def test_repeated_override_type(sparsityd, small_pb, workdir):
    o = 'override_layer_types { layer_type: "Conv2D" prune_config { %s } }\n' % NOFM
    r = run_cfg(sparsityd, small_pb, workdir, PRUNE + "\n" + o + o)
    config_error(r, ["Conv2D"], 3)


@pytest.mark.parametrize("field,value", [
    ("skip_layer_types", "Conv3D"),
    ("regular_prune_skip_types", "DepthwiseConv2dNative"),
    ("override_layer_types", "Dense"),
])
def test_unknown_layer_type(sparsityd, small_pb, workdir, field, value):
    if field == "override_layer_types":
        text = PRUNE + '\noverride_layer_types { layer_type: "%s" prune_config { %s } }\n' % (
            value, NOFM)
    else:
        text = PRUNE + '\n%s: "%s"\n' % (field, value)
    r = run_cfg(sparsityd, small_pb, workdir, text)
    config_error(r, [value], 2)


NO_LAYER = {
    "all_types_skipped": PRUNE + '\nskip_layer_types: "Conv2D"\nskip_layer_types: "MatMul"\n'
                                 'skip_layer_types: "Conv2DBackpropInput"\n',
    "all_types_regular_skipped": PRUNE + '\nregular_prune_skip_types: "Conv2D"\n'
                                         'regular_prune_skip_types: "MatMul"\n'
                                         'regular_prune_skip_types: "Conv2DBackpropInput"\n',
    "empty_config": "",
    "comments_only": "# nothing to do\n\n",
    "all_layers_skipped": PRUNE + "\n" + "".join(
        'skip_layers: "%s"\n' % n for n in [
            "conv1/Conv2D", "conv2/Conv2D", "deconv/conv2d_transpose", "conv3/Conv2D",
            "conv_narrow/Conv2D", "dense1/MatMul", "dense2/MatMul"]),
}


@pytest.mark.parametrize("case", sorted(NO_LAYER))
def test_no_layer_to_prune(sparsityd, small_pb, workdir, case):
    r = run_cfg(sparsityd, small_pb, workdir, NO_LAYER[case])
    sdrun.assert_error(r, 1, ["no layer to prune"])


def test_no_layer_to_prune_model_reasons(sparsityd, workdir):
    """Every layer of the graph is ineligible (axis of 2, placeholder weight)."""
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 2], name="x")
        w = tf1.Variable(np.ones((2, 3), np.float32), name="w", use_resource=True)
        wp = tf1.placeholder(tf.float32, [3, 4], name="wp")
        h = tf.raw_ops.MatMul(a=x, b=w, name="narrow/MatMul")
        tf.raw_ops.MatMul(a=h, b=wp, name="out")
    path = os.path.join(workdir, "noprune.pb")
    with open(path, "wb") as f:
        f.write(g.as_graph_def().SerializeToString())
    r = sdrun.insert(sparsityd, path, SAMPLE_CONFIG, ["out"], workdir)
    sdrun.assert_error(r, 1, ["no layer to prune"])


# ---------------------------------------------------------------------------------------
# Bad models


def _node(gd, name, op, inputs=(), **attrs):
    n = gd.node.add(name=name, op=op)
    n.input.extend(inputs)
    for k, v in attrs.items():
        n.attr[k].CopyFrom(v)
    return n


def _attr_type(t):
    return tf1.AttrValue(type=t.as_datatype_enum)


def _base(gd, weight_name="w", weight=None):
    _node(gd, "x", "Placeholder", dtype=_attr_type(tf.float32))
    if weight is None:
        weight = tf.make_tensor_proto(np.ones((8, 4), np.float32))
    _node(gd, weight_name, "Const", dtype=_attr_type(tf.float32), value=tf1.AttrValue(tensor=weight))
    return gd


def _matmul(gd, name, a, b):
    return _node(gd, name, "MatMul", [a, b], T=_attr_type(tf.float32),
                 transpose_a=tf1.AttrValue(b=False), transpose_b=tf1.AttrValue(b=False))


def _bad_models(small_bytes):
    cases = {}
    # truncated inside a node: the cut must really break the protobuf
    cut = len(small_bytes) // 2
    while True:
        try:
            tf1.GraphDef().ParseFromString(small_bytes[:cut])
            cut += 1
        except Exception:
            break
    cases["truncated"] = (small_bytes[:cut], [], ["logits"])
    cases["random_bytes"] = (np.random.RandomState(7).bytes(4096), [], ["logits"])
    cases["empty_file"] = (b"", [], ["logits"])

    gd = _base(tf1.GraphDef())
    _matmul(gd, "dup_node", "x", "w")
    _node(gd, "dup_node", "Identity", ["x"], T=_attr_type(tf.float32))
    _node(gd, "out", "Identity", ["dup_node"], T=_attr_type(tf.float32))
    cases["duplicate_node"] = (gd.SerializeToString(), ["dup_node"], ["out"])

    gd = _base(tf1.GraphDef())
    _matmul(gd, "mm", "x", "ghost_node")
    _node(gd, "out", "Identity", ["mm"], T=_attr_type(tf.float32))
    cases["missing_input"] = (gd.SerializeToString(), ["ghost_node"], ["out"])

    gd = _base(tf1.GraphDef())
    _matmul(gd, "mm", "x", "w")
    _node(gd, "out", "Identity", ["mm", "^ghost_ctrl"], T=_attr_type(tf.float32))
    cases["missing_control_input"] = (gd.SerializeToString(), ["ghost_ctrl"], ["out"])

    t = tf.make_tensor_proto(np.ones((8, 4), np.float32))
    t.tensor_content = t.tensor_content[:12]
    gd = _base(tf1.GraphDef(), "bad_const", t)
    _matmul(gd, "mm", "x", "bad_const")
    cases["content_size_mismatch"] = (gd.SerializeToString(), ["bad_const"], ["mm"])

    t = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    t.tensor_shape.dim.add(size=1000000)
    t.tensor_shape.dim.add(size=1000000)
    t.float_val.append(0.5)
    gd = _base(tf1.GraphDef(), "huge_const", t)
    _matmul(gd, "mm", "x", "huge_const")
    cases["huge_splat_const"] = (gd.SerializeToString(), ["huge_const"], ["mm"])

    t = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    t.tensor_shape.dim.add(size=1000000)
    t.tensor_shape.dim.add(size=1000000)
    t.tensor_content = b"\0" * 64
    gd = _base(tf1.GraphDef(), "huge_content", t)
    _matmul(gd, "mm", "x", "huge_content")
    cases["huge_content_const"] = (gd.SerializeToString(), ["huge_content"], ["mm"])

    t = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    t.tensor_shape.dim.add(size=-3)
    t.tensor_shape.dim.add(size=4)
    t.float_val.append(0.5)
    gd = _base(tf1.GraphDef(), "neg_const", t)
    _matmul(gd, "mm", "x", "neg_const")
    cases["negative_dim_const"] = (gd.SerializeToString(), ["neg_const"], ["mm"])
    return cases


@pytest.fixture(scope="module")
def bad_models(model_cache):
    path, built = model_cache.file("pb", "small", "resource", "infer")
    with open(path, "rb") as f:
        return _bad_models(f.read())


BAD_CASES = ["truncated", "random_bytes", "empty_file", "duplicate_node", "missing_input",
             "missing_control_input", "content_size_mismatch",
             "huge_splat_const", "huge_content_const", "negative_dim_const"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_model(sparsityd, bad_models, workdir, case):
    data, subs, outputs = bad_models[case]
    path = os.path.join(workdir, case + ".pb")
    with open(path, "wb") as f:
        f.write(data)
    r = sdrun.insert(sparsityd, path, SAMPLE_CONFIG, outputs, workdir)
    sdrun.assert_error(r, 1, subs)
    assert r.stdout.strip() == "" or "error" in r.stdout, r.describe()


def test_outputs_naming_missing_node(sparsityd, model_cache, workdir):
    """The contract does not say whether this is bad input (1) or a usage error (2)."""
    path, built = model_cache.file("pb", "small", "resource", "infer")
    r = sdrun.insert(sparsityd, path, SAMPLE_CONFIG, ["logits", "no_such_output"], workdir)
    assert r.rc in (1, 2), r.describe()
    sdrun.assert_error(r, r.rc, ["no_such_output"])


def test_bad_pbtxt_model(sparsityd, workdir):
    path = os.path.join(workdir, "bad.pbtxt")
    with open(path, "w") as f:
        f.write('node {\n  name: "x"\n  op: "Placeholder"\n}\nnode {\n  name: "y"\n  op: \n')
    r = sdrun.insert(sparsityd, path, SAMPLE_CONFIG, ["y"], workdir)
    sdrun.assert_error(r, 1, [])


def test_meta_with_truncated_graph(sparsityd, model_cache, workdir):
    path, built = model_cache.file("meta", "small", "resource", "infer")
    with open(path, "rb") as f:
        data = f.read()
    bad = os.path.join(workdir, "trunc.meta")
    with open(bad, "wb") as f:
        f.write(data[:len(data) - 7])
    r = sdrun.insert(sparsityd, bad, SAMPLE_CONFIG, built.outputs, workdir)
    assert r.rc >= 0, r.describe()
    if r.rc != 0:  # the cut may land on a field boundary of the trailing collections
        sdrun.assert_error(r, 1, [])


# ---------------------------------------------------------------------------------------
# Command line


def test_usage_no_arguments(sparsityd):
    proc, argv = sdrun.run(sparsityd, [])
    assert proc.returncode == 2, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("drop", ["--model", "--config", "--outputs", "--record", "-o"])
def test_usage_missing_option(sparsityd, small_pb, workdir, drop):
    path, built = small_pb
    cfg = os.path.join(workdir, "c.cfg")
    with open(cfg, "w") as f:
        f.write(SAMPLE_CONFIG)
    opts = {"--model": path, "--config": cfg, "--outputs": "logits",
            "--record": os.path.join(workdir, "r.txt"), "-o": os.path.join(workdir, "o.pb")}
    args = ["insert"]
    for k, v in opts.items():
        if k != drop:
            args += [k, v]
    proc, argv = sdrun.run(sparsityd, args)
    assert proc.returncode == 2, (argv, proc.returncode, proc.stderr)
    assert "sparsityd: error: " in proc.stderr or "usage" in proc.stderr.lower(), proc.stderr


def test_usage_unknown_option(sparsityd, small_pb, workdir):
    path, built = small_pb
    r = sdrun.insert(sparsityd, path, SAMPLE_CONFIG, built.outputs, workdir,
                     extra=["--no-such-option"])
    assert r.rc == 2, r.describe()


def test_usage_bad_format_value(sparsityd, small_pb, workdir):
    path, built = small_pb
    r = sdrun.insert(sparsityd, path, SAMPLE_CONFIG, built.outputs, workdir, fmt="onnx")
    assert r.rc == 2, r.describe()


def test_missing_model_file(sparsityd, workdir):
    missing = os.path.join(workdir, "does_not_exist.pb")
    r = sdrun.insert(sparsityd, missing, SAMPLE_CONFIG, ["logits"], workdir)
    assert r.rc in (1, 2, 3), r.describe()  # contract silent: bad input, usage or IO
    assert "sparsityd: error: " in r.stderr and "does_not_exist.pb" in r.stderr, r.describe()


def test_missing_config_file(sparsityd, small_pb, workdir):
    path, built = small_pb
    r = sdrun.insert(sparsityd, path, None, built.outputs, workdir,
                     config_path=os.path.join(workdir, "nope.cfg"))
    assert r.rc in (1, 2, 3), r.describe()  # contract silent: bad input, usage or IO
    assert "nope.cfg" in r.stderr, r.describe()


def test_unwritable_output(sparsityd, small_pb, workdir):
    path, built = small_pb
    cfg = os.path.join(workdir, "c.cfg")
    with open(cfg, "w") as f:
        f.write(SAMPLE_CONFIG)
    args = ["insert", "--model", path, "--config", cfg, "--outputs", "logits",
            "--record", os.path.join(workdir, "r.txt"),
            "-o", os.path.join(workdir, "no_dir", "sub", "o.pb")]
    proc, argv = sdrun.run(sparsityd, args)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "sparsityd: error: " in proc.stderr


def test_wrong_stated_format_is_an_error(sparsityd, model_cache, workdir):
    """A pbtxt stated as binary GraphDef must not be silently misread."""
    path, built = model_cache.file("pbtxt", "small", "resource", "infer")
    r = sdrun.insert(sparsityd, path, SAMPLE_CONFIG, built.outputs, workdir, fmt="pb")
    sdrun.assert_error(r, 1, [])
