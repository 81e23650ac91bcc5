"""``sparsityd.Client``: the daemon's REST API (openapi.yaml) from Python.

    from sparsityd import Client
    c = Client()                                  # SPARSITYD_URL, SPARSITYD_TOKEN
    job = c.run("prune", "model.pb", config="prune.cfg", outputs=["logits"], out_dir="out")
    job["paths"]["model"]                         # out/model, SHA-256 checked

HTTP goes through urllib3 (a pool of keep-alive connections, explicit timeouts). A
multipart upload is an iterator of chunks with a Content-Length computed up front, read
from disk 1 MiB at a time while it is sent; a download is read 1 MiB at a time into the
.part file and the running SHA-256.

Retries (``retries`` bounds them, per request):
- 429 and 503 answers are retried after their Retry-After (else an exponential backoff);
  an upload is then sent again from its files.
- A connection that could not be made (refused, connect timeout) is retried with
  exponential backoff: nothing reached the daemon.
- GET and DELETE are retried after any transport error (reset, read timeout); a DELETE
  whose first attempt was lost and whose retry answers 404 counts as done, a cancel whose
  retry answers 409 returns the job if it is canceled.
- POST /v1/jobs is retried after a transport error only while its body had not been sent
  completely: the daemon makes the job only after the last byte of the multipart body, so
  a cut body cannot have made one. Once the whole body was sent and the answer was lost,
  the job may exist: the client raises SparsitydError saying so instead of retrying, as a
  retry could make a second job silently. (jobs() finds it, by name if one was given.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import urllib.parse
import uuid
from typing import Any, Iterable, Iterator, Mapping, Sequence

import urllib3
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import HTTPError as TransportError

from . import _progress
from .errors import JobFailed, ProblemError, SparsitydError, WaitTimeout

__all__ = ["Client"]

DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL = ("succeeded", "failed", "canceled")
CHUNK = 1 << 20  # read size of uploads and downloads: throughput without memory
LONG_POLL = 30  # seconds one held GET waits (the API allows 0..60)
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 8.0
RETRY_AFTER_MAX = 120.0  # a Retry-After beyond this is waited as this
_ETAG_SHA = re.compile(r'^"([0-9a-f]{64})"$')


def _job_id(job: str | Mapping[str, Any]) -> str:
    jid = job.get("id") if isinstance(job, Mapping) else job
    if not isinstance(jid, str) or not jid:
        raise SparsitydError(f"not a job id or job document: {job!r}")
    return jid


def _outputs(outputs: str | Sequence[str] | None) -> str | None:
    """Comma-separated output names (None when there are none)."""
    if outputs is None:
        return None
    names = outputs.split(",") if isinstance(outputs, str) else list(outputs)
    names = [n.strip() for n in names if n and n.strip()]
    return ",".join(names) if names else None


def _backoff(attempt: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt)


def _retry_after(resp: urllib3.BaseHTTPResponse, attempt: int) -> float:
    value = (resp.headers.get("retry-after") or "").strip()
    if value.isdigit():
        return min(RETRY_AFTER_MAX, float(value))
    if value:
        from email.utils import parsedate_to_datetime
        try:
            return min(RETRY_AFTER_MAX, max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
        except (TypeError, ValueError):
            pass
    return _backoff(attempt)


def _problem(resp: urllib3.BaseHTTPResponse) -> ProblemError:
    """The ProblemError of an error answer (read already). A body that is not problem+json
    (e.g. libmicrohttpd's own 431 page) still gives status, a code and a detail."""
    problem: Any = None
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("application/problem+json", "application/json"):
        try:
            problem = json.loads(resp.data)
        except ValueError:
            problem = None
    if not isinstance(problem, dict):
        text = resp.data.decode("utf-8", "replace").strip()
        problem = {"status": resp.status, "code": f"http-{resp.status}", "title": resp.reason,
                   "detail": text[:500] or resp.reason or "no detail"}
    return ProblemError(problem, status=resp.status)


def _json(resp: urllib3.BaseHTTPResponse) -> Any:
    return json.loads(resp.data)


class _Body:
    """One attempt's multipart body: yields its bytes, reading files CHUNK at a time.
    sent_all turns True only once the consumer has asked for more after the last chunk,
    i.e. the transport has written every byte. A file that cannot be read is kept in
    error (the transport would report it as a broken connection)."""

    def __init__(self, segments: list, bar) -> None:
        self.segments = segments
        self.bar = bar
        self.sent_all = False
        self.error: OSError | None = None

    def __iter__(self) -> Iterator[bytes]:
        for seg in self.segments:
            if isinstance(seg, bytes):
                yield seg
                continue
            path, size = seg
            try:
                f = open(path, "rb")
            except OSError as e:
                self.error = e
                raise
            with f:
                left = size
                while left:
                    try:
                        b = f.read(min(CHUNK, left))
                    except OSError as e:
                        self.error = e
                        raise
                    if not b:
                        raise SparsitydError(f"{path} shrank while it was being uploaded")
                    left -= len(b)
                    self.bar.update(len(b))
                    yield b
        self.sent_all = True


class _Multipart:
    """A multipart/form-data body of text fields and files, made anew for each attempt
    (files are stat'ed and reopened, so a retry sends what is on disk)."""

    def __init__(self, fields: list[tuple[str, str]], files: list[tuple[str, str]]) -> None:
        self.boundary = "sparsityd-" + uuid.uuid4().hex
        self.fields = fields
        self.files = files

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _segments(self) -> list:
        b = self.boundary
        segs: list = []
        for name, value in self.fields:
            segs.append(f'--{b}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                        .encode() + value.encode("utf-8") + b"\r\n")
        for name, path in self.files:
            fname = os.path.basename(path).replace('"', "_").replace("\r", "_").replace("\n", "_")
            segs.append(f'--{b}\r\nContent-Disposition: form-data; name="{name}"; '
                        f'filename="{fname}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                        .encode())
            segs.append((path, os.stat(path).st_size))
            segs.append(b"\r\n")
        segs.append(f"--{b}--\r\n".encode())
        return segs

    def body(self, bar) -> tuple[_Body, int]:
        segs = self._segments()
        length = sum(len(s) if isinstance(s, bytes) else s[1] for s in segs)
        return _Body(segs, bar), length

    def file_bytes(self) -> int:
        return sum(os.stat(p).st_size for _, p in self.files)


class Client:
    """A client of one sparsityd daemon, pooling its connections. One instance may serve
    several threads; their progress bars would interleave.

    url, token: default to env SPARSITYD_URL (else http://127.0.0.1:8080) and
    SPARSITYD_TOKEN (sent as ``Authorization: Bearer``; none when unset or empty).
    timeout: seconds for connecting and for each read or write (a long-poll's read
    gets its wait on top). retries: how many times one request is retried (see the
    module doc). progress: tqdm bars on uploads and downloads; None shows them only
    when stderr is a terminal.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = 60.0, retries: int = 5, progress: bool | None = None):
        self.url = (url or os.environ.get("SPARSITYD_URL") or DEFAULT_URL).rstrip("/")
        if not re.match(r"^https?://[^/]+", self.url):
            raise SparsitydError(f"the daemon's URL must be http://HOST[:PORT] or https://..., "
                                 f"not {self.url!r}")
        if token is None:
            token = os.environ.get("SPARSITYD_TOKEN")
        if retries < 0:
            raise SparsitydError(f"retries must be >= 0, not {retries}")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.progress = progress
        self._headers = {"User-Agent": "sparsityd-python"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        # a daemon behind a reverse proxy may live under a path
        self._prefix = urllib3.util.parse_url(self.url).path or ""
        self._pool = urllib3.connection_from_url(self.url, maxsize=8, block=False,
                                                 retries=False)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- transport --

    def _send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              headers: Mapping[str, str] | None = None, upload: _Multipart | None = None,
              read_timeout: float | None = None, stream: bool = False,
              accept: Iterable[int] = (), bar=None,
              idempotent: bool | None = None) -> tuple[urllib3.BaseHTTPResponse, bool]:
        """Sends one request with the retries of the module doc. Returns the response
        (open when stream, for the caller to close) and whether an earlier attempt may
        have reached the daemon unanswered. An error status not in accept raises
        ProblemError. idempotent (default: GET and DELETE) says whether a request whose
        answer was lost may be sent again."""
        if idempotent is None:
            idempotent = method in ("GET", "DELETE")
        # the connect timeout also bounds each write: urllib3 sets it on the socket
        # until the request is sent
        timeout = urllib3.Timeout(connect=self.timeout, read=read_timeout or self.timeout)
        target = self._prefix + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        lost = False
        attempt = 0
        while True:
            hdrs = {**self._headers, **(headers or {})}
            body = None
            if upload is not None:
                body, length = upload.body(bar)
                hdrs["Content-Type"] = upload.content_type
                hdrs["Content-Length"] = str(length)
                if attempt:
                    bar.reset()
            try:
                resp = self._pool.urlopen(method, target, body=body, headers=hdrs,
                                          timeout=timeout, retries=False, redirect=False,
                                          preload_content=not stream, decode_content=False)
            except TransportError as e:
                if body is not None and body.error is not None:
                    raise SparsitydError(f"{method} {path}: reading the upload failed: "
                                         f"{body.error}") from body.error
                reached = not isinstance(e, ConnectTimeoutError)
                if reached and upload is not None and body.sent_all:
                    raise SparsitydError(
                        f"{method} {path}: the whole upload was sent but the answer was lost "
                        f"({e.__class__.__name__}: {e}); the job may have been created, so "
                        f"the upload is not sent again (that could make a duplicate job): "
                        f"look for it with jobs()") from e
                if reached and upload is None and not idempotent:
                    raise SparsitydError(f"{method} {path}: the answer was lost "
                                         f"({e.__class__.__name__}: {e})") from e
                if attempt >= self.retries:
                    raise SparsitydError(f"{method} {self.url}{path}: {e.__class__.__name__}: "
                                         f"{e} (gave up after {attempt + 1} attempts)") from e
                lost = lost or reached
                time.sleep(_backoff(attempt))
                attempt += 1
                continue
            status = resp.status
            if status in (429, 503) and attempt < self.retries:
                delay = _retry_after(resp, attempt)
                resp.drain_conn()
                resp.release_conn()
                time.sleep(delay)
                attempt += 1
                continue
            if status >= 400 and status not in accept:
                if stream:
                    resp.read(cache_content=True)
                    resp.release_conn()
                raise _problem(resp)
            return resp, lost

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp, _ = self._send(method, path, **kw)
        return _json(resp)

    # -- jobs --

    def submit(self, stage: str, model, config=None, record=None, record_from=None,
               outputs: str | Sequence[str] = (), name: str | None = None, *,
               format: str | None = None, emit_record: bool | None = None) -> dict:
        """Creates a job (POST /v1/jobs), streaming model/config/record from disk.
        Returns the job document (state queued). The engine has not seen the inputs
        yet: a model it rejects makes the job fail later (see wait)."""
        fields = [("stage", stage)]
        outs = _outputs(outputs)
        if outs is not None:
            fields.append(("outputs", outs))
        for key, value in (("name", name), ("format", format), ("record_from",
                           None if record_from is None else _job_id(record_from))):
            if value is not None:
                fields.append((key, value))
        if emit_record is not None:
            fields.append(("emit_record", "true" if emit_record else "false"))
        files = [(part, os.fspath(p)) for part, p in (("model", model), ("config", config),
                                                      ("record", record)) if p is not None]
        for part, p in files:
            if not os.path.isfile(p):
                raise SparsitydError(f"{part}: {p} is not a file")
        upload = _Multipart(fields, files)
        bar = _progress.bar(self.progress, upload.file_bytes(), f"upload {stage}")
        try:
            resp, _ = self._send("POST", "/v1/jobs", upload=upload, bar=bar)
        finally:
            bar.close()
        return _json(resp)

    def get(self, job) -> dict:
        """The job document (GET /v1/jobs/{id})."""
        return self._json("GET", f"/v1/jobs/{_job_id(job)}")

    def wait(self, job, timeout: float | None = None) -> dict:
        """Long-polls the job until it is succeeded, failed or canceled, and returns it.
        Each GET is held by the daemon until the job's ETag changes (If-None-Match), so
        nothing polls. Raises JobFailed for failed/canceled, WaitTimeout after timeout
        seconds (None: no limit)."""
        jid = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        resp, _ = self._send("GET", f"/v1/jobs/{jid}")
        doc, etag = _json(resp), resp.headers.get("etag")
        while doc.get("state") not in TERMINAL:
            wait = LONG_POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(doc, timeout)
                wait = max(1, min(LONG_POLL, math.ceil(left)))
            headers = {"If-None-Match": etag} if etag else {}
            resp, _ = self._send("GET", f"/v1/jobs/{jid}", params={"wait": wait},
                                 headers=headers, read_timeout=wait + self.timeout)
            if resp.status == 304:
                continue
            doc, etag = _json(resp), resp.headers.get("etag")
        if doc["state"] != "succeeded":
            raise JobFailed(doc)
        return doc

    def jobs(self, state: str | None = None, stage: str | None = None, *,
             page_size: int = 100) -> Iterator[dict]:
        """Every job (newest first) matching state and stage, following next_cursor
        across pages of page_size (1..200)."""
        params: dict[str, Any] = {"limit": page_size}
        if state is not None:
            params["state"] = state
        if stage is not None:
            params["stage"] = stage
        while True:
            page = self._json("GET", "/v1/jobs", params=params)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    def log(self, job) -> str:
        """The job's event log, one event a line."""
        resp, _ = self._send("GET", f"/v1/jobs/{_job_id(job)}/log")
        return resp.data.decode("utf-8", "replace")

    def cancel(self, job) -> dict:
        """Cancels a queued or running job; returns the job (a running one may still
        show running until its stage returns)."""
        jid = _job_id(job)
        # a cancel whose answer was lost may be repeated: it makes nothing
        resp, lost = self._send("POST", f"/v1/jobs/{jid}/cancel", accept=(409,),
                                 idempotent=True)
        if resp.status == 409:
            if lost:
                doc = self.get(jid)
                if doc.get("state") == "canceled":
                    return doc
            raise _problem(resp)
        return _json(resp)

    def delete(self, job) -> None:
        """Deletes a finished job with its artifacts and log."""
        resp, lost = self._send("DELETE", f"/v1/jobs/{_job_id(job)}", accept=(404,))
        if resp.status == 404 and not lost:
            raise _problem(resp)

    # -- artifacts --

    def download(self, job, name: str, path) -> str:
        """Downloads artifact name (model, record, report, or an input_*) to path and
        returns path. Bytes go to <path>.part (the ETag they belong to in
        <path>.part.etag); an existing .part is resumed with Range + If-Range (a 200
        instead of 206 restarts it). The whole file's SHA-256 must equal the ETag, else
        SparsitydError and nothing at path; only then is it renamed to path."""
        jid = _job_id(job)
        path = os.fspath(path)
        url = f"/v1/jobs/{jid}/artifacts/{name}"
        attempt = 0
        while True:
            try:
                self._download_once(url, name, path)
                return path
            except (TransportError, _Restart) as e:
                # a cut body leaves the .part behind: the next attempt resumes it
                if attempt >= self.retries:
                    raise SparsitydError(f"download of {url}: {e} (gave up after "
                                         f"{attempt + 1} attempts)") from e
                if isinstance(e, TransportError):
                    time.sleep(_backoff(attempt))
                attempt += 1

    def _download_once(self, url: str, name: str, path: str) -> None:
        part, tag_file = path + ".part", path + ".part.etag"
        have = os.path.getsize(part) if os.path.exists(part) else 0
        tag = None
        if have and os.path.exists(tag_file):
            with open(tag_file, encoding="ascii", errors="replace") as f:
                tag = f.read().strip()
        headers = {}
        if have and tag:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = tag
        resp, _ = self._send("GET", url, headers=headers, stream=True, accept=(416,))
        try:
            if resp.status == 416:
                # the .part is not a prefix of this artifact (as long or longer)
                _remove(part, tag_file)
                raise _Restart("the partial file does not fit the artifact")
            etag = resp.headers.get("etag", "")
            m = _ETAG_SHA.match(etag)
            if not m:
                raise SparsitydError(f"{url}: the ETag {etag!r} is not a quoted SHA-256")
            sha = m.group(1)
            digest = hashlib.sha256()
            if resp.status == 206:
                # checked here too: a server that ignores If-Range sends a range of
                # whatever the artifact is now
                start = _range_start(resp.headers.get("content-range", ""))
                if etag != tag or start != have:
                    _remove(part, tag_file)
                    raise _Restart(f"the partial file is not the start of {etag}")
                with open(part, "rb") as f:
                    while b := f.read(CHUNK):
                        digest.update(b)
                mode = "ab"
            else:
                have, mode = 0, "wb"
            with open(tag_file, "w", encoding="ascii") as f:
                f.write(etag)
            length = resp.headers.get("content-length")
            total = have + int(length) if length and length.isdigit() else None
            bar = _progress.bar(self.progress, total, f"download {name}")
            bar.update(have)
            try:
                with open(part, mode) as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            finally:
                bar.close()
        finally:
            # after a full read the connection is back in the pool already; after a cut
            # or an early exit, this drops it instead of reusing it mid-body
            resp.close()
        got = digest.hexdigest()
        if got != sha:
            _remove(part, tag_file)
            raise SparsitydError(f"{url}: the downloaded file's SHA-256 {got} does not match "
                                 f"the ETag {sha}; nothing was written to {path}")
        os.replace(part, path)
        _remove(tag_file)

    def run(self, stage: str, model, config=None, record=None, record_from=None,
            outputs: str | Sequence[str] = (), name: str | None = None, out_dir=".",
            timeout: float | None = None, **options: Any) -> dict:
        """submit + wait + download of every output artifact (model, record, report) to
        <out_dir>/<artifact name>. Returns the finished job document with "paths":
        {artifact name: local path}. Raises JobFailed if the job fails; options are
        submit's keyword-only options (format, emit_record)."""
        job = self.submit(stage, model, config=config, record=record, record_from=record_from,
                          outputs=outputs, name=name, **options)
        done = self.wait(job, timeout=timeout)
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {a["name"]: self.download(done, a["name"], os.path.join(out_dir, a["name"]))
                 for a in done.get("artifacts", []) if a.get("kind") == "output"}
        return {**done, "paths": paths}


class _Restart(Exception):
    """A download attempt that has to start over (its .part was dropped)."""


def _range_start(content_range: str) -> int | None:
    m = re.match(r"^bytes (\d+)-\d+/\d+$", content_range.strip())
    return int(m.group(1)) if m else None


def _remove(*paths: str) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
