"""sparsityd from Python.

- `sparsityd.Client`: the daemon's REST API (submit, wait, download, ...).
- `sparsityd.tensorflow`: AMCT's `create_prune_retrain_model` / `save_prune_retrain_model`
  on a live tf.Graph (the only module that imports TensorFlow).
- `python -m sparsityd ...`: the command line, the binary installed with this package.

Attributes are imported on first use, so `import sparsityd` costs nothing and needs no
HTTP library until a Client is made.
"""

from typing import Any

from ._version import __version__
from .errors import *  # noqa: F401,F403  (stdlib only)
from .errors import __all__ as _errors_all

__all__ = ["Client", "__version__"] + list(_errors_all)


def __getattr__(name: str) -> Any:
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError("module 'sparsityd' has no attribute %r" % name)
