"""HTTPS: the daemon serving tls_cert / tls_key itself, checked with curl and Python's
ssl against a CA the test makes with openssl: a client that trusts the CA gets through,
one that does not is refused; SIGHUP serves a new certificate to new connections
(connections already open keep working) and a bad pair on reload changes nothing; a
plain-HTTP request to the TLS port gets no job data; a non-loopback listen address
needs tokens and TLS, or --insecure.
"""

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

import daemon as D
from daemon import CHAIN, CFG, run_ok

pytestmark = pytest.mark.skipif(not shutil.which("openssl") or not shutil.which("curl"),
                                reason="needs the openssl and curl commands")


def openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, "openssl %s\n%s" % (" ".join(args), p.stderr)


class Pki:
    """A test CA and server certificates it signs, for 127.0.0.1 and localhost."""

    def __init__(self, root, name):
        self.dir = os.path.join(str(root), name)
        os.makedirs(self.dir, exist_ok=True)
        self.ca = os.path.join(self.dir, "ca.pem")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=sparsityd test CA %s" % name, cwd=self.dir)

    def server(self, name, chain_ca=False, rsa=False):
        """Signs a server certificate (ECDSA P-256, or RSA 2048 with rsa); returns (cert
        path, key path). chain_ca appends the CA certificate after the leaf, as a full
        chain file does."""
        with open(os.path.join(self.dir, name + ".ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature%s\nextendedKeyUsage=serverAuth\n"
                    % (",keyEncipherment" if rsa else "") +
                    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        kind = ["rsa:2048"] if rsa else ["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        openssl("req", "-newkey", *kind, "-nodes", "-keyout", name + ".key", "-out",
                name + ".csr", "-subj", "/CN=" + name, cwd=self.dir)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out",
                name + ".pem", cwd=self.dir)
        cert = os.path.join(self.dir, name + ".pem")
        if chain_ca:
            with open(cert, "a") as f, open(self.ca) as ca:
                f.write(ca.read())
        return cert, os.path.join(self.dir, name + ".key")


def der(pem_path):
    """The first certificate of a PEM file (the leaf of a chain), as DER."""
    with open(pem_path) as f:
        text = f.read()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[:text.index(end) + len(end)])


