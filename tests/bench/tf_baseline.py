"""The usual way, for the benchmark: what a TensorFlow user writes without sparsityd.

usage: tf_baseline.py prune  IN.pb OUT.pb --outputs a,b
       tf_baseline.py export IN.pb OUT.pb --outputs a,b --record R

Loads the whole GraphDef with TensorFlow's protobuf (graph_pb2), decodes each weight with
tf.make_ndarray, computes the 2:4 mask with numpy (vectorised: prune axis last, pad to a
multiple of 4, groups of 4, stable argsort of -|w|, keep the first 2), multiplies, stores
the result with tf.make_tensor_proto and writes the .pb.

prune:  every MatMul / Conv2D / Conv2DBackpropInput on the path to the outputs whose input
        1 traces through Identity to a Const (skipping what sparsityd skips: transpose_a,
        dtype, shared weight, prune axis of length <= 2).
export: the same job on the frozen masked graph: for each layer of the record, the mask
        the graph would use (fresh from the weight when the frozen step says refresh, else
        the frozen mask constant), weight * mask into the weight constant, the layer
        pointed back at it, and the inserted nodes (plus nodes that only fed them) gone.

Prints one JSON line with the phase times (import of TensorFlow, load, masks, write).
"""
import argparse
import json
import os
import re
import sys
import time

T0 = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import graph_pb2  # noqa: E402

T_IMPORT = time.perf_counter() - T0

LAYER_TYPES = ("MatMul", "Conv2D", "Conv2DBackpropInput")
FLOATS = (tf.float32.as_datatype_enum, tf.float64.as_datatype_enum,
          tf.float16.as_datatype_enum)


def node_name(inp):
    return inp.lstrip("^").split(":")[0]


def mask_2of4(w, axis, layer):
    """keep[] (bool, w's shape): per group of 4 along axis, the 2 largest |w|, lower index
    first on ties; the last group padded with zeros."""
    a = np.abs(np.moveaxis(w, axis, -1))
    if np.isnan(a).any():
        raise SystemExit(f"tf_baseline: NaN in the weight of layer '{layer}'")
    c = a.shape[-1]
    pad = (-c) % 4
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
    groups = a.reshape(-1, 4)
    order = np.argsort(-groups, axis=1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :2], True, axis=1)
    keep = keep.reshape(a.shape)[..., :c]
    return np.moveaxis(keep, -1, axis)


def prune_axis(node):
    if node.op == "Conv2D":
        return 2
    if node.op == "Conv2DBackpropInput":
        return 3
    return 1 if node.attr["transpose_b"].b else 0


class Graph:
    def __init__(self, gd):
        self.gd = gd
        self.by_name = {n.name: n for n in gd.node}

    def trace(self, inp):
        n = self.by_name.get(node_name(inp))
        while n is not None and n.op in ("Identity", "ReadVariableOp") and n.input:
            n = self.by_name.get(node_name(n.input[0]))
        return n

    def consumers(self):
        c = {}
        for n in self.gd.node:
            for i in n.input:
                if not i.startswith("^"):
                    c.setdefault(node_name(i), []).append(n)
        return c


def store(const, w):
    const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(w))


def prune(g, outputs):
    # Layers on the data path to the outputs.
    seen, stack = set(), [o for o in outputs]
    while stack:
        name = stack.pop()
        if name in seen or name not in g.by_name:
            continue
        seen.add(name)
        stack.extend(node_name(i) for i in g.by_name[name].input if not i.startswith("^"))
    layers = [n for n in g.gd.node if n.op in LAYER_TYPES and n.name in seen]
    readers = {}
    for n in layers:
        c = g.trace(n.input[1]) if len(n.input) > 1 else None
        if c is not None:
            readers.setdefault(c.name, []).append(n)
    done = 0
    for n in layers:
        if n.op == "MatMul" and n.attr["transpose_a"].b:
            continue
        c = g.trace(n.input[1])
        if c is None or c.op != "Const" or len(readers[c.name]) != 1:
            continue
        if c.attr["value"].tensor.dtype not in FLOATS:
            continue
        w = tf.make_ndarray(c.attr["value"].tensor)
        axis = prune_axis(n)
        if w.ndim <= axis or w.shape[axis] <= 2:
            continue
        keep = mask_2of4(w, axis, n.name)
        store(c, w * keep.astype(w.dtype))
        done += 1
    return done


