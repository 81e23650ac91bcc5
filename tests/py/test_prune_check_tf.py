"""`sparsityd prune` and `sparsityd check` against real TensorFlow (SPEC 3, 4, 9).

prune: frozen tf_keras ResNet50 / MobileNetV2 (weights=None, random init, 96x96x3) + the
sample config -> every pruned layer's weight must be, bit for bit, the numpy reference of
SPEC 4 applied to the original frozen weight (below, written independently of ref24.py);
everything else is unchanged; the pruned graph runs and gives the outputs of the original
graph with the reference weights.
check: which layers are 2:4 and the zero fraction agree with the reference, on the original,
the pruned and a masked (inserted) graph.
prune == insert + freeze at step 0 + export, byte for byte in the weights.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import sdrun
import workflow
from sdrun import SAMPLE_CONFIG
from workflow import bit_equal, node_map, trace_const

tf1 = tf.compat.v1


# ---------------------------------------------------------------------------------------
# Independent reference of SPEC 4 (pairwise ranking; ref24.py sorts, this one counts)


def ref_keep(w, axis):
    """Boolean keep mask: in each group of 4 along axis (zero padded), an element is kept
    when fewer than 2 others beat it; j beats i when |w_j| > |w_i|, or equal and j < i."""
    w = np.asarray(w)
    if np.isnan(w).any():
        raise ValueError("NaN")
    m = np.moveaxis(w, axis, -1)
    c = m.shape[-1]
    g = -(-c // 4)
    a = np.zeros(m.shape[:-1] + (g * 4,), np.float64)
    a[..., :c] = np.abs(m.astype(np.float64))
    a = a.reshape(m.shape[:-1] + (g, 4))
    ai = a[..., :, None]
    aj = a[..., None, :]
    idx = np.arange(4)
    j_lower = idx[None, :] < idx[:, None]  # [i, j]: j < i
    beats = (aj > ai) | ((aj == ai) & j_lower)
    keep = (beats.sum(axis=-1) < 2).reshape(m.shape[:-1] + (g * 4,))[..., :c]
    return np.moveaxis(keep, -1, axis)


def ref_prune(w, axis):
    """w * mask in w's dtype (pruned negatives become -0.0)."""
    w = np.asarray(w)
    return w * ref_keep(w, axis).astype(w.dtype)


def ref_is_2of4(t, axis):
    m = np.moveaxis(np.asarray(t), axis, -1)
    c = m.shape[-1]
    pad = (-c) % 4
    nz = np.pad(m != 0, [(0, 0)] * (m.ndim - 1) + [(0, pad)])
    return bool((nz.reshape(m.shape[:-1] + (-1, 4)).sum(axis=-1) <= 2).all())


def zero_fraction(t):
    t = np.asarray(t)
    return float(np.count_nonzero(t == 0)) / t.size


