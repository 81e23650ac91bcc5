"""Checks of an inserted model: JSON result, record, preservation, and real TensorFlow runs."""

import collections

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import variable_pb2
from tensorflow.python.framework import op_def_registry

import ref24
import sdrun
from sdrun import INIT_OP, UPDATE_OP, prefix, tname

tf1 = tf.compat.v1

def orig_graph_def(built, fmt):
    """The GraphDef the engine saw (export_meta_graph adds _output_shapes attrs)."""
    return built.meta_graph_def.graph_def if fmt == "meta" else built.graph_def


FORMAT_NAMES = {"pb": "graphdef", "meta": "metagraph", "pbtxt": "pbtxt"}
STATE_DTYPES = {"float32": tf.float32, "float64": tf.float64, "float16": tf.float16}


def refresh(step, freq):
    return step == 0 if freq == 0 else step % freq == 0


# ---------------------------------------------------------------------------------------
# JSON result


def check_json(r, built, fmt, orig_gd, out_gd, freq_by_layer, reasons=None,
               format_source="detected", allow_reasons=None):
    """reasons: {layer: reason or None} overriding built.layers' expectation.
    allow_reasons: {layer: set of acceptable reasons} for cases the contract leaves open."""
    j = r.json()
    reasons = dict(reasons or {})
    allow_reasons = dict(allow_reasons or {})
    ctx = r.describe()
    assert j["stage"] == "insert", ctx
    assert j["model"]["format"] == FORMAT_NAMES[fmt], ctx
    assert j["model"]["format_source"] == format_source, ctx
    assert j["model"]["nodes_in"] == len(orig_gd.node), ctx
    assert j["model"]["nodes_out"] == len(out_gd.node), ctx
    assert [o.split(":")[0] for o in j["outputs"]] == [o.split(":")[0] for o in built.outputs], ctx
    assert j["init_op"] == INIT_OP and j["update_op"] == UPDATE_OP, ctx
    got = {}
    for layer in j["layers"]:
        assert layer["name"] not in got, "layer %s listed twice" % layer["name"]
        got[layer["name"]] = layer
    assert set(got) == set(built.layers), (
        "layers differ: missing %s, unexpected %s" % (sorted(set(built.layers) - set(got)),
                                                    sorted(set(got) - set(built.layers))))
    expected_reason = {}
    pruned_weights = 0
    for name, exp in built.layers.items():
        g = got[name]
        want = reasons.get(name, exp["reason"])
        expected_reason[name] = want
        where = "layer %s: %s" % (name, g)
        assert g["type"] == exp["type"], where
        assert g["weight_input"] == exp["weight_input"], where
        if exp["src_type"] in ("Const", "VariableV2", "VarHandleOp"):
            # Required for pruned layers; for skipped ones null is accepted, a value must be right.
            strict = want is None
            for key, val in (("weight", exp["weight"]), ("weight_shape", exp["shape"]),
                             ("dtype", exp["dtype"])):
                if strict or g.get(key) is not None:
                    assert g[key] == val, "%s (%s)" % (where, key)
        assert g["prune_axis"] == exp["axis"], where
        assert isinstance(g.get("detail", ""), str), where
        if name in allow_reasons:
            assert g["reason"] in allow_reasons[name], where
            assert g["action"] == ("pruned" if g["reason"] is None else "skipped"), where
            expected_reason[name] = g["reason"]
            want = g["reason"]
        elif want is None:
            assert g["action"] == "pruned" and g["reason"] is None, where
        else:
            assert g["action"] == "skipped" and g["reason"] == want, where
        if want is None:
            assert g["update_freq"] == freq_by_layer(name), where
            pruned_weights += int(np.prod(exp["shape"]))
    t = j["totals"]
    n_pruned = sum(1 for v in expected_reason.values() if v is None)
    assert t["layers"] == len(built.layers), t
    assert t["pruned"] == n_pruned, t
    assert t["skipped"] == len(built.layers) - n_pruned, t
    assert t["weights"] == pruned_weights, t
    by_reason = collections.Counter(v for v in expected_reason.values() if v is not None)
    assert {k: v for k, v in t["skipped_by_reason"].items() if v} == dict(by_reason), t
    return [n for n, v in expected_reason.items() if v is None]


# ---------------------------------------------------------------------------------------
# Record


def check_record(path, built, pruned, freq_by_layer):
    msg, by_layer, order = sdrun.read_record(path)
    assert sorted(order) == sorted(pruned), "record layers %s, pruned %s" % (order, pruned)
    for name in pruned:
        attrs = by_layer[name]
        exp = built.layers[name]
        assert "mask_shape" in attrs, attrs
        assert attrs["mask_shape"] == (5, exp["shape"]), (name, attrs["mask_shape"])
        assert "prune_axis" in attrs, attrs
        assert attrs["prune_axis"] == (2, exp["axis"]), (name, attrs["prune_axis"])
        if "update_freq" in attrs:
            assert attrs["update_freq"] == (2, freq_by_layer(name)), (name, attrs["update_freq"])
        if "weight_input" in attrs:
            assert attrs["weight_input"] == (3, exp["weight_input"]), (name, attrs["weight_input"])
        if "weight" in attrs:
            assert attrs["weight"] == (3, exp["weight"]), (name, attrs["weight"])
    return by_layer


