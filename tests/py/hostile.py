"""Helpers for the hostile-input and stress tests of `sparsityd serve` (test_hostile.py,
test_stress.py): raw HTTP over a socket (bytes that http.client would refuse to send),
hand-made multipart bodies, strict problem checks, process figures from /proc, and
hostile model files (deep nesting, lying shapes, truncations) built with daemon.py's raw
protobuf writers. Standard library only; no TensorFlow.
"""

import http.client
import json
import os
import random
import re
import socket
import time

import daemon as D

# ---------------------------------------------------------------------------------------
# raw HTTP


def build_request(method, target, headers=(), body=None, content_length=True,
                  connection_close=True):
    """The bytes of one HTTP/1.1 request. target and header values may be str or bytes
    (bytes go out as they are: NULs, non-ASCII, 10 KB paths)."""
    def b(x):
        return x if isinstance(x, bytes) else x.encode("latin-1")
    out = [b(method) + b" " + b(target) + b" HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n"]
    names = set()
    for k, v in headers:
        names.add(b(k).lower())
        out.append(b(k) + b": " + b(v) + b"\r\n")
    if body is not None and content_length and b"content-length" not in names and \
            b"transfer-encoding" not in names:
        out.append(b"Content-Length: %d\r\n" % len(body))
    if connection_close and b"connection" not in names:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out) + (body or b"")


def no_response(method, target, why, elapsed=0.0):
    """A Response standing for 'the daemon sent no HTTP answer' (status 0)."""
    return D.Response(method, _printable(target), 0, {},
                      ("no HTTP response: %s" % why).encode(), elapsed)


def _printable(target):
    if isinstance(target, bytes):
        target = target.decode("latin-1")
    return target if len(target) <= 200 else target[:200] + "...(%d chars)" % len(target)


def read_response(sock, method, target, t0):
    """Reads one response from sock; status 0 (and why) when none comes."""
    try:
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        body = resp.read()
    except socket.timeout:
        return no_response(method, target, "none within the socket timeout",
                           time.time() - t0)
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        return no_response(method, target, "%s: %s" % (type(e).__name__, e), time.time() - t0)
    return D.Response(method, _printable(target), resp.status,
                      {k.lower(): v for k, v in resp.getheaders()}, body, time.time() - t0)


def raw(dmn, method, target, headers=(), body=None, timeout=30, auth=True, **kw):
    """Sends one request as raw bytes and reads the answer; returns a daemon.Response
    (status 0 when the daemon closed or reset the connection without an answer).
    auth: add the daemon's bearer token (if it has one)."""
    hdrs = list(headers)
    if auth and dmn.token and not any(k.lower() == "authorization" for k, _ in hdrs):
        hdrs.append(("Authorization", "Bearer " + dmn.token))
    data = build_request(method, target, hdrs, body, **kw)
    t0 = time.time()
    try:
        sock = socket.create_connection((dmn.host, dmn.port), timeout=timeout)
    except OSError as e:
        return no_response(method, target, "connect: %s" % e)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (and closed) before the whole body was read: read the answer
        except socket.timeout:
            pass
        return read_response(sock, method, target, t0)
    finally:
        sock.close()


