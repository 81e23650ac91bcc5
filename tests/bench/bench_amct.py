"""bench_amct: sparsityd.tensorflow.create_prune_retrain_model (insert into the live graph,
in place) against the CLI path a user would otherwise take from the same graph, on a
Keras ResNet50 training graph (learning phase 1, tf_keras, weights=None).

  A  create_prune_retrain_model(graph, ...)      export, `sparsityd insert`, in-place edit
  B  `sparsityd insert` on the exported MetaGraphDef + tf.compat.v1.train.import_meta_graph
     of its output into a new graph (what the README's "insert, step by step" does)
  B+ B plus the export_meta_graph and file write that B needs first (printed alongside)

Target: A <= 1.2 x B (median of the per-pair ratios).

Method: pairs A B A B ... (default 7 after one untimed warm-up pair), in one process, so
both arms see the same page cache and CPU state; each A gets a freshly built graph (the
build is not timed; A edits its graph in place); B reads a graph without changing it. The
per-pair ratio A/B is reported with median, min and max; the arms' own medians and spread
(max - min) too. Correctness: on the warm-up pair the in-place graph and B's imported graph
must hold the same node set apart from the Saver import_meta_graph adds (exit 1 if not).

usage: SPARSITYD_BIN=build/daemon/sparsityd PYTHONPATH=python \
       .venv/bin/python tests/bench/bench_amct.py [--pairs N] [--size PX] [--workdir DIR]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402

import workflow  # noqa: E402
from sparsityd import _binary  # noqa: E402
import sparsityd.tensorflow as amct  # noqa: E402

tf1 = tf.compat.v1
CONFIG = "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } } }\n"


def build(size):
    b = workflow.build_keras_phase("ResNet50", size, 10, 1, seed=1)
    return b.graph, list(b.outputs)


def arm_a(graph, outputs, cfg, work):
    t0 = time.perf_counter()
    amct.create_prune_retrain_model(graph, outputs, os.path.join(work, "a.record.txt"), cfg)
    return time.perf_counter() - t0


def arm_b(graph, outputs, cfg, work):
    """Returns (seconds of CLI insert + import_meta_graph, seconds of export + write,
    imported graph)."""
    t0 = time.perf_counter()
    with graph.as_default():
        meta = tf1.train.export_meta_graph(graph=graph)
    src = os.path.join(work, "b.meta")
    with open(src, "wb") as f:
        f.write(meta.SerializeToString())
    t1 = time.perf_counter()
    out = os.path.join(work, "b.out.meta")
    subprocess.run([_binary.path(), "insert", "--model", src, "--config", cfg, "--outputs",
                    ",".join(outputs), "--record", os.path.join(work, "b.record.txt"),
                    "-o", out, "--json"], check=True, stdout=subprocess.DEVNULL)
    g = tf.Graph()
    with g.as_default():
        tf1.train.import_meta_graph(out)
    t2 = time.perf_counter()
    return t2 - t1, t1 - t0, g


def spread(xs):
    return "median %.3f s  min %.3f  max %.3f  spread %.3f" % (
        statistics.median(xs), min(xs), max(xs), max(xs) - min(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--size", type=int, default=224, help="input size (ResNet50 >= 32)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="bench_amct-")
    os.makedirs(work, exist_ok=True)
    cfg = os.path.join(work, "retrain.cfg")
    with open(cfg, "w") as f:
        f.write(CONFIG)

    # Warm-up pair, untimed, with the correctness check.
    g, outputs = build(a.size)
    arm_a(g, outputs, cfg, work)
    g_ref, _ = build(a.size)
    _, _, imported = arm_b(g_ref, outputs, cfg, work)
    in_place = {n.name for n in g.as_graph_def().node}
    cli = {n.name for n in imported.as_graph_def().node}
    extra = sorted(n for n in cli - in_place if not n.startswith("save/"))
    if in_place - cli or extra:
        print("MISMATCH: only in place %s, only CLI path %s" % (
            sorted(in_place - cli)[:10], extra[:10]))
        return 1
    print("ResNet50 %dx%d training graph: %d nodes before insert, %d after" % (
        a.size, a.size, len(g_ref.as_graph_def().node), len(in_place)))

    ta, tb, tbx, ratio, ratio_x = [], [], [], [], []
    for _ in range(a.pairs):
        g, _ = build(a.size)
        ta.append(arm_a(g, outputs, cfg, work))
        b, bx, _ = arm_b(g_ref, outputs, cfg, work)
        tb.append(b)
        tbx.append(b + bx)
        ratio.append(ta[-1] / b)
        ratio_x.append(ta[-1] / (b + bx))
    print("pairs: %d" % a.pairs)
    print("A  create_prune_retrain_model     %s" % spread(ta))
    print("B  CLI insert + import_meta_graph %s" % spread(tb))
    print("B+ export + B                     %s" % spread(tbx))
    print("A/B  per pair: median %.3f  min %.3f  max %.3f   (target <= 1.2: %s)" % (
        statistics.median(ratio), min(ratio), max(ratio),
        "met" if statistics.median(ratio) <= 1.2 else "NOT met"))
    print("A/B+ per pair: median %.3f  min %.3f  max %.3f" % (
        statistics.median(ratio_x), min(ratio_x), max(ratio_x)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
