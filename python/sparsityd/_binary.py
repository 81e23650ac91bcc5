"""Where the sparsityd executable is.

`pip install` puts the binary in the environment's scripts directory (a venv's bin/), next
to this package; the package never runs a binary from elsewhere unless asked to, so the
engine and the Python code a user has installed are the same build.
"""

import os
import shutil
import sysconfig

from .errors import SparsitydError

__all__ = ["path"]


def _installed() -> "list[str]":
    dirs = [sysconfig.get_path("scripts")]
    user = sysconfig.get_path("scripts", scheme=sysconfig.get_preferred_scheme("user"))
    if user not in dirs:
        dirs.append(user)
    return [os.path.join(d, "sparsityd") for d in dirs if d]


def path() -> str:
    """The sparsityd binary to run: $SPARSITYD_BIN when set, else the one installed with
    this package, else `sparsityd` on PATH. Raises SparsitydError when there is none."""
    env = os.environ.get("SPARSITYD_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise SparsitydError("SPARSITYD_BIN=%s is not an executable file" % env)
    for cand in _installed():
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    found = shutil.which("sparsityd")
    if found:
        return found
    raise SparsitydError("the sparsityd binary was not found (looked in %s and on PATH); "
                         "install the package with `pip install .` from a sparsityd checkout, "
                         "or set SPARSITYD_BIN" % ", ".join(_installed()))
