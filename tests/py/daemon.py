"""Black-box helpers for the sparsityd HTTP daemon tests.

Starts a real `sparsityd serve` on a free loopback port with a fresh data directory, waits
for /readyz, talks to it with http.client only (no third-party HTTP library), builds
multipart bodies, checks responses against openapi.yaml, and makes models without
TensorFlow (a raw protobuf writer for big synthetic GraphDefs, so a job can take seconds).
The job helpers at the end (submit_ok, run_ok, wait_state, start_big, cli) are what the
test_api_*.py files share. Standard library only at import time (openapi.yaml's checker
imports pyyaml and jsonschema when it is made); the fixtures are in conftest.py.
"""

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GRAPHS = os.path.join(REPO, "tests", "unit", "data", "graphs")
OPENAPI = os.path.join(REPO, "openapi.yaml")
PROBLEM_PREFIX = "https://sparsityd.dev/problems/"
SAMPLE_CONFIG = "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } } }\n"
TERMINAL = ("succeeded", "failed", "canceled")


def binary_path():
    return os.environ.get("SPARSITYD_BIN") or os.path.join(REPO, "build", "daemon", "sparsityd")


def serve_available(binary=None):
    """Whether `sparsityd serve --help` works (the daemon is built)."""
    try:
        p = subprocess.run([binary or binary_path(), "serve", "--help"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token_create(binary, data_dir, tenant):
    p = subprocess.run([binary, "token", "create", "--tenant", tenant, "--data-dir", data_dir],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, "token create failed: rc %d\n%s\n%s" % (p.returncode, p.stdout,
                                                                    p.stderr)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, "token create must print exactly one line, got %r" % p.stdout
    tok = lines[0].strip()
    assert re.fullmatch(r"sdt_[0-9a-f]{64}", tok), "token %r is not sdt_<64 hex>" % tok
    return tok


# ---------------------------------------------------------------------------------------
# HTTP


class Response:
    def __init__(self, method, path, status, headers, body, elapsed):
        self.method = method
        self.path = path
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.body = body
        self.elapsed = elapsed
        self._json = None

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    @property
    def content_type(self):
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def json(self):
        if self._json is None:
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except ValueError as e:
                raise AssertionError("%s: body is not JSON (%s): %r" % (self, e, self.body[:500]))
        return self._json

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __str__(self):
        return "%s %s -> %d" % (self.method, self.path, self.status)

    def describe(self):
        return "%s\nheaders: %s\nbody: %s" % (self, self.headers, self.body[:2000])


class Daemon:
    """One `sparsityd serve` process."""

    def __init__(self, binary, data_dir, args=(), token=None, port=None, log_dir=None):
        self.binary = binary
        self.data_dir = str(data_dir)
        self.args = list(args)
        self.token = token
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc = None
        self.log_dir = str(log_dir or data_dir + "-logs")
        self.starts = 0
        self.env = None  # the environment and working directory of the process (None:
        self.cwd = None  # the test's own), e.g. as systemd would set them

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def argv(self):
        return [self.binary, "serve", "--listen", "127.0.0.1:%d" % self.port,
                "--data-dir", self.data_dir, "--log-level", "debug"] + self.args

    def start(self, timeout=30):
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.starts += 1
        self.stdout_path = os.path.join(self.log_dir, "stdout.%d" % self.starts)
        self.stderr_path = os.path.join(self.log_dir, "stderr.%d" % self.starts)
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdout=self._out, stderr=self._err,
                                     stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("sparsityd serve exited with %s before ready\n%s" % (
                    self.proc.returncode, self.logs()))
            try:
                r = self.request("GET", "/readyz", auth=False, timeout=2)
                if r.status == 200:
                    return
                last = r.status
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise AssertionError("daemon not ready within %ss (last: %s)\n%s" % (timeout, last,
                                                                           self.logs()))

    def logs(self):
        out = []
        for p in (getattr(self, "stdout_path", None), getattr(self, "stderr_path", None)):
            if p and os.path.exists(p):
                with open(p, "rb") as f:
                    data = f.read()
                out.append("--- %s (last 4000 bytes)\n%s" % (p, data[-4000:].decode("utf-8",
                                                                                   "replace")))
        return "\n".join(out)

    def sanitizer_report(self):
        """The AddressSanitizer / LeakSanitizer / UBSan report in the daemon's stderr, or ''."""
        p = getattr(self, "stderr_path", None)
        if not p or not os.path.exists(p):
            return ""
        with open(p, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        m = re.search(r"^(=+\d+=+ERROR: (Address|Leak)Sanitizer|.*runtime error:)", text, re.M)
        return text[m.start():m.start() + 6000] if m else ""

    def _close_logs(self):
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f:
                f.close()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit status (SIGKILL after timeout: AssertionError)."""
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            self._close_logs()
            return rc
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._close_logs()
            raise AssertionError("daemon did not exit within %ss of SIGTERM\n%s" % (
                timeout, self.logs()))
        self._close_logs()
        return rc

    def kill(self):
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_logs()

    # -- requests --

    def connection(self, timeout=70):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def auth_headers(self, auth=True, token=None):
        tok = token if token is not None else (self.token if auth else None)
        return {"Authorization": "Bearer " + tok} if tok else {}

    def request(self, method, path, body=None, headers=None, auth=True, token=None, timeout=70):
        h = dict(self.auth_headers(auth, token))
        h.update(headers or {})
        conn = self.connection(timeout)
        t0 = time.time()
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return Response(method, path, resp.status,
                        {k.lower(): v for k, v in resp.getheaders()}, data, time.time() - t0)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post_job(self, fields, files, headers=None, **kw):
        ctype, body = multipart(fields, files)
        h = {"Content-Type": ctype}
        h.update(headers or {})
        return self.request("POST", "/v1/jobs", body=body, headers=h, **kw)

    def submit(self, stage, model=None, config=None, record=None, record_from=None,
               outputs=None, fmt=None, name=None, extra_fields=None, **kw):
        """POST /v1/jobs. model/config/record: bytes, str (text) or a path (existing file)."""
        fields = [("stage", stage)]
        files = []
        if outputs is not None:
            fields.append(("outputs", outputs if isinstance(outputs, str) else ",".join(outputs)))
        if fmt is not None:
            fields.append(("format", fmt))
        if name is not None:
            fields.append(("name", name))
        if record_from is not None:
            fields.append(("record_from", record_from))
        fields += list(extra_fields or [])
        for part, value in (("model", model), ("config", config), ("record", record)):
            if value is None:
                continue
            files.append((part, part + ".bin", read_input(value)))
        return self.post_job(fields, files, **kw)

    def open_stream(self, fields, small_files, file_part, file_path, chunk=1 << 20,
                    timeout=120):
        """Starts POST /v1/jobs whose last part (file_part) is streamed from file_path.
        fields: [(name, text)], small_files: [(name, filename, bytes)] sent first.
        Returns (conn, chunks): the caller sends each chunk with conn.send, then reads
        conn.getresponse()."""
        boundary = "sdtest-" + uuid.uuid4().hex
        ctype, head = multipart(fields, small_files, boundary=boundary, close=False)
        head += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n" % (
                     boundary, file_part, os.path.basename(file_path))).encode()
        tail = ("\r\n--%s--\r\n" % boundary).encode()
        size = os.path.getsize(file_path)
        conn = self.connection(timeout)
        conn.putrequest("POST", "/v1/jobs")
        for k, v in self.auth_headers().items():
            conn.putheader(k, v)
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
        conn.endheaders()

        def chunks():
            yield head
            with open(file_path, "rb") as f:
                while True:
                    b = f.read(chunk)
                    if not b:
                        break
                    yield b
            yield tail
        return conn, chunks()

    def submit_file(self, stage, model_path, config=None, outputs=None, timeout=300):
        """POST /v1/jobs streaming a (big) model file from disk; returns a Response."""
        fields = [("stage", stage)]
        if outputs:
            fields.append(("outputs", outputs))
        small = [("config", "config.txt", read_input(config))] if config is not None else []
        conn, it = self.open_stream(fields, small, "model", model_path, timeout=timeout)
        t0 = time.time()
        try:
            for b in it:
                conn.send(b)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return Response("POST", "/v1/jobs", resp.status,
                        {k.lower(): v for k, v in resp.getheaders()}, data, time.time() - t0)

    def job(self, job_id, **kw):
        return self.get("/v1/jobs/" + job_id, **kw)

    def wait_job(self, job_id, states=TERMINAL, timeout=120, **kw):
        """Long-polls until the job is in one of states; returns the job JSON."""
        deadline = time.time() + timeout
        r = self.get("/v1/jobs/" + job_id, **kw)
        assert r.status == 200, r.describe()
        if r.json()["state"] in states:
            return r.json()
        etag = r.header("etag")
        while True:
            left = deadline - time.time()
            if left <= 0:
                break
            w = max(1, min(10, int(left)))
            hdr = {"If-None-Match": etag} if etag else {}
            r = self.get("/v1/jobs/%s?wait=%d" % (job_id, w), headers=hdr, **kw)
            if r.status == 304:
                continue
            assert r.status == 200, r.describe()
            etag = r.header("etag")
            j = r.json()
            if j["state"] in states:
                return j
        r = self.job(job_id, **kw)
        raise AssertionError("job %s not in %s within %ss: %s\n%s" % (
            job_id, states, timeout, r.body[:2000], self.logs()))

    def artifact(self, job_id, name, **kw):
        return self.get("/v1/jobs/%s/artifacts/%s" % (job_id, name), **kw)

    def run_job(self, stage, timeout=120, **kw):
        """Submit, expect 202, wait for a terminal state; returns the job JSON."""
        r = self.submit(stage, **kw)
        assert r.status == 202, r.describe()
        auth = {k: kw[k] for k in ("auth", "token") if k in kw}
        return self.wait_job(r.json()["id"], timeout=timeout, **auth)


def read_input(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and os.path.isfile(value):
        with open(value, "rb") as f:
            return f.read()
    return value.encode("utf-8")


def multipart(fields, files, boundary=None, close=True):
    """(content type, body) of a multipart/form-data body.
    fields: [(name, text)], files: [(name, filename, bytes)]; close=False leaves out the
    closing delimiter (more parts follow)."""
    boundary = boundary or "sdtest-" + uuid.uuid4().hex
    out = []
    for name, value in fields:
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n" % (
            boundary, name)).encode() + value.encode("utf-8") + b"\r\n")
    for name, filename, data in files:
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n" % (
                        boundary, name, filename)).encode() + data + b"\r\n")
    if close:
        out.append(("--%s--\r\n" % boundary).encode())
    return "multipart/form-data; boundary=" + boundary, b"".join(out)


def ts(s):
    """Seconds since the epoch of an RFC 3339 UTC timestamp ("...Z", any fraction)."""
    import calendar
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z$", s)
    assert m, "not an RFC 3339 UTC timestamp: %r" % s
    whole = calendar.timegm(tuple(int(x) for x in m.groups()[:6]))
    return whole + (float(m.group(7)) if m.group(7) else 0.0)


def all_jobs(dmn):
    """Every job the daemon lists, across all pages."""
    jobs, cursor = [], None
    for _ in range(10000):
        r = dmn.get("/v1/jobs?limit=200" + ("&cursor=" + cursor if cursor else ""))
        assert r.status == 200, r.describe()
        b = r.json()
        jobs += b["jobs"]
        cursor = b["next_cursor"]
        if not cursor:
            return jobs
    raise AssertionError("the job list does not end")


def mount_tmpfs(path, size):
    """Mounts a tmpfs of `size` (e.g. "2m") at path (made if missing) for a full-disk test;
    skips the test when that is not allowed here (it needs root; CI runs as root)."""
    import pytest
    os.makedirs(path, exist_ok=True)
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path],
                           capture_output=True, text=True, timeout=20)
    except OSError as e:
        pytest.skip("cannot run mount for a full-disk tmpfs: %s" % e)
    if p.returncode != 0:
        pytest.skip("cannot mount a %s tmpfs for a full disk (needs root / CAP_SYS_ADMIN): %s"
                    % (size, p.stderr.strip()))


def umount(path):
    subprocess.run(["umount", "-l", path], capture_output=True)


def integrity(data_dir):
    """PRAGMA integrity_check of the daemon's database is ok."""
    db = os.path.join(data_dir, "sparsityd.db")
    assert os.path.exists(db), "no %s" % db
    con = sqlite3.connect(db, timeout=10)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()
    assert rows == [("ok",)], "integrity_check: %s" % rows


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def assert_problem(r, status, code=None):
    """r is an application/problem+json error with this status (and code when given)."""
    assert r.status == status, "expected %d\n%s" % (status, r.describe())
    assert r.content_type == "application/problem+json", (
        "error without application/problem+json\n" + r.describe())
    p = r.json()
    for k in ("type", "title", "status", "detail", "code"):
        assert k in p, "problem lacks %r: %s" % (k, p)
    assert p["status"] == status, p
    assert p["type"] == PROBLEM_PREFIX + p["code"], p
    assert isinstance(p["detail"], str) and p["detail"].strip(), p
    if code is not None:
        assert p["code"] == code, "expected problem code %r, got %r\n%s" % (code, p["code"],
                                                                          r.describe())
    return p


def problem_members_clean(r):
    """The optional where-members of a problem (line, column, node) hold real values, not
    stale memory. Returns a list of complaints."""
    p = r.json()
    bad = []
    for k in ("line", "column", "col"):
        if k in p and not (isinstance(p[k], int) and 0 < p[k] < 10 ** 7):
            bad.append("%s: member %r = %r looks uninitialised" % (r, k, p[k]))
    if "node" in p and not (isinstance(p["node"], str) and p["node"] and
                            p["node"].isprintable()):
        bad.append("%s: member 'node' = %r looks uninitialised" % (r, p["node"]))
    return bad


# ---------------------------------------------------------------------------------------
# The OpenAPI document as a response checker


class Contract:
    """Checks a response against openapi.yaml: status documented, content type, schema."""

    def __init__(self, path=OPENAPI):
        import yaml
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        with open(path) as f:
            self.doc = yaml.safe_load(f)
        self.uri = "urn:sparsityd:openapi"
        res = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(self.uri, res)
        self._validator_cls = Draft202012Validator
        self._routes = []
        for template, item in self.doc["paths"].items():
            rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            self._routes.append((re.compile(rx), template, item))

    def validator(self, schema):
        return self._validator_cls(schema, registry=self.registry,
                                   format_checker=self._validator_cls.FORMAT_CHECKER)

    def schema_ref(self, name):
        return {"$ref": self.uri + "#/components/schemas/" + name}

    def validate(self, instance, schema_name):
        errs = sorted(self.validator(self.schema_ref(schema_name)).iter_errors(instance),
                      key=lambda e: list(e.path))
        assert not errs, "does not match schema %s:\n%s\ninstance: %s" % (
            schema_name, "\n".join("- at %s: %s" % (list(e.path), e.message) for e in errs[:10]),
            json.dumps(instance)[:2000])

    def _resolve(self, obj):
        while isinstance(obj, dict) and "$ref" in obj and len(obj) == 1:
            ref = obj["$ref"]
            assert ref.startswith("#/"), ref
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part]
            obj = node
        return obj

    def operation(self, method, path):
        p = urllib.parse.urlsplit(path).path
        for rx, template, item in self._routes:
            if rx.match(p):
                op = item.get(method.lower())
                assert op is not None, "%s %s: method not in openapi.yaml" % (method, template)
                return template, op
        raise AssertionError("%s: path not in openapi.yaml" % p)

    def check(self, r):
        """Validates a Response; returns the parsed JSON body (or None)."""
        template, op = self.operation(r.method, r.path)
        responses = op["responses"]
        spec = responses.get(str(r.status)) or responses.get("default")
        assert spec is not None, "%s: status %d not documented for %s %s" % (
            r, r.status, r.method, template)
        spec = self._resolve(spec)
        content = spec.get("content")
        if not content:
            return None
        ctype = r.content_type
        full_ctype = (r.header("content-type") or "").replace(" ", "").lower()
        match = None
        for k, v in content.items():
            kk = k.replace(" ", "").lower()
            if kk == full_ctype or kk.split(";")[0] == ctype:
                match = v
                break
        assert match is not None, "%s: content type %r not documented (%s)" % (
            r, r.header("content-type"), list(content))
        if ctype in ("application/json", "application/problem+json") and r.status != 206:
            body = r.json()
            schema = dict(match.get("schema", {}))
            if "$ref" in schema:
                schema = {"$ref": self.uri + schema["$ref"]}
            else:
                schema = {"$ref": self.uri + "#/paths/" + _json_pointer_escape(template) + "/" +
                          r.method.lower() + "/responses/" + _resp_key(responses, r.status) +
                          "/content/" + _json_pointer_escape(_content_key(content, match)) +
                          "/schema"}
            errs = list(self.validator(schema).iter_errors(body))
            assert not errs, "%s: body does not match openapi.yaml:\n%s\nbody: %s" % (
                r, "\n".join("- at %s: %s" % (list(e.path), e.message) for e in errs[:10]),
                json.dumps(body)[:2000])
            return body
        return None


def _json_pointer_escape(s):
    return s.replace("~", "~0").replace("/", "~1")


def _resp_key(responses, status):
    return str(status) if str(status) in responses else "default"


def _content_key(content, match):
    for k, v in content.items():
        if v is match:
            return k
    raise KeyError


# ---------------------------------------------------------------------------------------
# Models without TensorFlow: a raw protobuf GraphDef writer


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fld(num, wt, payload):
    key = _varint((num << 3) | wt)
    if wt == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _s(num, text):
    return _fld(num, 2, text.encode() if isinstance(text, str) else text)


def _attr(key, value_bytes):
    return _fld(5, 2, _s(1, key) + _fld(2, 2, value_bytes))


_DT_FLOAT = 1


def _type_attr(key):
    return _attr(key, _fld(6, 0, _varint(_DT_FLOAT)))


def _node(name, op, inputs=(), attrs=b""):
    return _fld(1, 2, _s(1, name) + _s(2, op) + b"".join(_s(3, i) for i in inputs) + attrs)


def _const_header(name, dims, nbytes):
    """Bytes of a Const node (float32, tensor_content) up to its content, which follows."""
    shape = b"".join(_fld(2, 2, _fld(1, 0, _varint(d))) for d in dims)
    tensor_prefix = _fld(1, 0, _varint(_DT_FLOAT)) + _fld(2, 2, shape)
    content_key = _varint((4 << 3) | 2) + _varint(nbytes)
    tensor_len = len(tensor_prefix) + len(content_key) + nbytes
    av_prefix = _varint((8 << 3) | 2) + _varint(tensor_len)
    av_len = len(av_prefix) + tensor_len
    entry_prefix = _s(1, "value") + _varint((2 << 3) | 2) + _varint(av_len)
    entry_len = len(entry_prefix) + av_len
    attr_prefix = _varint((5 << 3) | 2) + _varint(entry_len)
    body_prefix = (_s(1, name) + _s(2, "Const") + _type_attr("dtype") + attr_prefix +
                   entry_prefix + av_prefix + tensor_prefix + content_key)
    return _varint((1 << 3) | 2) + _varint(len(body_prefix) + nbytes) + body_prefix


def write_mlp(path, layers, k, seed=0):
    """A binary GraphDef: x -> MatMul(w0 [k,k]) -> ... -> out (Identity), float32 Const
    weights in tensor_content (4*k*k bytes each). Output node "out". Returns path."""
    import random
    rnd = random.Random(seed)
    import struct
    row = struct.pack("<%df" % k, *[rnd.uniform(-1, 1) for _ in range(k)])
    with open(path, "wb") as f:
        f.write(_node("x", "Placeholder", attrs=_type_attr("dtype")))
        prev = "x"
        for i in range(layers):
            f.write(_const_header("w%d" % i, [k, k], 4 * k * k))
            # rows rotated so the weight is not periodic with period k
            for r in range(k):
                s = (r * 4) % len(row)
                f.write(row[s:] + row[:s])
            f.write(_node("mm%d" % i, "MatMul", [prev, "w%d" % i], _type_attr("T")))
            prev = "mm%d" % i
        f.write(_node("out", "Identity", [prev], _type_attr("T")))
    return path


def write_mlp_text(path, layers, k, seed=0):
    """write_mlp's graph in protobuf text format (--format pbtxt), its tensor_content
    written as octal escapes: 4 bytes of text per byte of weight, which the engine parses
    about ten times slower than a binary graph of the same weights is uploaded, so a job
    on it stays running long after its upload. Returns path."""
    import random
    import struct
    rnd = random.Random(seed)
    row = struct.pack("<%df" % k, *[rnd.uniform(-1, 1) for _ in range(k)])
    # rows rotated as in write_mlp, escaped once each (k distinct rows)
    octal = {b: "\\%03o" % b for b in range(256)}
    rows = [(row[s:] + row[:s]).decode("latin-1").translate(octal) for s in range(0, 4 * k, 4)]
    dtype = 'attr { key: "%s" value { type: DT_FLOAT } }'
    with open(path, "w") as f:
        f.write('node { name: "x" op: "Placeholder" %s }\n' % (dtype % "dtype"))
        prev = "x"
        for i in range(layers):
            f.write('node { name: "w%d" op: "Const" %s attr { key: "value" value { tensor { '
                    'dtype: DT_FLOAT tensor_shape { dim { size: %d } dim { size: %d } } '
                    'tensor_content: "' % (i, dtype % "dtype", k, k))
            f.writelines(rows)
            f.write('" } } } }\n')
            f.write('node { name: "mm%d" op: "MatMul" input: "%s" input: "w%d" %s }\n'
                    % (i, prev, i, dtype % "T"))
            prev = "mm%d" % i
        f.write('node { name: "out" op: "Identity" input: "%s" %s }\n' % (prev, dtype % "T"))
    return path


def graph(name):
    """Path of a test graph in tests/unit/data/graphs (chain.pbtxt: output "out")."""
    return os.path.join(GRAPHS, name)


# ---------------------------------------------------------------------------------------
# Daemons for a test or a module (conftest.py's daemons and module_daemons fixtures)


class DaemonFactory:
    """Starts daemons in fresh data directories under root; close() stops them all."""

    def __init__(self, binary, root):
        self.binary = binary
        self.root = str(root)
        self.all = []
        self.n = 0

    def data_dir(self):
        self.n += 1
        d = os.path.join(self.root, "data%d" % self.n)
        os.makedirs(d, exist_ok=True)
        return d

    def new(self, args=(), data_dir=None, token=None, start=True):
        d = Daemon(self.binary, data_dir or self.data_dir(), args=args, token=token,
                   log_dir=os.path.join(self.root, "logs%d" % (len(self.all) + 1)))
        self.all.append(d)
        if start:
            d.start()
        return d

    def close(self):
        import shutil
        for d in self.all:
            if d.proc is not None and d.proc.poll() is None:
                try:
                    d.stop(timeout=20)
                except AssertionError:
                    pass
            d._close_logs()
        reports = [d.sanitizer_report() for d in self.all]
        reports = [r for r in reports if r]
        # data directories hold copies of the big test model: do not leave GBs in /tmp
        # (the daemons' logs stay, beside them)
        for d in self.all:
            if os.path.ismount(d.data_dir):
                continue
            shutil.rmtree(d.data_dir, ignore_errors=True)
        # With a daemon built with AddressSanitizer (scripts/test.sh runs the HTTP suites
        # so), a leak or memory error it reported fails the tests that used it.
        assert not reports, "the daemon's sanitizer reported:\n" + "\n".join(reports)


# The big synthetic model of conftest.py's big_model fixture: BIG_LAYERS MatMul layers of
# BIG_K x BIG_K float32, so a prune job takes seconds.
BIG_LAYERS = int(os.environ.get("SPARSITYD_TEST_BIG_LAYERS", "12"))
BIG_K = int(os.environ.get("SPARSITYD_TEST_BIG_K", "4096"))


# ---------------------------------------------------------------------------------------
# Jobs, as the test_api_*.py files submit and wait for them

CHAIN = graph("chain.pbtxt")  # const weights, 2 prunable MatMul layers, output "out"
CFG = SAMPLE_CONFIG
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def submit_ok(dmn, contract, stage, **kw):
    r = dmn.submit(stage, **kw)
    assert r.status == 202, r.describe()
    j = contract.check(r)
    assert r.header("location") == "/v1/jobs/" + j["id"], r.describe()
    return j


def run_ok(dmn, contract, stage, **kw):
    j = submit_ok(dmn, contract, stage, **kw)
    j = dmn.wait_job(j["id"])
    assert j["state"] == "succeeded", json.dumps(j, indent=1)
    r = dmn.job(j["id"])
    return contract.check(r)


def cli(binary, *args):
    p = subprocess.run([binary] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, "%s\n%s\n%s" % (args, p.stdout, p.stderr)
    return p


def wait_state(dmn, job_id, states, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = dmn.job(job_id).json()
        if j["state"] in states:
            return j
        time.sleep(0.02)
    raise AssertionError("job %s never reached %s" % (job_id, states))


def start_big(dmn, contract, big_model, stage="prune"):
    """Submits a prune (or stage) job on the big model and waits until it is running."""
    r = dmn.submit_file(stage, big_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    j = contract.check(r)
    wait_state(dmn, j["id"], ("running", "succeeded", "failed"))
    j = dmn.job(j["id"]).json()
    assert j["state"] == "running", (
        "the big job finished before the test could use it running; make it bigger with "
        "SPARSITYD_TEST_BIG_LAYERS: %s" % json.dumps(j)[:500])
    return j
