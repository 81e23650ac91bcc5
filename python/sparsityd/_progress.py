"""Byte progress bars for uploads and downloads.

tqdm is an optional dependency: it is imported only when a bar is actually shown, and a
missing tqdm turns bars off (with one warning if the caller asked for them explicitly).
"""

from __future__ import annotations

import sys
import warnings


class _Off:
    """The bar when none is shown."""

    def update(self, n: int) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass


_warned = False


def bar(enabled: bool | None, total: int | None, desc: str):
    """A bar counting bytes up to total. enabled None: only when stderr is a terminal.
    The result has update(n), reset(total) and close()."""
    global _warned
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _Off()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if not _warned:
            warnings.warn("progress bars need tqdm (pip install tqdm); showing none", stacklevel=3)
            _warned = True
        return _Off()
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False, dynamic_ncols=True)