def test_reference_self_check():
    """Hand-checked cases of SPEC 4 for the reference itself."""
    cases = [
        ([1.0, 3.0, 2.0], [0, 1, 1]),                   # C=3 zeroes one element
        ([1.0, 2.0, 3.0, 4.0, 5.0], [0, 0, 1, 1, 1]),   # C=5 keeps the fifth
        ([1.0, 1.0, 1.0, 1.0], [1, 1, 0, 0]),           # ties: lower index wins
        ([0.0, 0.0, 0.0], [1, 1, 0]),                   # a real element beats padding
        ([-0.0, 0.0, 0.0, 5.0], [1, 0, 0, 1]),
        ([-2.0, 2.0, 1.0, -2.0], [1, 1, 0, 0]),
        ([0.0, 0.0, 0.0, 3.0, 1.0, 0.0], [1, 0, 0, 1, 1, 1]),
        ([5.0, -7.0], [1, 1]),
    ]
    for w, want in cases:
        assert ref_keep(np.array(w, np.float32), 0).astype(int).tolist() == want, w
    w = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    p = ref_prune(w, 1)
    assert bits_of(p).tolist() == bits_of(np.array([[-0.0, 0.0, -3.0, 4.0]], np.float32)).tolist()
    rng = np.random.RandomState(0)
    for shape, axis in (((3, 3, 7, 5), 2), ((3, 3, 4, 9), 3), ((10, 6), 0), ((6, 13), 1)):
        w = rng.randn(*shape).astype(np.float32)
        w[w > 1.0] = 1.0  # plenty of ties
        k = ref_keep(w, axis)
        assert ref_is_2of4(w * k, axis)
        # brute force, element by element
        m = np.moveaxis(w, axis, -1).reshape(-1, shape[axis])
        km = np.moveaxis(k, axis, -1).reshape(-1, shape[axis])
        for row, krow in zip(m, km):
            for g0 in range(0, len(row), 4):
                grp = list(np.abs(row[g0:g0 + 4])) + [0.0] * max(0, g0 + 4 - len(row))
                order = sorted(range(4), key=lambda i: (-grp[i], i))[:2]
                want = [i in order for i in range(4)][:len(row) - g0]
                assert krow[g0:g0 + 4].tolist() == want
    assert not ref_is_2of4(np.ones((4, 2)), 0)
    assert ref_is_2of4(np.ones((2, 5)), 0)


def bits_of(a):
    return workflow.bits(np.asarray(a))


# ---------------------------------------------------------------------------------------
# Frozen tf_keras applications (random init), cached per session

APPS = [("ResNet50", 96), ("MobileNetV2", 96)]
_FROZEN = {}


@pytest.fixture(scope="session")
def frozen_app(tmp_path_factory):
    def get(app, size):
        key = (app, size)
        if key not in _FROZEN:
            built = workflow.build_keras_phase(app, size, 10, 0, seed=42)
            d = str(tmp_path_factory.mktemp("frozen_%s" % app))
            path = workflow.freeze_random(built, os.path.join(d, app + "_frozen.pb"))
            gd = workflow.read_pb(path)
            _FROZEN[key] = (path, built, gd)
        return _FROZEN[key]
    return get


def layer_weights(gd, layers):
    """{layer: (weight Const node, value)} traced in a frozen GraphDef."""
    nodes = node_map(gd)
    out = {}
    for name in layers:
        c = trace_const(nodes, nodes[name].input[1])
        out[name] = (c, None if c is None else workflow.const_value(c))
    return out


def with_weights(gd, new_values):
    """A copy of gd with the named Consts replaced."""
    g2 = tf1.GraphDef()
    g2.CopyFrom(gd)
    for n in g2.node:
        if n.name in new_values:
            n.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(new_values[n.name]))
    return g2