# ---------------------------------------------------------------------------------------
# Nothing else changed


def check_preserved(orig_gd, out_gd, pruned, layers):
    orig = {n.name: n for n in orig_gd.node}
    out = {}
    for n in out_gd.node:
        assert n.name not in out, "duplicate node %s in output" % n.name
        out[n.name] = n
    for name, n in orig.items():
        assert name in out, "original node %s missing from output" % name
        o = out[name]
        assert o.op == n.op, name
        assert o.device == n.device, name
        assert set(o.attr) == set(n.attr), (name, set(o.attr) ^ set(n.attr))
        for k in n.attr:
            assert o.attr[k] == n.attr[k], "attr %s of %s changed" % (k, name)
        if name in pruned:
            assert len(o.input) == len(n.input), name
            assert o.input[1] == prefix(name) + "/masked_weight", (name, o.input[1])
            assert list(o.input[:1]) + list(o.input[2:]) == list(n.input[:1]) + list(n.input[2:]), name
        else:
            assert list(o.input) == list(n.input), "inputs of %s changed: %s -> %s" % (
                name, list(n.input), list(o.input))
    assert out_gd.versions == orig_gd.versions
    assert out_gd.library == orig_gd.library
    prefixes = tuple(prefix(p) + "/" for p in pruned)
    for name, o in out.items():
        if name in orig:
            continue
        assert name.startswith(prefixes) or name.startswith("sparsityd/"), (
            "new node %s outside the inserted name spaces" % name)
        assert op_def_registry.get(o.op) is not None, "node %s: %s is not a stock op" % (name, o.op)
    for p in pruned:
        P = prefix(p)
        w = layers[p]
        for v, shape, dtype in ((P + "/mask", w["shape"], w["dtype"]), (P + "/step", [], "int64")):
            assert v in out, "missing %s" % v
            node = out[v]
            assert node.op == "VarHandleOp", (v, node.op)
            assert tf.dtypes.as_dtype(node.attr["dtype"].type).name == dtype, v
            assert [d.size for d in node.attr["shape"].shape.dim] == shape, v
        assert out[P + "/masked_weight"].op == "Mul", P
        assert out[P + "/mask_value"].op == "SelectV2", P
        assert P + "/fresh_mask" in out, P
    assert out[INIT_OP].op == "NoOp"
    assert out[UPDATE_OP].op == "NoOp"
    return out


ASSIGN_OPS = {"Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp",
              "AssignSubVariableOp", "ScatterUpdate", "ResourceScatterUpdate"}


def check_forward_pure(out_gd, outputs):
    """No assignment op, and neither init nor update op, is an ancestor of an output."""
    by_name = {n.name: n for n in out_gd.node}
    seen = set()
    stack = [o.split(":")[0] for o in outputs]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        n = by_name[name]
        assert n.op not in ASSIGN_OPS, "assignment %s (%s) on the forward path" % (name, n.op)
        assert name not in (INIT_OP, UPDATE_OP), "%s on the forward path" % name
        for i in n.input:
            stack.append(i.lstrip("^").split(":")[0])


def check_meta_preserved(orig_meta, out_meta, pruned):
    def without_ops(m):
        c = type(m.meta_info_def)()
        c.CopyFrom(m.meta_info_def)
        c.ClearField("stripped_op_list")
        return c

    assert without_ops(out_meta) == without_ops(orig_meta)
    orig_ops = {o.name for o in orig_meta.meta_info_def.stripped_op_list.op}
    out_ops = {o.name for o in out_meta.meta_info_def.stripped_op_list.op}
    assert orig_ops <= out_ops
    assert out_meta.saver_def == orig_meta.saver_def
    assert dict(out_meta.signature_def) == dict(orig_meta.signature_def)
    assert list(out_meta.asset_file_def) == list(orig_meta.asset_file_def)
    new_keys = set(out_meta.collection_def) - set(orig_meta.collection_def)
    assert new_keys <= {"update_ops"}, new_keys
    for key, col in orig_meta.collection_def.items():
        o = out_meta.collection_def[key]
        if key == "variables":
            assert list(o.bytes_list.value[:len(col.bytes_list.value)]) == list(col.bytes_list.value) \
                or set(col.bytes_list.value) <= set(o.bytes_list.value), key
        elif key == "update_ops":
            assert set(col.node_list.value) <= set(o.node_list.value), key
        else:
            assert o == col, "collection %s changed" % key
    assert UPDATE_OP in list(out_meta.collection_def["update_ops"].node_list.value)
    new_vars = {}
    for b in out_meta.collection_def["variables"].bytes_list.value:
        vd = variable_pb2.VariableDef()
        vd.ParseFromString(b)
        new_vars[vd.variable_name] = vd
    for p in pruned:
        for v in ("mask", "step"):
            name = prefix(p) + "/" + v + ":0"
            assert name in new_vars, "%s not in the variables collection" % name
            assert not new_vars[name].trainable, name
            assert new_vars[name].is_resource, name


