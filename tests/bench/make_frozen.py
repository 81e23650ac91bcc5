"""Builds the frozen models for the prune / export benchmark (bench_stages.py).

usage: make_frozen.py WORKDIR [--skip-large] [--force] [--sparsityd PATH]
                      [--large-layers N] [--masked-large-layers N]

Models (written under WORKDIR, reused when already there unless --force):
  resnet50_frozen.pb         tf_keras ResNet50 (weights=None, 224x224x3, 1000 classes) in
                             inference phase, frozen with convert_variables_to_constants
                             (about 100 MB): the input of `sparsityd prune`.
  resnet50_masked_frozen.pb  the same inference graph as a MetaGraphDef, passed through
  resnet50_masked.record     `sparsityd insert`, imported, initialised, one run of the
                             `sparsityd/update` op (as after training: the stored mask is
                             the 2:4 mask of the weight, step 1), then frozen (about 200 MB:
                             every weight now has a mask constant of its size). The input
                             of `sparsityd export`.
  synthetic_frozen.pb        a chain of MatMul layers, each with a 4096x4096 float32 Const
                             weight (64 MiB) read through an Identity, 22 layers = 1.48 GB.
                             Written node by node (a GraphDef is the concatenation of
                             `0x0a <varint len> <NodeDef>`), so Python never holds more than
                             one weight.
  synthetic_masked_frozen.pb the export input of the same kind, about 1.5 GB: a protobuf
  synthetic_masked.record    message cannot exceed 2 GiB, and a masked frozen graph holds a
                             mask constant next to every weight, so this one has half the
                             layers (11 weights + 11 masks). Built like the ResNet50 one
                             (insert, import, init, update, freeze), with TensorFlow.
The synthetic models are skipped with --skip-large.

Writes WORKDIR/models.json (what bench_stages.py reads) and prints it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import (  # noqa: E402
    attr_value_pb2, graph_pb2, node_def_pb2, tensor_pb2)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
SAMPLE_CFG = "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } } }\n"
DIM = 4096


def log(msg):
    print("make_frozen: " + msg, file=sys.stderr, flush=True)


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def sparsityd_insert(sd, cfg, model, outputs, record, out):
    subprocess.run([sd, "insert", "--model", model, "--config", cfg, "--outputs", outputs,
                    "--record", record, "-o", out], check=True, stdout=subprocess.DEVNULL)


def freeze_masked(sess, graph, outputs):
    """Initialises everything, runs the update once (mask := 2:4 of the weight, step 1,
    the state after training), and freezes on outputs."""
    sess.run(tf.compat.v1.global_variables_initializer())
    sess.run(graph.get_operation_by_name("sparsityd/init"))
    sess.run(graph.get_operation_by_name("sparsityd/update"))
    return tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, graph.as_graph_def(), outputs)


# ---------------------------------------------------------------- ResNet50


def resnet50(work, sd, cfg):
    import tf_keras

    frozen = os.path.join(work, "resnet50_frozen.pb")
    meta = os.path.join(work, "resnet50_infer.meta")
    tf.compat.v1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        tf_keras.backend.set_learning_phase(0)
        model = tf_keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3),
                                               classes=1000)
        out = model.output.op.name
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            gd = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, g.as_graph_def(), [out])
        write_atomic(frozen, gd.SerializeToString())
        write_atomic(meta, tf.compat.v1.train.export_meta_graph(graph=g).SerializeToString())
    tf_keras.backend.clear_session()

    masked_meta = os.path.join(work, "resnet50_infer_masked.meta")
    record = os.path.join(work, "resnet50_masked.record")
    masked = os.path.join(work, "resnet50_masked_frozen.pb")
    sparsityd_insert(sd, cfg, meta, out, record, masked_meta)
    g2 = tf.Graph()
    with g2.as_default():
        tf.compat.v1.train.import_meta_graph(masked_meta)
        with tf.compat.v1.Session(graph=g2) as sess:
            gd2 = freeze_masked(sess, g2, [out])
    write_atomic(masked, gd2.SerializeToString())
    os.unlink(masked_meta)
    return out, frozen, masked, record


# ---------------------------------------------------------------- synthetic


def varint(n):
    b = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            b.append(x | 0x80)
        else:
            b.append(x)
            return bytes(b)


class GraphWriter:
    """Streams a GraphDef: each node is field 1 (length-delimited) of GraphDef."""

    def __init__(self, path):
        self.path = path
        self.tmp = path + ".tmp"
        self.f = open(self.tmp, "wb")
        self.nodes = 0

    def node(self, name, op, inputs=(), attrs=None):
        n = node_def_pb2.NodeDef(name=name, op=op)
        n.input.extend(inputs)
        for k, v in (attrs or {}).items():
            n.attr[k].CopyFrom(v)
        data = n.SerializeToString()
        self.f.write(b"\x0a" + varint(len(data)))
        self.f.write(data)
        self.nodes += 1

    def close(self):
        versions = graph_pb2.GraphDef()
        versions.versions.CopyFrom(tf.Graph().as_graph_def().versions)
        self.f.write(versions.SerializeToString())
        self.f.close()
        os.replace(self.tmp, self.path)


def type_attr(dt=tf.float32):
    return attr_value_pb2.AttrValue(type=dt.as_datatype_enum)


def synthetic(path, layers, seed=0):
    """x -> [MatMul(w_i via Identity) -> Relu] * layers; returns the output name."""
    w = GraphWriter(path)
    shape = tf.TensorShape([None, DIM]).as_proto()
    w.node("x", "Placeholder", attrs={"dtype": type_attr(),
                                      "shape": attr_value_pb2.AttrValue(shape=shape)})
    prev = "x"
    rng = np.random.default_rng(seed)
    for i in range(layers):
        weight = rng.standard_normal((DIM, DIM), dtype=np.float32)
        weight *= np.float32(1.0 / 64)
        tp = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum,
                                      tensor_shape=tf.TensorShape([DIM, DIM]).as_proto(),
                                      tensor_content=weight.tobytes())
        del weight
        w.node(f"dense_{i}/kernel", "Const",
               attrs={"dtype": type_attr(), "value": attr_value_pb2.AttrValue(tensor=tp)})
        del tp
        w.node(f"dense_{i}/kernel/read", "Identity", [f"dense_{i}/kernel"],
               {"T": type_attr()})
        w.node(f"dense_{i}/MatMul", "MatMul", [prev, f"dense_{i}/kernel/read"],
               {"T": type_attr(), "transpose_a": attr_value_pb2.AttrValue(b=False),
                "transpose_b": attr_value_pb2.AttrValue(b=False)})
        w.node(f"dense_{i}/Relu", "Relu", [f"dense_{i}/MatMul"], {"T": type_attr()})
        prev = f"dense_{i}/Relu"
    w.close()
    return prev


def synthetic_masked(work, sd, cfg, layers):
    plain = os.path.join(work, "synthetic_half.pb")
    inserted = os.path.join(work, "synthetic_half_inserted.pb")
    record = os.path.join(work, "synthetic_masked.record")
    masked = os.path.join(work, "synthetic_masked_frozen.pb")
    out = synthetic(plain, layers, seed=1)
    sparsityd_insert(sd, cfg, plain, out, record, inserted)
    os.unlink(plain)
    gd = graph_pb2.GraphDef()
    with open(inserted, "rb") as f:
        gd.ParseFromString(f.read())
    os.unlink(inserted)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.import_graph_def(gd, name="")
        del gd
        with tf.compat.v1.Session(graph=g) as sess:
            frozen = freeze_masked(sess, g, [out])
    data = frozen.SerializeToString()
    del frozen
    write_atomic(masked, data)
    return out, masked, record


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", nargs="?", default=os.path.join(ROOT, "build", "bench-models"))
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--sparsityd", default=os.path.join(ROOT, "build", "daemon", "sparsityd"))
    ap.add_argument("--large-layers", type=int, default=22)
    ap.add_argument("--masked-large-layers", type=int, default=11)
    a = ap.parse_args()
    a.work = os.path.abspath(a.work)
    os.makedirs(a.work, exist_ok=True)
    cfg = os.path.join(a.work, "sample.cfg")
    with open(cfg, "w") as f:
        f.write(SAMPLE_CFG)
    manifest_path = os.path.join(a.work, "models.json")
    old = {}
    if os.path.exists(manifest_path) and not a.force:
        with open(manifest_path) as f:
            old = {m["name"]: m for m in json.load(f)["models"]}

    def have(name):
        m = old.get(name)
        return m and all(os.path.exists(m[k]) for k in ("model", "masked", "record"))

    models = []
    if have("resnet50"):
        models.append(old["resnet50"])
    else:
        t = time.time()
        out, frozen, masked, record = resnet50(a.work, a.sparsityd, cfg)
        log(f"resnet50 built in {time.time() - t:.1f} s")
        models.append({"name": "resnet50", "outputs": out, "model": frozen, "masked": masked,
                       "record": record, "masked_outputs": out, "large": False})
    if not a.skip_large:
        if have("synthetic"):
            models.append(old["synthetic"])
        else:
            t = time.time()
            frozen = os.path.join(a.work, "synthetic_frozen.pb")
            out = synthetic(frozen, a.large_layers)
            log(f"synthetic built in {time.time() - t:.1f} s")
            t = time.time()
            mout, masked, record = synthetic_masked(a.work, a.sparsityd, cfg,
                                                    a.masked_large_layers)
            log(f"synthetic masked built in {time.time() - t:.1f} s")
            models.append({"name": "synthetic", "outputs": out, "model": frozen,
                           "masked": masked, "record": record, "masked_outputs": mout,
                           "large": True})
    doc = {"config": cfg, "models": models}
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(manifest_path + ".tmp", manifest_path)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