def check_prune_output(r, orig_gd, built, reasons, feed_batch=2):
    """Checks a prune run against the reference. reasons: {layer: reason or None}."""
    assert r.rc == 0, "prune failed\n" + r.describe()
    out_gd = workflow.read_pb(r.out_path)
    layers = built.layers
    pruned = [n for n, why in reasons.items() if why is None]
    ow = layer_weights(orig_gd, layers)
    nw = layer_weights(out_gd, layers)
    onodes, nnodes = node_map(orig_gd), node_map(out_gd)

    # Structure unchanged: same nodes, ops, inputs.
    assert set(onodes) == set(nnodes), (sorted(set(onodes) ^ set(nnodes))[:20])
    for name, o in onodes.items():
        n = nnodes[name]
        assert n.op == o.op and list(n.input) == list(o.input), "node %s changed" % name

    bad = []
    expected_consts = {}
    for name in layers:
        c, w = ow[name]
        assert c is not None, "%s: original frozen weight not a Const" % name
        nc, nv = nw[name]
        if nc is None:
            bad.append("%s: pruned graph weight does not trace to a Const" % name)
            continue
        if reasons[name] is None:
            want = ref_prune(w, layers[name]["axis"])
            expected_consts[nc.name] = want
            if not bit_equal(nv, want):
                if nv.shape == want.shape and np.array_equal(nv, want):
                    bad.append("%s: values right but the sign of zero differs (%d of %d "
                               "bit patterns)" % (name, int(np.sum(bits_of(nv) != bits_of(want))),
                                                  want.size))
                else:
                    diff = int(np.sum(nv != want)) if nv.shape == want.shape else -1
                    bad.append("%s: weight != reference 2:4 of the original (%d of %d values "
                               "differ, axis %d, shape %s)" % (name, diff, want.size,
                                                               layers[name]["axis"], list(w.shape)))
            if not ref_is_2of4(nv, layers[name]["axis"]):
                bad.append("%s: pruned weight is not 2:4" % name)
        else:
            expected_consts[nc.name] = w
            if not bit_equal(nv, w):
                bad.append("%s (skipped: %s): weight changed" % (name, reasons[name]))
    assert not bad, "%d of %d layers wrong:\n%s" % (len(bad), len(layers), "\n".join(bad[:30]))
    # Every other Const unchanged (biases, batch norm, depthwise kernels, shapes ...)
    for name, o in onodes.items():
        if o.op == "Const" and name not in expected_consts:
            assert bit_equal(workflow.const_value(nnodes[name]), workflow.const_value(o)), (
                "Const %s (not a pruned weight) changed" % name)

    # The pruned graph runs and equals the original graph with the reference weights.
    feed = workflow.random_feed(built.inputs, feed_batch, 3)
    ref_gd = with_weights(orig_gd, expected_consts)
    want = workflow.run_graph_def(ref_gd, built.outputs, feed)
    got = workflow.run_graph_def(out_gd, built.outputs, feed)
    workflow.compare_outputs(got, want, built.outputs)

    # JSON
    j = r.json()
    assert j["stage"] == "prune", j.get("stage")
    rows = {row["name"]: row for row in j["layers"]}
    assert len(rows) == len(j["layers"]), "a layer listed twice"
    assert set(rows) == set(layers), (sorted(set(rows) ^ set(layers)))
    total_w = total_zeroed = 0
    for name, why in reasons.items():
        row = rows[name]
        ctx = "layer row %s" % row
        assert row["type"] == layers[name]["type"], ctx
        assert row["prune_axis"] == layers[name]["axis"], ctx
        if why is None:
            w = ow[name][1]
            v = expected_consts[nw[name][0].name]
            zeroed = int(np.sum((w != 0) & (v == 0)))
            assert row["action"] == "pruned" and row["reason"] is None, ctx
            assert row["is_2of4"] is True, ctx
            assert row["zeros"] == int(np.sum(v == 0)), (ctx, int(np.sum(v == 0)))
            assert row["zeroed"] == zeroed, (ctx, zeroed)
            total_w += v.size
            total_zeroed += zeroed
        else:
            assert row["action"] == "skipped" and row["reason"] == why, (ctx, why)
    t = j["totals"]
    assert t["layers"] == len(layers), t
    assert t["pruned"] == len(pruned), t
    by_reason = {}
    for why in reasons.values():
        if why is not None:
            by_reason[why] = by_reason.get(why, 0) + 1
    assert {k: v for k, v in t["skipped_by_reason"].items() if v} == by_reason, t
    assert t["skipped"] == len(layers) - len(pruned), t
    assert t["weights"] == total_w, (t, total_w)
    assert t["weights_zeroed"] == total_zeroed, (t, total_zeroed)
    return out_gd


