"""Exceptions raised by the sparsityd Python package.

Every class derives from SparsitydError, so ``except SparsitydError`` catches them all.

- ProblemError: the daemon answered with an RFC 9457 problem+json body.
- JobFailed: a job ended ``failed`` or ``canceled`` (a ProblemError built from the
  job's ``error`` object, so the same ``code``/``line``/``column`` attributes apply).
- EngineError: a local ``sparsityd`` CLI run exited non-zero.
- WaitTimeout: ``Client.wait``/``Client.run`` gave up before the job finished (also a
  TimeoutError).

Location fields (``file``, ``line``, ``column``, ``node``, ``layer``) are None when the
source does not name them. The daemon sends them as problem members; a job's error and
the CLI's stderr only carry the engine's message, whose ``file:line:col: `` prefix (the
one the engine writes for text inputs, common/sd_err.c) is parsed back into fields.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

__all__ = ["SparsitydError", "ProblemError", "JobFailed", "EngineError", "WaitTimeout"]

LOCATION_FIELDS = ("file", "line", "column", "node", "layer")

# "<file>:<line>:<col>: <text>" as sd_err_at writes it; the file part is matched lazily
# so a name with colons still leaves the last two numbers as line and column.
_AT = re.compile(r"(?P<file>[^\n]+?):(?P<line>\d+):(?P<column>\d+): ")


def _location_from_message(message: str) -> dict[str, Any]:
    m = _AT.search(message or "")
    if not m:
        return {}
    return {"file": m["file"], "line": int(m["line"]), "column": int(m["column"])}


class SparsitydError(Exception):
    """Base class of every error this package raises (also used for local misuse,
    e.g. a missing binary or a bad argument detected before any request is sent)."""


class ProblemError(SparsitydError):
    """An HTTP answer with an ``application/problem+json`` body.

    Attributes: ``status`` (HTTP status), ``code`` (problem slug, e.g. ``not-found``),
    ``title``, ``detail``, ``type``, the location fields, and ``problem`` (the whole
    dict as received, for members this class does not name).
    """

    def __init__(self, problem: Mapping[str, Any], status: int | None = None):
        self.problem = dict(problem)
        self.status = status if status is not None else self.problem.get("status")
        self.type = self.problem.get("type")
        self.code = self.problem.get("code")
        if self.code is None and isinstance(self.type, str):
            self.code = self.type.rsplit("/", 1)[-1]
        self.title = self.problem.get("title")
        self.detail = self.problem.get("detail")
        for f in LOCATION_FIELDS:
            setattr(self, f, self.problem.get(f))
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.status} {self.code}" if self.status else str(self.code)
        return f"{head}: {self.detail or self.title or 'no detail'}"


class JobFailed(ProblemError):
    """A job ended ``failed`` or ``canceled``.

    ``job`` is the final job document, ``error`` its ``error`` object (``code`` and
    ``message``; None for a job canceled before it failed), ``state`` its state. A
    canceled job without an error gets code ``canceled``.
    """

    def __init__(self, job: Mapping[str, Any]):
        self.job = dict(job)
        self.state = self.job.get("state")
        self.error = self.job.get("error")
        err = self.error or {}
        message = err.get("message") or f"job {self.job.get('id')} was {self.state}"
        problem = {
            "code": err.get("code") or self.state,
            "detail": message,
            "job": self.job.get("id"),
            **_location_from_message(message),
        }
        super().__init__(problem, status=None)

    def _message(self) -> str:
        return f"job {self.job.get('id')} {self.state} ({self.code}): {self.detail}"


class EngineError(SparsitydError):
    """The ``sparsityd`` CLI exited non-zero.

    Attributes: ``returncode``, ``stderr`` (text), ``argv`` (the command run),
    ``message`` (the CLI's ``sparsityd: error:`` line, or the last stderr line), and the
    location fields parsed from that message.
    """

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr or ""
        lines = [l for l in self.stderr.splitlines() if l.strip()]
        marked = [l.split("error:", 1)[1].strip() for l in lines if l.startswith("sparsityd: error:")]
        self.message = marked[-1] if marked else (lines[-1] if lines else "no message")
        loc = _location_from_message(self.message)
        for f in LOCATION_FIELDS:
            setattr(self, f, loc.get(f))
        super().__init__(f"sparsityd exited with status {returncode}: {self.message}")


class WaitTimeout(SparsitydError, TimeoutError):
    """A job had not finished when the caller's timeout ran out; ``job`` is the last job
    document seen (the job itself goes on running)."""

    def __init__(self, job: Mapping[str, Any], timeout: float):
        self.job = dict(job)
        self.timeout = timeout
        super().__init__(f"job {self.job.get('id')} still {self.job.get('state')} after {timeout:g} s")
