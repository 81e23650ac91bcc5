"""The Python package as `pip install .` installs it (scripts/test.sh does, into .venv):
the package the tests import is the installed one, its binary is the one installed next to
it, `python -m sparsityd` is the CLI, and the optional parts stay optional.
TensorFlow-free: runs in any venv where the package is installed."""

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request

import pytest

import daemon as D

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def py(code, env=None):
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd="/", timeout=120)
    assert p.returncode == 0, "%s\n%s" % (p.stdout, p.stderr)
    return p.stdout


def env_without_bin():
    env = dict(os.environ)
    env.pop("SPARSITYD_BIN", None)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def installed_bin():
    out = py("import sparsityd._binary as b; print(b.path())", env_without_bin()).strip()
    return out


def test_the_installed_package_is_imported():
    import sparsityd
    where = os.path.realpath(sparsityd.__file__)
    assert not where.startswith(os.path.join(os.path.realpath(REPO), "python") + os.sep), (
        "tests import sparsityd from the source tree (%s), not the installed package: "
        "run `pip install .` (scripts/test.sh does) and unset PYTHONPATH" % where)
    for f in ("py.typed", "client.py", "errors.py", "tensorflow.py", "_version.py"):
        assert os.path.isfile(os.path.join(os.path.dirname(where), f)), f


def test_binary_installed_next_to_the_package(installed_bin):
    assert os.path.dirname(installed_bin) == sysconfig.get_path("scripts"), installed_bin
    assert os.access(installed_bin, os.X_OK)
    # the daemon's half, which `sparsityd serve` runs from the same directory
    assert os.access(os.path.join(os.path.dirname(installed_bin), "sparsityd-server"), os.X_OK)


def test_serve_without_the_server_binary_is_a_clear_error(sparsityd, tmp_path):
    """A sparsityd copied alone still runs the stages; serve names what is missing."""
    lone = tmp_path / "sparsityd"
    shutil.copy(sparsityd, lone)
    p = subprocess.run([str(lone), "version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(lone), "serve"], capture_output=True, text=True, timeout=60)
    want = "cannot run the daemon's binary %s: No such file or directory" % (
        tmp_path / "sparsityd-server")
    assert p.returncode == 1 and want in p.stderr, (p.returncode, p.stderr)


def test_python_m_sparsityd_is_the_cli(installed_bin):
    import sparsityd
    p = subprocess.run([sys.executable, "-m", "sparsityd", "version"], capture_output=True,
                       text=True, env=env_without_bin(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert sparsityd.__version__ in p.stdout, (p.stdout, sparsityd.__version__)
    # exit statuses pass through: usage error is 2
    p = subprocess.run([sys.executable, "-m", "sparsityd", "insert"], capture_output=True,
                       text=True, env=env_without_bin(), timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "usage" in p.stderr.lower() or "--model" in p.stderr, p.stderr


def test_missing_binary_is_a_clear_error():
    env = env_without_bin()
    env["SPARSITYD_BIN"] = "/nonexistent/sparsityd"
    p = subprocess.run([sys.executable, "-m", "sparsityd", "version"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 3 and "SPARSITYD_BIN=/nonexistent/sparsityd" in p.stderr, p.stderr


def test_optional_parts_stay_optional():
    # import sparsityd loads neither the HTTP library nor TensorFlow; the client needs
    # only its HTTP library
    py("import sys, sparsityd\n"
       "assert 'urllib3' not in sys.modules and 'tensorflow' not in sys.modules, sys.modules\n"
       "from sparsityd import Client, ProblemError, JobFailed, EngineError, SparsitydError\n"
       "assert 'urllib3' in sys.modules and 'tensorflow' not in sys.modules\n",
       env_without_bin())


def test_installed_binary_gives_the_same_bytes_as_the_build(installed_bin, sparsityd, tmp_path):
    """The wheel's binary is a release build of the same sources: same output bytes."""
    model = D.write_mlp(str(tmp_path / "mlp.pb"), 3, 64)
    cfg = tmp_path / "c.cfg"
    cfg.write_text(D.CFG)
    outs = []
    for i, b in enumerate((installed_bin, sparsityd)):
        out, rec = tmp_path / ("o%d.pb" % i), tmp_path / ("r%d.txt" % i)
        D.cli(b, "insert", "--model", model, "--config", cfg, "--outputs", "out:0",
              "--record", rec, "-o", out)
        outs.append((out.read_bytes(), rec.read_bytes()))
    assert outs[0] == outs[1]


def test_installed_daemon_serves_its_own_openapi(installed_bin, tmp_path):
    """openapi.yaml is compiled into the binary: a lone installed daemon serves it."""
    dmn = D.Daemon(installed_bin, str(tmp_path / "data"))
    dmn.start()
    try:
        with urllib.request.urlopen(dmn.url + "/openapi.yaml", timeout=10) as r:
            served = r.read()
    finally:
        dmn.stop(timeout=20)
    with open(os.path.join(REPO, "openapi.yaml"), "rb") as f:
        assert served == f.read()