def served_der(port):
    """The leaf certificate the daemon presents to a new connection (not verified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


class TlsDaemon(D.Daemon):
    """A daemon on HTTPS, talked to through a client that trusts ca."""

    def __init__(self, *a, ca, listen_host="127.0.0.1", **kw):
        super().__init__(*a, **kw)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.listen_host = listen_host

    @property
    def url(self):
        return "https://%s:%d" % (self.host, self.port)

    def argv(self):
        return [self.binary, "serve", "--listen", "%s:%d" % (self.listen_host, self.port),
                "--data-dir", self.data_dir, "--log-level", "debug"] + self.args

    def connection(self, timeout=70):
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                           context=self.ctx)


def tls_daemon(daemons, pki, cert, key, data=None, token=None, args=(), listen_host="127.0.0.1"):
    d = TlsDaemon(daemons.binary, data or daemons.data_dir(), ca=pki.ca, token=token,
                  args=["--tls-cert", cert, "--tls-key", key] + list(args),
                  log_dir=os.path.join(daemons.root, "tls-logs%d" % (len(daemons.all) + 1)),
                  listen_host=listen_host)
    daemons.all.append(d)  # stopped, and its sanitizer report checked, by the fixture
    return d.start()


def curl(url, *args):
    return subprocess.run(["curl", "-sS", "--max-time", "20"] + list(args) + [url],
                          capture_output=True, text=True, timeout=60)


def log_text(d):
    with open(d.stderr_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def wait_log(d, needle, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if needle in log_text(d):
            return
        time.sleep(0.05)
    raise AssertionError("%r not logged within %ss\n%s" % (needle, timeout, d.logs()))


def test_https_trusted_ca_only(daemons, contract, tmp_path):
    pki, other = Pki(tmp_path, "a"), Pki(tmp_path, "other")
    cert, key = pki.server("srv", chain_ca=True)
    d = tls_daemon(daemons, pki, cert, key)
    assert served_der(d.port) == der(cert)
    wait_log(d, "TLS certificate loaded: 'CN=srv'")
    ok = curl(d.url + "/healthz", "--cacert", pki.ca)
    assert ok.returncode == 0 and '"ok"' in ok.stdout, (ok.returncode, ok.stderr)
    for args in ([], ["--cacert", other.ca]):
        p = curl(d.url + "/healthz", *args)
        assert p.returncode == 60, (args, p.returncode, p.stdout, p.stderr)  # peer not verified
        assert not p.stdout, p.stdout
    # the whole API works over TLS: an upload, a long-poll, an artifact download
    j = run_ok(d, contract, "insert", model=CHAIN, config=CFG, outputs="out")
    r = d.get("/v1/jobs/%s/artifacts/model" % j["id"])
    assert r.status == 200 and len(r.body) > 0, r.describe()
    # TLS 1.3 and 1.2 are both offered (the daemon's priority string names them)
    for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.ca)
        ctx.minimum_version = ctx.maximum_version = v
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                assert t.version() == v.name.replace("v1_", "v1."), t.version()


def test_sighup_reloads_certificate(daemons, tmp_path):
    pki1, pki2, pki3 = Pki(tmp_path, "one"), Pki(tmp_path, "two"), Pki(tmp_path, "three")
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    cert, key = str(live_dir / "cert.pem"), str(live_dir / "key.pem")

    def install(src_cert, src_key):
        # as certbot and Kubernetes do: new files renamed over the old names
        for src, dst in ((src_cert, cert), (src_key, key)):
            shutil.copy(src, dst + ".new")
            os.replace(dst + ".new", dst)

    c1, k1 = pki1.server("first")
    c2, k2 = pki2.server("second", rsa=True)  # any key type GnuTLS reads
    c3, k3 = pki3.server("third")
    install(c1, k1)
    d = tls_daemon(daemons, pki1, cert, key)
    assert served_der(d.port) == der(c1)
    kept = d.connection()  # a keep-alive connection made with the first certificate
    kept.request("GET", "/healthz")
    r = kept.getresponse()
    assert r.status == 200 and r.read()

    install(c2, k2)
    d.signal(signal.SIGHUP)
    wait_log(d, "TLS certificate reloaded: 'CN=second'")
    assert served_der(d.port) == der(c2)
    p = curl(d.url + "/healthz", "--cacert", pki2.ca)
    assert p.returncode == 0, p.stderr
    p = curl(d.url + "/healthz", "--cacert", pki1.ca)
    assert p.returncode == 60, (p.returncode, p.stderr)
    kept.request("GET", "/healthz")  # the connection from before the reload still works
    r = kept.getresponse()
    assert r.status == 200 and r.read()
    kept.close()

    # a pair that does not belong together, then a file that is not PEM: refused, the
    # certificate in service stays, and the log says why
    install(c3, k1)
    d.signal(signal.SIGHUP)
    wait_log(d, "TLS certificate not reloaded")
    assert "is not the key of the first certificate" in log_text(d)
    assert served_der(d.port) == der(c2)
    with open(cert, "w") as f:
        f.write("not a certificate\n")
    shutil.copy(k3, key)
    n = log_text(d).count("TLS certificate not reloaded")
    d.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while log_text(d).count("TLS certificate not reloaded") == n and time.time() < deadline:
        time.sleep(0.05)
    assert log_text(d).count("TLS certificate not reloaded") == n + 1, d.logs()
    assert served_der(d.port) == der(c2)
    assert curl(d.url + "/healthz", "--cacert", pki2.ca).returncode == 0
    # and a good pair again
    install(c3, k3)
    d.signal(signal.SIGHUP)
    wait_log(d, "TLS certificate reloaded: 'CN=third'")
    assert served_der(d.port) == der(c3)


def test_plain_http_to_tls_port_gets_no_job_data(daemons, contract, tmp_path, serve_bin):
    pki = Pki(tmp_path, "p")
    cert, key = pki.server("srv")
    data = daemons.data_dir()
    token = D.token_create(serve_bin, data, "team")
    d = tls_daemon(daemons, pki, cert, key, data=data, token=token)
    j = run_ok(d, contract, "check", model=CHAIN, outputs="out")
    for path in ("/v1/jobs", "/v1/jobs/" + j["id"], "/metrics"):
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                       "Connection: close\r\n\r\n" % (path, token)).encode())
            got = b""
            try:
                while len(got) < 1 << 20:
                    b = s.recv(65536)
                    if not b:
                        break
                    got += b
            except (ConnectionResetError, socket.timeout):
                pass
        assert j["id"].encode() not in got and b"sparsityd_" not in got, (path, got[:300])
        assert not got.startswith(b"HTTP/"), (path, got[:300])
    # plain HTTP from curl too; the daemon is still serving HTTPS afterwards
    p = curl("http://127.0.0.1:%d/v1/jobs" % d.port, "-H", "Authorization: Bearer " + token)
    assert p.returncode != 0 and j["id"] not in p.stdout, (p.returncode, p.stdout)
    assert d.get("/v1/jobs").json()["jobs"][0]["id"] == j["id"]


def serve_once(serve_bin, *args):
    return subprocess.run([serve_bin, "serve"] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=30)


def test_non_loopback_needs_tokens_and_tls(daemons, serve_bin, tmp_path):
    pki = Pki(tmp_path, "n")
    cert, key = pki.server("srv")
    tls = ["--tls-cert", cert, "--tls-key", key]
    port = D.free_port()
    data = daemons.data_dir()
    # neither, then TLS only: refused, naming what is missing
    p = serve_once(serve_bin, "--listen", "0.0.0.0:%d" % port, "--data-dir", data)
    assert p.returncode == 2 and "without API tokens and TLS" in p.stderr, p.stderr
    p = serve_once(serve_bin, "--listen", "0.0.0.0:%d" % port, "--data-dir", data, *tls)
    assert p.returncode == 2 and "without API tokens:" in p.stderr, p.stderr
    assert "token create" in p.stderr
    # a token but no TLS: refused
    token = D.token_create(serve_bin, data, "net")
    p = serve_once(serve_bin, "--listen", "0.0.0.0:%d" % port, "--data-dir", data)
    assert p.returncode == 2 and "without TLS" in p.stderr and "tls_cert" in p.stderr, p.stderr
    # both: it serves, on every address, HTTPS with tokens
    d = tls_daemon(daemons, pki, cert, key, data=data, token=token, listen_host="0.0.0.0")
    assert d.get("/v1/jobs").status == 200
    assert d.get("/v1/jobs", auth=False).status == 401
    d.stop()
    # --insecure: serves plain HTTP beyond loopback, with a warning in the log
    dd = D.Daemon(serve_bin, daemons.data_dir(), args=["--insecure"], port=D.free_port(),
                  log_dir=os.path.join(daemons.root, "insecure-logs"))
    dd.argv = lambda: [serve_bin, "serve", "--listen", "0.0.0.0:%d" % dd.port, "--data-dir",
                       dd.data_dir, "--insecure"]
    daemons.all.append(dd)
    dd.start()
    assert dd.get("/healthz").status == 200
    assert "without TLS" in log_text(dd)


def test_bad_tls_settings_refused(serve_bin, tmp_path):
    pki = Pki(tmp_path, "b")
    cert, key = pki.server("srv")
    _, other_key = pki.server("other")
    unsorted = str(tmp_path / "unsorted.pem")
    with open(unsorted, "w") as f, open(pki.ca) as ca, open(cert) as leaf:
        f.write(ca.read() + leaf.read())
    port = D.free_port()
    base = ["--listen", "127.0.0.1:%d" % port, "--data-dir", tmp_path / "d"]
    cases = [
        (["--tls-cert", cert], "go together"),
        (["--tls-key", key], "go together"),
        (["--tls-cert", tmp_path / "missing.pem", "--tls-key", key], "missing.pem"),
        (["--tls-cert", cert, "--tls-key", other_key], "is not the key of the first certificate"),
        (["--tls-cert", key, "--tls-key", key], "tls_cert"),
        (["--tls-cert", cert, "--tls-key", cert], "tls_key"),
        (["--tls-cert", unsorted, "--tls-key", key], "leaf first"),
        (["--tls-cert", tmp_path, "--tls-key", key], "not a regular file"),
    ]
    for args, needle in cases:
        p = serve_once(serve_bin, *(base + args))
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert needle in p.stderr, (args, p.stderr)


def test_python_client_over_https(daemons, tmp_path, serve_bin):
    """sparsityd.Client (the pip-installed package) against the HTTPS daemon: it trusts
    the CA through SSL_CERT_FILE, as any OpenSSL client does, and refuses without it."""
    import sys
    pytest.importorskip("sparsityd")
    pki = Pki(tmp_path, "py")
    cert, key = pki.server("srv")
    data = daemons.data_dir()
    token = D.token_create(serve_bin, data, "py")
    d = tls_daemon(daemons, pki, cert, key, data=data, token=token)
    code = ("import sparsityd, sys\n"
            "with sparsityd.Client(sys.argv[1], token=sys.argv[2], retries=0) as c:\n"
            "    j = c.run('check', sys.argv[3], outputs='out')\n"
            "    print(j['state'], len(list(c.jobs())))\n")
    env = dict(os.environ, SSL_CERT_FILE=pki.ca)
    p = subprocess.run([sys.executable, "-c", code, d.url, token, CHAIN], env=env,
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["succeeded", "1"], (p.stdout, p.stderr)
    env.pop("SSL_CERT_FILE")
    p = subprocess.run([sys.executable, "-c", code, d.url, token, CHAIN], env=env,
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "certificate" in p.stderr.lower(), (p.stdout, p.stderr)


NGINX_SITE = os.path.join(D.REPO, "deploy", "nginx", "sparsityd.conf")


def test_nginx_example_in_front(daemons, contract, tmp_path, serve_bin):
    """deploy/nginx/sparsityd.conf, as shipped but for its ports and certificate paths,
    run by nginx in front of a loopback daemon: a streamed upload larger than nginx's
    default body limit, long-polls, downloads, the token passed through, /metrics, and
    plain HTTP redirected."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.skip("no nginx (scripts/deps.sh --test installs nginx-light)")
    pki = Pki(tmp_path, "ng")
    cert, key = pki.server("proxy", chain_ca=True)
    data = daemons.data_dir()
    token = D.token_create(serve_bin, data, "viaproxy")
    d = daemons.new(data_dir=data, token=token)  # plain HTTP, loopback: the default
    https_port, http_port = D.free_port(), D.free_port()
    with open(NGINX_SITE) as f:
        site = f.read()
    for old, new in (("server 127.0.0.1:8080;", "server 127.0.0.1:%d;" % d.port),
                     ("listen 443 ssl http2;", "listen 127.0.0.1:%d ssl http2;" % https_port),
                     ("listen 80;", "listen 127.0.0.1:%d;" % http_port),
                     ("/etc/ssl/sparsityd/fullchain.pem", cert),
                     ("/etc/ssl/sparsityd/privkey.pem", key)):
        assert old in site, "the nginx example no longer has %r: update this test" % old
        site = site.replace(old, new)
    # the machine may have no IPv6; the example's [::] lines are the same as the others
    site = "\n".join(l for l in site.splitlines() if "[::]" not in l)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / "site.conf").write_text(site)
    import getpass
    user = "user %s;" % getpass.getuser() if os.geteuid() == 0 else ""
    temp = " ".join("%s_temp_path %s;" % (k, prefix / k)
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        "%s\npid %s;\nerror_log %s info;\ndaemon off;\nevents {}\n"
        "http {\n access_log %s;\n %s\n include %s;\n}\n" % (
            user, prefix / "nginx.pid", prefix / "error.log", prefix / "access.log", temp,
            prefix / "site.conf"))
    argv = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c",
            str(prefix / "nginx.conf")]
    p = subprocess.run(argv + ["-t"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, "nginx -t refuses the example:\n" + p.stderr
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (prefix / "error.log").read_text()
                time.sleep(0.05)
        proxy = TlsDaemon(serve_bin, data, ca=pki.ca, token=token, port=https_port)
        # a 24 MiB model, streamed through (nginx's own default limit is 1 MiB)
        big = D.write_mlp(str(tmp_path / "mlp.pb"), 6, 1024)
        assert os.path.getsize(big) > 20 << 20
        r = proxy.submit_file("check", big, outputs="out")
        assert r.status == 202, r.describe()
        j = proxy.wait_job(r.json()["id"])  # long-polls through the proxy
        assert j["state"] == "succeeded", j
        # a long-poll that waits its whole time: 304 after it, not a proxy timeout
        r = proxy.get("/v1/jobs/" + j["id"])
        t0 = time.time()
        r = proxy.get("/v1/jobs/%s?wait=3" % j["id"], headers={"If-None-Match": r.header("etag")})
        assert r.status == 304 and time.time() - t0 >= 2.5, (r.status, time.time() - t0)
        # the artifact through the proxy is the daemon's, byte for byte
        via = proxy.get("/v1/jobs/%s/artifacts/input_model" % j["id"])
        with open(big, "rb") as f:
            assert via.status == 200 and via.body == f.read()
        j2 = run_ok(proxy, contract, "insert", model=CHAIN, config=CFG, outputs="out")
        assert d.job(j2["id"]).json()["state"] == "succeeded"
        # the bearer token goes through; no token is 401 from the daemon itself
        r = proxy.get("/v1/jobs", auth=False)
        assert r.status == 401 and r.content_type == "application/problem+json", r.describe()
        assert proxy.get("/metrics", auth=False).status == 200  # from 127.0.0.1
        # plain HTTP: a redirect to HTTPS, never the API
        c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        c.request("GET", "/v1/jobs", headers={"Host": "sparsityd.example.org"})
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == 308 and r.getheader("location", "").startswith("https://"), r.status
        assert j["id"].encode() not in body
    finally:
        proc.terminate()
        proc.wait(timeout=20)
