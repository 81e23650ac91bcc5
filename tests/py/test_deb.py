"""The .deb (deploy/deb/build.sh) and the container image (deploy/container/Containerfile),
each installed into a clean Debian 12 root made by debootstrap, with no source tree in it.

There is no container engine here, so the image is built the way the engine would build
it, from the Containerfile itself: every instruction is read, the build stage's RUN lines
run in a copy of the tree (the files .containerignore lets through; its commands are the
project's own, scripts/deps.sh and deploy/deb/build.sh, which build the .deb), and the
runtime stage's RUN lines run with chroot(8) in a fresh Debian 12 minbase root, the same
Debian as debian:12-slim. USER, ENV, VOLUME, EXPOSE, HEALTHCHECK, ENTRYPOINT and CMD are
then what the tests start and check. An instruction the test does not know fails it.

The debootstrap root is made once and kept as a tarball under $SPARSITYD_TEST_CACHE
(default ~/.cache/sparsityd-tests); each test unpacks a fresh copy. Needs root (chroot,
mount), debootstrap and openssl (scripts/deps.sh --test) and Debian's package mirror
($SPARSITYD_TEST_MIRROR, default deb.debian.org). TensorFlow-free.
"""

import fnmatch
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import stat
import subprocess
import time

import pytest
import yaml

import daemon as D

REPO = D.REPO
CONTAINERFILE = os.path.join(REPO, "deploy", "container", "Containerfile")
CACHE = os.environ.get("SPARSITYD_TEST_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sparsityd-tests")
MIRROR = os.environ.get("SPARSITYD_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"   # Debian 12, as debian:12-slim
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="debootstrap, chroot and mount need root (CI runs as root)")