def exchange(dmn, data, timeout=10):
    """Sends data (one or more requests, as bytes) on one connection and returns every
    byte the daemon sends back until it closes the connection."""
    got = b""
    with socket.create_connection((dmn.host, dmn.port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while b := sock.recv(65536):
                got += b
        except ConnectionResetError:
            pass
    return got


def chunked_body(data, size=4096):
    out = []
    for i in range(0, len(data), size):
        c = data[i:i + size]
        out.append(b"%x\r\n" % len(c) + c + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


# ---------------------------------------------------------------------------------------
# multipart by hand


def part(name, value, filename=None, ctype=None, disposition=None, extra=b""):
    """One multipart part (without its delimiter line). name/value: str or bytes.
    disposition: the whole Content-Disposition value instead of the usual one;
    name=None leaves the name parameter out."""
    def b(x):
        return x if isinstance(x, bytes) else x.encode("utf-8")
    if disposition is None:
        disposition = b"form-data"
        if name is not None:
            disposition += b'; name="' + b(name) + b'"'
        if filename is not None:
            disposition += b'; filename="' + b(filename) + b'"'
    h = b"Content-Disposition: " + b(disposition) + b"\r\n" if disposition != b"" else b""
    if ctype:
        h += b"Content-Type: " + b(ctype) + b"\r\n"
    return h + extra + b"\r\n" + b(value)


def form(parts, boundary="XX", close=True):
    """(content type, body) for raw parts (from part())."""
    bb = boundary.encode()
    body = b"".join(b"--" + bb + b"\r\n" + p + b"\r\n" for p in parts)
    if close:
        body += b"--" + bb + b"--\r\n"
    return "multipart/form-data; boundary=" + boundary, body


def job_form(stage="check", model=None, config=None, record=None, fields=(), boundary="XX"):
    """A form with the usual parts, fields [(name, value)] added as text parts."""
    parts = [part("stage", stage)] if stage is not None else []
    parts += [part(k, v) for k, v in fields]
    for n, v in (("model", model), ("config", config), ("record", record)):
        if v is not None:
            parts.append(part(n, D.read_input(v), filename=n + ".bin",
                              ctype="application/octet-stream"))
    return form(parts, boundary)


# ---------------------------------------------------------------------------------------
# checks


def leaks(text, dmn):
    """The server paths of dmn that text contains (its data directory, in any spelling)."""
    out = []
    for p in {dmn.data_dir, os.path.realpath(dmn.data_dir), os.path.abspath(dmn.data_dir)}:
        p = p.rstrip("/")
        if p and p in text:
            out.append(p)
    return out


def check_problem(r, dmn, status, code):
    """r is the problem `code` with `status`: a UTF-8 JSON object whose string members
    (type, title, detail, code) are all there and non-empty, and whose text names no path
    of the daemon's data directory. Returns the problem."""
    assert r.status == status, "expected HTTP %d (%s), got:\n%s" % (status, code, r.describe())
    try:
        text = r.body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AssertionError("problem body is not UTF-8 (%s):\n%s" % (e, r.describe()))
    p = D.assert_problem(r, status, code)
    assert isinstance(p, dict), r.describe()
    for k in ("type", "title", "detail", "code"):
        assert isinstance(p.get(k), str) and p[k].strip(), (
            "problem member %r missing or empty (a string member was dropped?):\n%s" % (
                k, r.describe()))
    bad = leaks(text, dmn)
    assert not bad, "problem names the server path %s:\n%s" % (bad, r.describe())
    return p


def check_job_error(j, dmn, code, message_re=None):
    """j (a job JSON) is failed with error.code code and a non-empty message that names no
    server path (and matches message_re when given)."""
    desc = json.dumps(j)[:3000]
    assert j["state"] == "failed", "expected the job to fail with %s, it is %s:\n%s" % (
        code, j["state"], desc)
    err = j.get("error")
    assert isinstance(err, dict), "failed job without an error object:\n%s" % desc
    assert err.get("code") == code, "expected error.code %r, got %r:\n%s" % (
        code, err.get("code"), desc)
    msg = err.get("message")
    assert isinstance(msg, str) and msg.strip(), (
        "error.message missing or empty (dropped?):\n%s" % desc)
    bad = leaks(msg, dmn)
    assert not bad, "error.message names the server path %s: %r" % (bad, msg)
    if message_re:
        assert re.search(message_re, msg, re.I), "error.message %r does not match %r" % (
            msg, message_re)
    return err


def alive(dmn):
    """The daemon process is running and /healthz answers 200 (else AssertionError). A
    daemon that died is restarted on its data directory first, so later tests have one."""
    rc = dmn.proc.poll()
    if rc is None:
        r = raw(dmn, "GET", "/healthz", timeout=10, auth=False)
        if r.status == 200:
            return
        try:  # no answer: a dying process (a core dump takes a moment) or a hung one
            rc = dmn.proc.wait(10)
        except Exception:
            raise AssertionError("GET /healthz after the case (the process is alive but does "
                                 "not answer):\n%s" % r.describe())
    logs = dmn.logs()
    restart(dmn)
    raise AssertionError("the daemon died (exit status %s)\n%s" % (rc, logs))


def restart(dmn):
    """Starts dmn again on its data directory if its process is gone."""
    if dmn.proc is not None and dmn.proc.poll() is None:
        return
    dmn._close_logs()
    try:
        dmn.start()
    except AssertionError:
        pass


def job_count(dmn):
    """Jobs in the store (all states, all tenants), from /metrics."""
    r = raw(dmn, "GET", "/metrics", auth=False)
    assert r.status == 200, r.describe()
    n = 0
    for line in r.text.splitlines():
        m = re.match(r'^sparsityd_jobs\{state="[a-z]+"\} (\d+)', line)
        if m:
            n += int(m.group(1))
    return n


# ---------------------------------------------------------------------------------------
# process figures


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def threads(pid):
    return int(proc_status(pid)["Threads"])


def accept_backlog(port):
    """Connections waiting in the accept queue of the listening socket on 127.0.0.1:port
    (the rx_queue of a LISTEN socket in /proc/net/tcp); None if there is no such socket."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return None


def rss(pid):
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


# ---------------------------------------------------------------------------------------
# hostile models (binary GraphDef, by daemon.py's writers)

v = D._varint
fld = D._fld
s = D._s


def varint64(n):
    """A varint of a signed int64 (two's complement, 10 bytes when negative)."""
    return v(n & ((1 << 64) - 1))


def const_node(name, dims, content):
    """A float32 Const whose shape says dims (any int64, negative too) and whose
    tensor_content is content."""
    shape = b"".join(fld(2, 2, fld(1, 0, varint64(d))) for d in dims)
    tensor = fld(1, 0, v(D._DT_FLOAT)) + fld(2, 2, shape) + fld(4, 2, content)
    return D._node(name, "Const", attrs=D._type_attr("dtype") + D._attr("value", fld(8, 2, tensor)))


def deep_attr_graph(depth, key="a"):
    """A GraphDef of one node whose attr value nests AttrValue.func (10) -> NameAttrList
    .attr (2, map entry {1: key, 2: AttrValue}) -> AttrValue.func -> ... depth levels.
    Built from the inside out without copying: each level is a prefix in front of the
    level inside it, so the bytes are the prefixes, outermost first, then the innermost
    value."""
    inner = fld(3, 0, v(7))                 # the innermost AttrValue: i: 7
    kb = s(1, key)
    size = len(inner)
    prefixes = []
    for _ in range(depth):
        # entry = key + (2: AttrValue)
        entry_pre = kb + v((2 << 3) | 2) + v(size)
        entry_len = len(entry_pre) + size
        nal_pre = v((2 << 3) | 2) + v(entry_len)          # NameAttrList.attr
        nal_len = len(nal_pre) + entry_len
        av_pre = v((10 << 3) | 2) + v(nal_len)            # AttrValue.func
        pre = av_pre + nal_pre + entry_pre
        prefixes.append(pre)
        size += len(pre)
    value = b"".join(reversed(prefixes)) + inner
    assert len(value) == size
    # NodeDef: name, op, attr {key: "deep", value: <value>}
    entry = s(1, "deep")
    entry_pre = entry + v((2 << 3) | 2) + v(size)
    attr_pre = v((5 << 3) | 2) + v(len(entry_pre) + size)
    node_body_pre = s(1, "n") + s(2, "NoOp") + attr_pre + entry_pre
    node_len = len(node_body_pre) + size
    return v((1 << 3) | 2) + v(node_len) + node_body_pre + value


def deep_attr_pbtxt(depth):
    """The same nesting as text: node { ... attr { key: "a" value { func { attr { ... """
    open_ = 'attr { key: "a" value { func { '
    close = "} } } "
    return ('node { name: "n" op: "NoOp" ' + open_ * depth + 'attr { key: "a" value { i: 7 } } '
            + close * depth + "}\n").encode()


def random_bytes(seed, n):
    return random.Random(seed).randbytes(n)


def mlp_bytes(path, layers=2, k=64, seed=0):
    """A small valid binary GraphDef (daemon.write_mlp), as bytes."""
    D.write_mlp(path, layers, k, seed)
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def synthetic_model(path, size_mb, seed=0):
    """A binary GraphDef of about size_mb MB (MatMul layers of 1024x1024 float32)."""
    layers = max(1, int(size_mb * 1e6 // (4 * 1024 * 1024)))
    return D.write_mlp(path, layers, 1024, seed)
