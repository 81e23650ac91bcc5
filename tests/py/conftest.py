"""Every fixture of the pytest suites, in one place.

Two kinds of suite share this file. The HTTP-only ones (test_api_*.py, test_hostile.py,
test_daemon_crash.py, test_stress.py and the others tests/py/meson.build lists) talk to a
real `sparsityd serve` and need only pytest, pyyaml and jsonschema; meson runs them as
the suites 'http' and 'http-long'. The others drive real TensorFlow. Nothing here imports TensorFlow at collection time: the
model builders (models.py) are imported by the first test that asks model_cache for a
model, so `pytest tests/py/test_hostile.py` runs in a venv without TensorFlow.

Fixtures:
  sparsityd       path of the binary (SPARSITYD_BIN, default build/daemon/sparsityd)
  serve_bin       the same, checked to have `serve` (the HTTP daemon)
  workdir         a per-test directory (str)
  model_cache     builds each TensorFlow test model once per session (TensorFlow)
  contract        openapi.yaml as a response checker (daemon.Contract)
  daemons         starts daemons for one test; stops them and fails the test on a
                  sanitizer report
  module_daemons  the same, shared by a module's tests
  d               one daemon with default options, shared by a module's tests
  big_model       a big synthetic GraphDef (daemon.BIG_LAYERS x BIG_K), so a prune job
                  runs for seconds
Helpers the tests call (submit_ok, run_ok, start_big, ...) live in daemon.py.
"""

import os
import pathlib
import sys

# Set before anything imports TensorFlow (models.py, or a test module that needs it).
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

import daemon as D  # noqa: E402  (standard library only)


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


# ---------------------------------------------------------------------------------------
# TensorFlow models


class ModelCache:
    """Builds each model once per session and writes it in each requested format once.
    models.py (and with it TensorFlow) is imported on the first model asked for."""

    def __init__(self, root):
        self.root = str(root)
        self._built = {}
        self._files = {}

    def built(self, kind, *args):
        import models
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
        import models
        key = (fmt, kind) + tuple(args)
        b = self.built(kind, *args)
        if key not in self._files:
            d = os.path.join(self.root, "_".join(str(k) for k in (kind,) + tuple(args)))
            self._files[key] = models.write_model(b, d, fmt)
        return self._files[key], b


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return ModelCache(tmp_path_factory.mktemp("models"))


# ---------------------------------------------------------------------------------------
# The HTTP daemon


@pytest.fixture(scope="session")
def serve_bin():
    """The sparsityd binary, which must have `serve` (the HTTP daemon)."""
    path = D.binary_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("sparsityd binary not found at %s (build it, or set SPARSITYD_BIN)" % path)
    if not D.serve_available(path):
        pytest.fail("`%s serve --help` fails: the HTTP daemon is not built" % path)
    return path


@pytest.fixture(scope="session")
def contract():
    return D.Contract()


@pytest.fixture
def daemons(serve_bin, tmp_path):
    f = D.DaemonFactory(serve_bin, tmp_path)
    yield f
    f.close()


@pytest.fixture(scope="module")
def module_daemons(serve_bin, tmp_path_factory):
    f = D.DaemonFactory(serve_bin, tmp_path_factory.mktemp("daemon"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def d(module_daemons):
    """One shared daemon for the tests that need no special option."""
    return module_daemons.new()


@pytest.fixture(scope="session")
def big_model(tmp_path_factory):
    """A big binary GraphDef (by default 12 MatMul layers of 4096x4096 float32, 768 MiB;
    SPARSITYD_TEST_BIG_LAYERS shrinks it) so a prune job takes a few seconds. Output
    node "out"."""
    d = tmp_path_factory.mktemp("bigmodel")
    path = D.write_mlp(os.path.join(str(d), "big.pb"), D.BIG_LAYERS, D.BIG_K)
    yield path
    os.unlink(path)