def run(argv, check=True, timeout=600, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert p.returncode == 0, "%s: rc %d\n%s\n%s" % (argv, p.returncode, p.stdout[-3000:],
                                                         p.stderr[-3000:])
    return p


# ---------------------------------------------------------------------------------------
# A clean Debian 12 root


def base_tarball():
    """A debootstrap --variant=minbase bookworm root, made once, as a tarball."""
    tar = os.path.join(CACHE, "%s-minbase.tar" % SUITE)
    if os.path.isfile(tar):
        return tar
    assert shutil.which("debootstrap"), "debootstrap is missing: scripts/deps.sh --test"
    os.makedirs(CACHE, exist_ok=True)
    tmp = tar + ".%d.d" % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", SUITE, tmp, MIRROR], timeout=900)
    run(["tar", "-C", tmp, "-cf", tar + ".part", "."])
    os.replace(tar + ".part", tar)
    shutil.rmtree(tmp)
    return tar


class Root:
    """A fresh copy of the Debian 12 root, with /proc mounted and the host's resolver."""

    def __init__(self, path):
        self.path = str(path)
        os.makedirs(self.path)
        run(["tar", "-C", self.path, "--numeric-owner", "-xpf", base_tarball()])
        shutil.copy("/etc/resolv.conf", os.path.join(self.path, "etc", "resolv.conf"))
        run(["mount", "-t", "proc", "proc", os.path.join(self.path, "proc")])
        self.procs = []

    def file(self, p):
        return os.path.join(self.path, p.lstrip("/"))

    def argv(self, argv, user=None):
        return (["chroot"] + (["--userspec=%s" % user] if user else []) + [self.path]
                + list(argv))

    def env(self, extra=None):
        return dict({"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}, **(extra or {}))

    def sh(self, cmd, user=None, env=None, check=True, timeout=600):
        return run(self.argv(["/bin/sh", "-c", cmd], user), check=check, timeout=timeout,
                   env=self.env(env))

    def start(self, argv, user=None, env=None, log=None):
        p = subprocess.Popen(self.argv(argv, user), env=self.env(env), cwd="/",
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", self.file("/proc")], capture_output=True)
        if not os.path.ismount(self.file("/proc")):
            shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def new_root(tmp_path):
    roots = []

    def make(name="root"):
        r = Root(tmp_path / name)
        roots.append(r)
        return r
    yield make
    for r in roots:
        r.close()


# ---------------------------------------------------------------------------------------
# The Containerfile, read


def instructions(path=CONTAINERFILE):
    """[(INSTRUCTION, argument)] with comments dropped and continuation lines joined."""
    out, cur = [], ""
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            word, _, arg = cur.strip().partition(" ")
            out.append((word.upper(), arg.strip()))
            cur = ""
    return out


def stages():
    """[{"name", "from", "steps"}], one per FROM."""
    res = []
    for ins, arg in instructions():
        if ins == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            res.append({"from": m.group(1), "name": m.group(2), "steps": []})
        else:
            assert res, "an instruction before FROM: %s" % ins
            res[-1]["steps"].append((ins, arg))
    return res


def exec_form(arg):
    return json.loads(arg) if arg.startswith("[") else ["/bin/sh", "-c", arg]


def context_ignored():
    """The .containerignore patterns (Docker's rules: trailing / dropped, ** any depth)."""
    pats = []
    with open(os.path.join(REPO, ".containerignore")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                assert not line.startswith("!"), "exceptions are not emulated: %s" % line
                pats.append(line.rstrip("/"))
    return pats


def copy_context(dst):
    pats = context_ignored()

    def ignore(d, names):
        rel = os.path.relpath(d, REPO)
        out = set()
        for n in names:
            p = n if rel == "." else os.path.join(rel, n)
            for pat in pats:
                if (pat.startswith("**/") and fnmatch.fnmatch(n, pat[3:])) or \
                        fnmatch.fnmatch(p, pat):
                    out.add(n)
        return out
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)


class Image:
    """What the runtime stage leaves: the root, and the image's config."""

    def __init__(self, root):
        self.root = root
        self.user = None
        self.env = {}
        self.volumes, self.exposed = [], []
        self.entrypoint, self.cmd, self.healthcheck = [], [], None

    def argv(self):
        return self.entrypoint + self.cmd


@pytest.fixture(scope="module")
def build_stage(tmp_path_factory):
    """The Containerfile's build stage, run in a copy of the context: {"src": the copy,
    "workdir": its path in the image, "name": the stage's name, "deb": the .deb built}."""
    build = stages()[0]
    assert build["from"] == "debian:12-slim", build
    src = str(tmp_path_factory.mktemp("build-stage") / "context")
    workdir = None
    for ins, arg in build["steps"]:
        if ins == "WORKDIR":
            workdir = arg
        elif ins == "COPY":
            assert arg == ". ." and workdir, "only `COPY . .` after WORKDIR is emulated: %s" % arg
            copy_context(src)
            assert not os.path.exists(os.path.join(src, "build")), "build/ reached the context"
        elif ins == "RUN":
            # the project's own commands: the test runs them as the image build would
            run(["/bin/sh", "-c", arg], cwd=src, timeout=900)
        else:
            pytest.fail("Containerfile build stage: %s is not emulated by this test" % ins)
    debs = [os.path.join(dp, f) for dp, _, fs in os.walk(src) for f in fs if f.endswith(".deb")]
    assert len(debs) == 1, debs
    return {"src": src, "workdir": workdir, "name": build["name"], "deb": debs[0]}


@pytest.fixture(scope="module")
def deb(build_stage):
    """The .deb deploy/deb/build.sh made in the build stage."""
    return build_stage["deb"]


def build_image(build_stage, root):
    runtime = stages()[1]
    assert runtime["from"] == "debian:12-slim", runtime
    src, workdir, name = build_stage["src"], build_stage["workdir"], build_stage["name"]
    img = Image(root)
    for ins, arg in runtime["steps"]:
        if ins == "COPY":
            m = re.fullmatch(r"--from=%s\s+(\S+)\s+(\S+)" % re.escape(name), arg)
            assert m, "only COPY --from=%s SRC/ DST/ is emulated: %s" % (name, arg)
            s, d = m.group(1), m.group(2)
            assert s.startswith(workdir + "/") and s.endswith("/") and d.endswith("/"), arg
            shutil.copytree(os.path.join(src, s[len(workdir) + 1:]), root.file(d))
        elif ins == "RUN":
            root.sh(arg, timeout=900)
        elif ins == "USER":
            img.user = arg
        elif ins == "ENV":
            k, _, v = arg.partition("=")
            img.env[k] = v
        elif ins == "VOLUME":
            img.volumes += exec_form(arg) if arg.startswith("[") else arg.split()
        elif ins == "EXPOSE":
            img.exposed += arg.split()
        elif ins == "HEALTHCHECK":
            m = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.*)", arg)
            assert m, arg
            img.healthcheck = exec_form(m.group(2))
        elif ins == "ENTRYPOINT":
            img.entrypoint = exec_form(arg)
        elif ins == "CMD":
            img.cmd = exec_form(arg)
        else:
            pytest.fail("Containerfile runtime stage: %s is not emulated by this test" % ins)
    return img


# ---------------------------------------------------------------------------------------
# TLS material and requests


def make_tls(d):
    """A CA, and a server pair for 127.0.0.1 signed by it: (ca.crt, tls.crt, tls.key)."""
    os.makedirs(d, exist_ok=True)
    ca_key, ca, key, csr, crt = (os.path.join(d, n) for n in
                                 ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
         "-out", ca, "-days", "2", "-subj", "/CN=sparsityd test CA"])
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=localhost"])
    ext = os.path.join(d, "ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext])
    return ca, crt, key


def https(port, path, ca, token=None, timeout=10):
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        c.request("GET", path, headers={"Authorization": "Bearer " + token} if token else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def with_port(s, old, new):
    out = s.replace(":%d" % old, ":%d" % new)
    assert out != s, "%r holds no :%d" % (s, old)
    return out


# ---------------------------------------------------------------------------------------
# The container image


def test_container_image(build_stage, tmp_path, new_root):
    root = new_root("image")
    img = build_image(build_stage, root)

    # the build stage's commands are the ones the test command runs
    with open(os.path.join(REPO, "scripts", "test.sh")) as f:
        assert re.search(r"^\./scripts/deps\.sh\b", f.read(), re.M)
    debs = os.listdir(root.file("/tmp"))
    assert not debs, "the runtime stage leaves its .deb behind: %s" % debs
    assert re.fullmatch(r"sparsityd_[^_]+_[a-z0-9]+\.deb", os.path.basename(build_stage["deb"]))

    # a non-root user with a fixed uid, owning the data volume
    uid, gid = (int(x) for x in img.user.split(":"))
    assert uid != 0 and gid != 0
    with open(root.file("/etc/passwd")) as f:
        assert re.search(r"^sparsityd:x:%d:%d:.*:/var/lib/sparsityd:/usr/sbin/nologin$" % (uid, gid),
                         f.read(), re.M)
    assert img.volumes == ["/var/lib/sparsityd"]
    st = os.stat(root.file("/var/lib/sparsityd"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750)
    # the package's files, and no source tree: the API contract comes from the binary
    assert os.access(root.file("/usr/bin/sparsityd"), os.X_OK)
    found = run(["find", root.path, "-xdev", "-name", "openapi.yaml"]).stdout.split()
    assert not found, found

    # the command listens on every address of the container, with TLS and tokens
    argv = img.argv()
    listen = argv[argv.index("--listen") + 1]
    assert listen.startswith("0.0.0.0:")
    port = int(listen.rsplit(":", 1)[1])
    assert img.exposed == [str(port)]
    assert ":%d/healthz" % port in img.env["SPARSITYD_HEALTH_URL"]
    new_port = D.free_port()
    argv[argv.index("--listen") + 1] = with_port(listen, port, new_port)
    env = {k: with_port(v, port, new_port) if ":%d" % port in v else v for k, v in img.env.items()}

    # the certificate and key, as a read-only mount readable by the image's group
    ca, crt, key = make_tls(str(tmp_path / "tls"))
    want = [argv[argv.index("--tls-cert") + 1], argv[argv.index("--tls-key") + 1]]
    for src_file, dst in zip((crt, key), want):
        os.makedirs(os.path.dirname(root.file(dst)), exist_ok=True)
        shutil.copy(src_file, root.file(dst))
        os.chown(root.file(dst), 0, gid)
        os.chmod(root.file(dst), 0o440)

    log = open(str(tmp_path / "daemon.log"), "w+")

    def daemon_log():
        log.flush()
        with open(log.name) as f:
            return f.read()[-4000:]

    # no token yet: it refuses to serve on 0.0.0.0, naming what is missing
    p = root.start(argv, user=img.user, env=env, log=log)
    assert p.wait(30) == 2, daemon_log()
    assert "token" in daemon_log()

    # the Kubernetes init container, run in this image as its user: a token nobody
    # knows on a new volume, and none more on the next start
    with open(os.path.join(REPO, "deploy", "kubernetes", "statefulset.yaml")) as f:
        pod = yaml.safe_load(f)["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    for _ in range(2):
        run(root.argv(init["command"], img.user), env=root.env(env))
    listed = json.loads(run(root.argv(img.entrypoint + ["token", "list", "--json", "--data-dir",
                                                        "/var/lib/sparsityd"], img.user),
                            env=root.env(env)).stdout)
    assert [t["tenant"] for t in listed] == ["bootstrap"], listed

    # the documented way to make a token: the image's entrypoint, as its user
    tok = run(root.argv(img.entrypoint + ["token", "create", "--tenant", "team-a",
                                          "--data-dir", "/var/lib/sparsityd"], img.user),
              env=root.env(env)).stdout.split()
    assert len(tok) == 1 and tok[0].startswith("sdt_"), tok

    p = root.start(argv, user=img.user, env=env, log=log)
    try:
        deadline = time.time() + 30
        while True:
            assert p.poll() is None, "daemon exited %s\n%s" % (p.returncode, daemon_log())
            # the HEALTHCHECK, run inside the image as the engine would
            h = run(root.argv(img.healthcheck, img.user), check=False, env=root.env(env),
                    timeout=30)
            if h.returncode == 0:
                break
            assert time.time() < deadline, "HEALTHCHECK never passed: %s\n%s" % (
                h.stderr, daemon_log())
            time.sleep(0.2)
        status, body = https(new_port, "/openapi.yaml", ca)
        with open(D.OPENAPI, "rb") as f:
            assert (status, body) == (200, f.read())
        assert https(new_port, "/v1/jobs", ca)[0] == 401
        status, body = https(new_port, "/v1/jobs", ca, token=tok[0])
        assert status == 200 and "jobs" in json.loads(body), body
        # JSON log lines, one object each
        lines = [l for l in daemon_log().splitlines() if l.startswith("{")]
        assert lines and all(isinstance(json.loads(l), dict) for l in lines)
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
        log.close()
    assert rc == 0


# ---------------------------------------------------------------------------------------
# The .deb, as an operator installs it


def control(deb_path):
    fields, key = {}, None
    for line in run(["dpkg-deb", "-f", deb_path]).stdout.splitlines():
        if line.startswith(" ") and key:
            fields[key] += "\n" + line
        else:
            key, _, v = line.partition(":")
            fields[key] = v.strip()
    return fields


def test_deb_metadata(deb, build_stage, tmp_path):
    f = control(deb)
    assert f["Package"] == "sparsityd" and f["Architecture"] == run(
        ["dpkg", "--print-architecture"]).stdout.strip()
    version = run([os.path.join(build_stage["src"], "build-deb", "daemon", "sparsityd"),
                   "version"]).stdout
    assert f["Version"] in version
    deps = [d.strip().split()[0] for d in f["Depends"].split(",")]
    for lib in ("libc6", "libmicrohttpd12", "libsqlite3-0", "libuv1", "libjansson4",
                "libprotobuf-c1", "adduser"):
        assert lib in deps, (lib, f["Depends"])
    listing = run(["dpkg-deb", "-c", deb]).stdout
    for path in ("./usr/bin/sparsityd", "./usr/bin/sparsityd-server",
                 "./usr/share/man/man1/sparsityd.1.gz",
                 "./usr/share/man/man5/sparsityd.conf.5.gz", "./etc/sparsityd/sparsityd.conf",
                 "./usr/lib/systemd/system/sparsityd.service",
                 "./usr/lib/sysusers.d/sparsityd.conf", "./usr/share/doc/sparsityd/copyright"):
        assert re.search(r"^\S+ root/root .* %s$" % re.escape(path), listing, re.M), path
    ctl = str(tmp_path / "control")
    run(["dpkg-deb", "-e", deb, ctl])
    with open(os.path.join(ctl, "conffiles")) as fh:
        assert fh.read().split() == ["/etc/sparsityd/sparsityd.conf"]
    for s in ("postinst", "prerm", "postrm"):
        assert os.access(os.path.join(ctl, s), os.X_OK), s
        run(["sh", "-n", os.path.join(ctl, s)])


def test_deb_installs_into_a_clean_debian_12(deb, new_root, tmp_path):
    root = new_root()
    shutil.copy(deb, root.file("/root/"))
    name = os.path.basename(deb)
    assert not os.path.exists(root.file("/usr/bin/sparsityd"))
    # README's command; apt fetches the libraries the Depends name from Debian 12
    root.sh("cd /root && apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y -qq ./%s" % shlex.quote(name))

    # the system user, its home the data directory, which exists and is private
    with open(root.file("/etc/passwd")) as f:
        m = re.search(r"^sparsityd:x:(\d+):(\d+):[^:]*:/var/lib/sparsityd:/usr/sbin/nologin$",
                      f.read(), re.M)
    assert m, "no system user sparsityd"
    uid, gid = int(m.group(1)), int(m.group(2))
    assert 0 < uid < 1000, uid   # a system uid
    st = os.stat(root.file("/var/lib/sparsityd"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750)
    conffiles = root.sh("dpkg-query -W -f='${Conffiles}' sparsityd").stdout
    assert "/etc/sparsityd/sparsityd.conf" in conffiles
    with open(root.file("/usr/share/doc/sparsityd/copyright")) as f:
        text = f.read()
    assert re.search(r"^License: Apache-2\.0$", text, re.M), text
    assert os.path.isfile(root.file("/usr/share/common-licenses/Apache-2.0"))
    with open(root.file("/usr/lib/systemd/system/sparsityd.service")) as f, \
            open(os.path.join(REPO, "deploy", "systemd", "sparsityd.service")) as g:
        assert f.read() == g.read()   # prefix /usr: the unit as written

    # the service as systemd starts it (ExecStart's config, its user, / as working
    # directory, $STATE_DIRECTORY), with no source tree in this root
    port = D.free_port()
    log = open(str(tmp_path / "deb-daemon.log"), "w+")
    p = root.start(["/usr/bin/sparsityd", "serve", "--config", "/etc/sparsityd/sparsityd.conf",
                    "--listen", "127.0.0.1:%d" % port], user="%d:%d" % (uid, gid),
                   env={"STATE_DIRECTORY": "/var/lib/sparsityd"}, log=log)
    try:
        dmn = D.Daemon("/usr/bin/sparsityd", "/unused", port=port)
        deadline = time.time() + 30
        while True:
            assert p.poll() is None, "exited %s" % p.returncode
            try:
                r = dmn.get("/openapi.yaml", auth=False, timeout=5)
                break
            except OSError:
                assert time.time() < deadline
                time.sleep(0.1)
        with open(D.OPENAPI, "rb") as f:
            assert (r.status, r.body) == (200, f.read())
        assert os.path.isfile(root.file("/var/lib/sparsityd/sparsityd.db"))
        assert not os.path.exists(root.file("/var/sparsityd.db"))
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
        log.close()
    assert rc == 0

    # purge: binary, config and data go; the user stays (Debian policy)
    root.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq sparsityd")
    for gone in ("/usr/bin/sparsityd", "/usr/bin/sparsityd-server",
                 "/etc/sparsityd/sparsityd.conf", "/var/lib/sparsityd"):
        assert not os.path.exists(root.file(gone)), gone
    with open(root.file("/etc/passwd")) as f:
        assert re.search(r"^sparsityd:", f.read(), re.M)
