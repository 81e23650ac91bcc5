"""Shared fixtures: the sparsityd binary, per-test work dirs, a session cache of built models."""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's own CPU Conv2D supports only NHWC; the oneDNN kernels take NCHW too. TF
# turns oneDNN on by itself only on CPUs with AVX-512 (VNNI/BF16/AMX), so on an AVX2-only
# machine the NCHW test models could not run at all. Asking for it makes every machine
# run the same kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras (Keras 2) has graph mode; Keras 3 has not

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import pytest  # noqa: E402

import models  # noqa: E402


def _binary_path():
    return os.environ.get("SPARSITYD_BIN") or str(REPO / "build" / "daemon" / "sparsityd")


@pytest.fixture(scope="session")
def sparsityd():
    """Path of the sparsityd binary (env SPARSITYD_BIN, default build/daemon/sparsityd)."""
    path = _binary_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("sparsityd binary not found at %s (build it, or set SPARSITYD_BIN)" % path)
    return path


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path)


class ModelCache:
    """Builds each model once per session and writes it in each requested format once."""

    def __init__(self, root):
        self.root = str(root)
        self._built = {}
        self._files = {}

    def built(self, kind, *args):
        key = (kind,) + tuple(args)
        if key not in self._built:
            builder = {
                "small": models.build_small,
                "skips": models.build_skips,
                "consts": models.build_consts,
                "fp16": models.build_fp16,
                "keras": models.build_keras,
            }[kind]
            self._built[key] = builder(*args)
        return self._built[key]

    def file(self, fmt, kind, *args):
        """(path, Built) of the model written as fmt ('pb', 'meta' or 'pbtxt')."""
        key = (fmt, kind) + tuple(args)
        b = self.built(kind, *args)
        if key not in self._files:
            d = os.path.join(self.root, "_".join(str(k) for k in (kind,) + tuple(args)))
            self._files[key] = models.write_model(b, d, fmt)
        return self._files[key], b


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return ModelCache(tmp_path_factory.mktemp("models"))
