"""Builds the benchmark models with real TensorFlow (a test/bench dependency only).

resnet50_train.meta: Keras ResNet50 (weights=None) built in graph mode in training
phase and exported as a MetaGraphDef, the graph a training cluster hands to insert.
Prints "<path> <output node>" per model for bench_insert.
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


def resnet50_train(path):
    tf.compat.v1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        tf_keras.backend.set_learning_phase(1)
        model = tf_keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    with open(path, "wb") as f:
        f.write(meta.SerializeToString())
    return model.output.op.name


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out, exist_ok=True)
    p = os.path.join(out, "resnet50_train.meta")
    print(p, resnet50_train(p))


if __name__ == "__main__":
    main()