def check_check_output(r, gd, built, masked=(), skipped=None):
    """check --json of gd agrees with the reference on every layer."""
    assert r.rc == 0, "check failed\n" + r.describe()
    j = r.json()
    assert j["stage"] == "check", j.get("stage")
    layers = built.layers
    skipped = dict(skipped or {})
    rows = {row["name"]: row for row in j["layers"]}
    assert len(rows) == len(j["layers"]), "a layer listed twice"
    assert set(rows) == set(layers), (sorted(set(rows) ^ set(layers)))
    weights = layer_weights(gd, layers)
    bad = []
    n24 = 0
    for name, info in layers.items():
        row = rows[name]
        c, w = weights[name]
        ctx = "%s: row %s" % (name, {k: v for k, v in row.items() if k != "detail"})
        try:
            assert row["type"] == info["type"], ctx
            assert row["prune_axis"] == info["axis"], ctx
            assert row["masked"] is (name in masked), ctx
            if name in masked:
                continue
            assert list(row["weight_shape"]) == info["shape"], ctx
            assert c is not None
            assert row["weight"] == c.name, ctx
            want24 = ref_is_2of4(w, info["axis"])
            n24 += want24
            assert row["is_2of4"] is want24, "%s; reference says is_2of4 %s" % (ctx, want24)
            zf = zero_fraction(w)
            assert row["zero_fraction"] is not None and abs(row["zero_fraction"] - zf) <= 1e-12, (
                "%s; reference zero_fraction %r" % (ctx, zf))
            # The weight is a Const whose values were examined: action "checked"; a layer
            # prune would leave alone still carries its skip code (SPEC 9).
            assert row["action"] == "checked", ctx
            assert row["reason"] == skipped.get(name), "%s; expected reason %r" % (
                ctx, skipped.get(name))
        except AssertionError as e:
            bad.append(str(e).splitlines()[0])
    assert not bad, "%d of %d layers wrong:\n%s" % (len(bad), len(layers), "\n".join(bad[:30]))
    t = j["totals"]
    assert t["layers"] == len(layers), t
    if not masked:
        assert t["layers_2of4"] == n24, (t, n24)
    return rows


# ---------------------------------------------------------------------------------------
# prune + check on frozen applications


@pytest.mark.parametrize("app,size", APPS, ids=[a for a, _ in APPS])
def test_prune_and_check_frozen_app(sparsityd, frozen_app, workdir, app, size):
    path, built, gd = frozen_app(app, size)
    layers = built.layers
    reasons = {n: l["reason"] for n, l in layers.items()}
    assert all(v is None for v in reasons.values()), reasons  # every conv/dense is eligible
    assert len(layers) == {"ResNet50": 54, "MobileNetV2": 36}[app]

    # check on the original: nothing is 2:4 (random weights, every prune axis >= 3)
    ow = layer_weights(gd, layers)
    assert not any(ref_is_2of4(w, layers[n]["axis"]) for n, (_, w) in ow.items()), (
        "TEST PRECONDITION: a random layer is already 2:4")
    rc = workflow.check(sparsityd, path, built.outputs)
    rows = check_check_output(rc, gd, built)
    assert rc.json()["totals"]["layers_2of4"] == 0

    # prune with the sample config
    r = workflow.prune(sparsityd, path, SAMPLE_CONFIG, built.outputs, workdir, record=True)
    out_gd = check_prune_output(r, gd, built, reasons)
    _, by_layer, order = sdrun.read_record(r.record_path)
    assert sorted(order) == sorted(layers)
    for n in order:
        assert by_layer[n]["mask_shape"] == (5, layers[n]["shape"]), (n, by_layer[n])

    # check on the pruned graph: every layer 2:4, with and without --outputs
    rc2 = workflow.check(sparsityd, r.out_path, built.outputs)
    check_check_output(rc2, out_gd, built)
    assert rc2.json()["totals"]["layers_2of4"] == len(layers)
    rc3 = workflow.check(sparsityd, r.out_path)
    check_check_output(rc3, out_gd, built)
    # human-readable
    rt = workflow.check(sparsityd, r.out_path, built.outputs, as_json=False)
    assert rt.rc == 0, rt.describe()
    for n in list(layers)[:5]:
        assert n in rt.stdout, "table lacks %s\n%s" % (n, rt.describe())