# ---------------------------------------------------------------------------------------
# Runtime


def weight_tensor(graph, layer_info):
    return graph.get_tensor_by_name(tname(layer_info["weight_input"]))


def state_tensors(graph, pruned, layers):
    st = {}
    for p in pruned:
        P = prefix(p)
        dt = STATE_DTYPES[layers[p]["dtype"]]
        st[p] = {
            "w": weight_tensor(graph, layers[p]),
            "mw": graph.get_tensor_by_name(P + "/masked_weight:0"),
            "fresh": graph.get_tensor_by_name(P + "/fresh_mask:0"),
            "mvalue": graph.get_tensor_by_name(P + "/mask_value:0"),
            "mask": sdrun.read_var_tensor(graph, P + "/mask", dt),
            "step": sdrun.read_var_tensor(graph, P + "/step", tf.int64),
        }
    return st


def check_step_values(layers, p, w, mw, fresh, mvalue, expected_mask, where):
    axis = layers[p]["axis"]
    assert ref24.is_2of4(mw, axis), "%s: masked weight not 2:4 (%s)" % (p, where)
    assert np.array_equal(fresh, ref24.mask24(w, axis)), "%s: fresh_mask != reference (%s)" % (p, where)
    assert np.array_equal(mvalue, expected_mask), "%s: mask_value != expected (%s)" % (p, where)
    assert np.array_equal(mw, w * expected_mask.astype(w.dtype)), (
        "%s: masked_weight != weight * mask (%s)" % (p, where))


def feeds_for(built, batch, seed):
    rng = np.random.RandomState(seed)
    feed = {}
    for name, shape in built.inputs.items():
        s = [batch if d is None else d for d in shape]
        feed[name + ":0"] = rng.randn(*s).astype(np.float32)
    return feed


def check_graphdef_runtime(out_gd, built, pruned, freq_by_layer, steps=3):
    """Imports a GraphDef output, initializes by op name, runs forward + update a few times."""
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(out_gd, name="")
        st = state_tensors(g, pruned, built.layers)
        outs = [g.get_tensor_by_name(tname(o)) for o in built.outputs]
        update = g.get_operation_by_name(UPDATE_OP)
    feed = feeds_for(built, 4, 0)
    with tf1.Session(graph=g) as sess:
        for op in built.init_ops:
            sess.run(g.get_operation_by_name(op))
        sess.run(g.get_operation_by_name(INIT_OP))
        for p in pruned:
            m, s = sess.run([st[p]["mask"], st[p]["step"]])
            assert np.all(m == 1) and s == 0, "%s: after init mask %s step %s" % (p, m, s)
        masks = {}
        out_values = None
        for step in range(steps):
            before = sess.run({p: (st[p]["w"], st[p]["mask"], st[p]["step"]) for p in pruned})
            fetch = {p: (st[p]["mw"], st[p]["fresh"], st[p]["mvalue"]) for p in pruned}
            res, out_values, _ = sess.run([fetch, outs, update], feed)
            for p in pruned:
                w, mask_before, s = before[p]
                assert s == step, (p, s, step)
                exp = ref24.mask24(w, built.layers[p]["axis"]) if refresh(step, freq_by_layer(p)) \
                    else mask_before
                check_step_values(built.layers, p, w, *res[p], exp, "graphdef step %d" % step)
                masks[p] = exp
            after = sess.run({p: (st[p]["mask"], st[p]["step"]) for p in pruned})
            for p in pruned:
                assert np.array_equal(after[p][0], masks[p]), "%s: stored mask after update" % p
                assert after[p][1] == step + 1, "%s: step after update %s" % (p, after[p][1])
        weights = sess.run({p: st[p]["w"] for p in pruned})
    # Same outputs as the original graph run with weight * mask fed in place of each weight.
    check_same_as_original(built, feed, {p: weights[p] * masks[p] for p in pruned}, out_values)
    return masks


def check_same_as_original(built, feed, masked, out_values, rtol=1e-5, atol=1e-6):
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(built.graph_def, name="")
        outs = [g.get_tensor_by_name(tname(o)) for o in built.outputs]
    with tf1.Session(graph=g) as sess:
        for op in built.init_ops:
            sess.run(g.get_operation_by_name(op))
        f = dict(feed)
        for p, v in masked.items():
            f[g.get_tensor_by_name(tname(built.layers[p]["weight_input"]))] = v
        ref = sess.run(outs, f)
    for a, b in zip(ref, out_values):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol,
                                   err_msg="inserted graph output != original graph with w*mask")
