"""`python -m sparsityd ARGS...` is `sparsityd ARGS...`: the installed binary, exec'd, so
its exit status, signals and output are the CLI's own."""

import os
import sys

from ._binary import path
from .errors import SparsitydError


def main() -> None:
    try:
        exe = path()
    except SparsitydError as err:
        sys.stderr.write("sparsityd: %s\n" % err)
        sys.exit(3)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, ["sparsityd"] + sys.argv[1:])


if __name__ == "__main__":
    main()