def test_prune_skips_mobilenetv2(sparsityd, frozen_app, workdir):
    """Skipped layers keep their weights bit for bit; check reports them skipped."""
    path, built, gd = frozen_app("MobileNetV2", 96)
    config = SAMPLE_CONFIG + ('skip_layers: "Conv1/Conv2D"\n'
                              'regular_prune_skip_types: "MatMul"\n'
                              'skip_layers: "block_3_project/Conv2D"\n')
    reasons = {n: None for n in built.layers}
    reasons["Conv1/Conv2D"] = "skip_layers"
    reasons["block_3_project/Conv2D"] = "skip_layers"
    reasons["predictions/MatMul"] = "regular_prune_skip_types"
    assert set(reasons) == set(built.layers)
    r = workflow.prune(sparsityd, path, config, built.outputs, workdir)
    out_gd = check_prune_output(r, gd, built, reasons)
    rc = workflow.check(sparsityd, r.out_path, built.outputs)
    rows = check_check_output(rc, out_gd, built)
    for n in ("Conv1/Conv2D", "block_3_project/Conv2D", "predictions/MatMul"):
        assert rows[n]["is_2of4"] is False, rows[n]


# ---------------------------------------------------------------------------------------
# prune == insert + freeze at step 0 + export; check on a masked graph


def _freeze(gd, init_ops, outputs, path):
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
    with tf1.Session(graph=g) as sess:
        for op in init_ops:
            sess.run(g.get_operation_by_name(op))
        frozen = tf1.graph_util.convert_variables_to_constants(sess, g.as_graph_def(),
                                                                [o.split(":")[0] for o in outputs])
    return workflow.write_pb(frozen, path)


@pytest.mark.parametrize("variant", ["resource", "ref"])
def test_prune_equals_insert_freeze_export(sparsityd, model_cache, workdir, variant):
    src, built = model_cache.file("pb", "small", variant, "infer")
    plain = _freeze(built.graph_def, built.init_ops, built.outputs,
                    os.path.join(workdir, "plain.pb"))
    ri = sdrun.assert_ok(sdrun.insert(sparsityd, src, SAMPLE_CONFIG, built.outputs, workdir,
                                      tag="ins"))
    pruned = [l["name"] for l in ri.json()["layers"] if l["action"] == "pruned"]
    inserted_gd, _ = sdrun.read_model(ri.out_path, "pb")
    masked = _freeze(inserted_gd, list(built.init_ops) + [sdrun.INIT_OP], built.outputs,
                     os.path.join(workdir, "masked0.pb"))

    # check on masked graphs: inserted (variables) and frozen
    for model in (ri.out_path, masked):
        rc = workflow.check(sparsityd, model, built.outputs)
        assert rc.rc == 0, rc.describe()
        rows = {row["name"]: row for row in rc.json()["layers"]}
        assert set(rows) == set(built.layers), rc.describe()
        for n in built.layers:
            assert rows[n]["masked"] is (n in pruned), (model, rows[n])
    mgd = workflow.read_pb(masked)
    check_check_output(workflow.check(sparsityd, masked, built.outputs), mgd, built,
                       masked=set(pruned), skipped={"conv_narrow/Conv2D": "axis_too_short"})

    exported = os.path.join(workdir, "exported.pb")
    workflow.ok(workflow.export(sparsityd, masked, ri.record_path, built.outputs, exported),
                      "export")
    rp = workflow.prune(sparsityd, plain, SAMPLE_CONFIG, built.outputs, workdir)
    reasons = {n: l["reason"] for n, l in built.layers.items()}
    pgd = check_prune_output(rp, workflow.read_pb(plain), built, reasons, feed_batch=4)
    egd = workflow.read_pb(exported)
    en, pn = node_map(egd), node_map(pgd)
    assert set(en) == set(pn), sorted(set(en) ^ set(pn))
    diffs = []
    for name, n in pn.items():
        if n.op == "Const":
            if not bit_equal(workflow.const_value(en[name]), workflow.const_value(n)):
                diffs.append(name)
    assert not diffs, "Consts differ between prune and insert+freeze+export: %s" % diffs
    for p in pruned:
        assert en[p].input[1] == pn[p].input[1], p
    # check: the exported graph is 2:4 exactly where prune made it so
    rc = workflow.check(sparsityd, exported, built.outputs)
    rows = check_check_output(rc, egd, built, skipped={"conv_narrow/Conv2D": "axis_too_short"})
    assert sorted(n for n, r in rows.items() if r["is_2of4"]) == sorted(
        pruned + ["conv_narrow/Conv2D"])
    assert all(not r["masked"] for r in rows.values())