def read_record(path):
    with open(path) as f:
        text = f.read()
    layers = []
    for chunk in text.split("prune_record")[1:]:
        name = re.search(r'selective_prune\s*\{\s*name:\s*"([^"]*)"', chunk).group(1)
        attrs = {}
        for m in re.finditer(r'attr\s*\{\s*name:\s*"(\w+)"\s*type:\s*(\w+)([^}]*)\}', chunk):
            key, typ, body = m.groups()
            if typ == "INT":
                attrs[key] = int(re.search(r"i:\s*(-?\d+)", body).group(1))
            elif typ == "STRING":
                attrs[key] = re.search(r's:\s*"([^"]*)"', body).group(1)
        layers.append((name, attrs))
    return layers


def export(g, record):
    for name, attrs in record:
        layer = g.by_name[name]
        scope = attrs["scope"]
        mv = g.by_name[scope + "/mask_value"]
        wc = g.trace(attrs["weight_input"])
        step = int(tf.make_ndarray(g.trace(scope + "/step").attr["value"].tensor))
        freq = attrs["update_freq"]
        w = tf.make_ndarray(wc.attr["value"].tensor)
        refresh = step == 0 if freq == 0 else step % freq == 0
        if refresh:
            keep = mask_2of4(w, attrs["prune_axis"], name)
        else:
            keep = tf.make_ndarray(g.trace(mv.input[2]).attr["value"].tensor) != 0
        store(wc, w * keep.astype(w.dtype))
        layer.input[1] = attrs["weight_input"]
    # Delete the inserted nodes, then nodes whose every reader was deleted.
    cons = g.consumers()
    live = {k: len(v) for k, v in cons.items()}
    gone = {n.name for n in g.gd.node
            if n.name.startswith("sparsityd/") or "/sparsityd/" in n.name}
    stack = list(gone)
    while stack:
        for i in g.by_name[stack.pop()].input:
            if i.startswith("^"):
                continue
            p = node_name(i)
            if p in gone:
                continue
            live[p] -= 1
            if live[p] == 0:
                gone.add(p)
                stack.append(p)
    keep_nodes = [n for n in g.gd.node if n.name not in gone]
    for n in keep_nodes:
        ins = [i for i in n.input if node_name(i) not in gone]
        if len(ins) != len(n.input):
            del n.input[:]
            n.input.extend(ins)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(g.gd.versions)
    out.library.CopyFrom(g.gd.library)
    out.node.extend(keep_nodes)
    g.gd = out
    return len(record)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("prune", "export"))
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--record")
    a = ap.parse_args()
    t = time.perf_counter()
    gd = graph_pb2.GraphDef()
    with open(a.src, "rb") as f:
        gd.ParseFromString(f.read())
    g = Graph(gd)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    if a.mode == "prune":
        n = prune(g, a.outputs.split(","))
    else:
        if not a.record:
            sys.exit("tf_baseline: export needs --record")
        n = export(g, read_record(a.record))
    t_mask = time.perf_counter() - t
    t = time.perf_counter()
    with open(a.dst, "wb") as f:
        f.write(g.gd.SerializeToString())
    t_write = time.perf_counter() - t
    print(json.dumps({"mode": a.mode, "layers": n, "import_s": round(T_IMPORT, 3),
                      "load_s": round(t_load, 3), "mask_s": round(t_mask, 3),
                      "write_s": round(t_write, 3)}))


if __name__ == "__main__":
    main()