def test_check_variable_graph(sparsityd, model_cache):
    """Weights that are variables: no values in the graph, so is_2of4 / zero_fraction null."""
    path, built = model_cache.file("pb", "small", "resource", "infer")
    r = workflow.check(sparsityd, path, built.outputs)
    assert r.rc == 0, r.describe()
    rows = {row["name"]: row for row in r.json()["layers"]}
    assert set(rows) == set(built.layers), r.describe()
    for n, info in built.layers.items():
        row = rows[n]
        assert row["is_2of4"] is None and row["zero_fraction"] is None, row
        assert row["masked"] is False, row
        assert row["type"] == info["type"] and row["prune_axis"] == info["axis"], row
    assert r.json()["totals"]["layers"] == len(built.layers)
    assert r.json()["totals"]["layers_2of4"] == 0


def test_prune_errors(sparsityd, model_cache, workdir):
    src, built = model_cache.file("pb", "small", "resource", "infer")
    plain = _freeze(built.graph_def, built.init_ops, built.outputs,
                    os.path.join(workdir, "plain.pb"))
    gd = workflow.read_pb(plain)
    nodes = node_map(gd)
    c = trace_const(nodes, nodes["deconv/conv2d_transpose"].input[1])
    v = workflow.const_value(c).copy()
    v.flat[7] = np.nan
    c.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(v))
    nan = workflow.write_pb(gd, os.path.join(workdir, "nan_in.pb"))
    r = workflow.prune(sparsityd, nan, SAMPLE_CONFIG, built.outputs, workdir, tag="nan")
    sdrun.assert_error(r, 1, ["deconv/conv2d_transpose"])
    assert not os.path.exists(r.out_path)
    # a config that leaves no layer to prune
    cfg = SAMPLE_CONFIG + "".join('skip_layers: "%s"\n' % n for n in built.layers)
    r = workflow.prune(sparsityd, plain, cfg, built.outputs, workdir, tag="none")
    sdrun.assert_error(r, 1, ["no layer to prune"])
    # an output that does not exist
    r = workflow.prune(sparsityd, plain, SAMPLE_CONFIG, ["nope"], workdir, tag="nope")
    sdrun.assert_error(r, 1, ["nope"])


def test_fsync_option(sparsityd, model_cache, workdir):
    """--fsync waits for the disk and changes nothing else; check writes nothing, so it
    refuses the option as a usage error."""
    src, built = model_cache.file("pb", "small", "resource", "infer")
    plain = _freeze(built.graph_def, built.init_ops, built.outputs,
                    os.path.join(workdir, "plain.pb"))
    a = workflow.prune(sparsityd, plain, SAMPLE_CONFIG, built.outputs, workdir, tag="a")
    b = workflow.prune(sparsityd, plain, SAMPLE_CONFIG, built.outputs, workdir, tag="b",
                       extra=["--fsync"])
    assert a.rc == 0 and b.rc == 0, (a.stderr, b.stderr)
    with open(a.out_path, "rb") as fa, open(b.out_path, "rb") as fb:
        assert fa.read() == fb.read()
    assert a.json()["totals"] == b.json()["totals"]
    r = workflow.check(sparsityd, plain, extra=["--fsync"])
    assert r.rc == 2 and "not accepted" in r.stderr
