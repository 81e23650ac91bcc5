"""What an operator installs (deploy/): the default config generated from the settings
table, the man pages, `meson install`'s layout, the Kubernetes manifests, and one licence
everywhere. The .deb and the container image are tests/py/test_deb.py.

TensorFlow-free. Needs the binary under test (SPARSITYD_BIN) and, for the install layout,
the meson build directory it was built in; kubernetes-validate (tests/py/requirements.txt)
for the manifests; groff for the man pages (scripts/deps.sh --test installs both)."""

import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

import daemon as D

REPO = D.REPO
DEPLOY = os.path.join(REPO, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
LICENSE_ID = "Apache-2.0"


def run(argv, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(argv, **kw)


def ok(argv, **kw):
    p = run(argv, **kw)
    assert p.returncode == 0, "%s: rc %d\n%s\n%s" % (argv, p.returncode, p.stdout, p.stderr)
    return p.stdout


def settings(binary, *args, env=None):
    """{name: value} of `serve --print-config` (with args), in table order."""
    out = ok([binary, "serve", *args, "--print-config"], env=env, cwd="/")
    rows = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            rows[name.strip()] = value.strip()
    assert rows, out
    return rows


def env_without_state():
    env = dict(os.environ)
    env.pop("STATE_DIRECTORY", None)
    return env


# ---------------------------------------------------------------------------------------
# The default config file


@pytest.fixture(scope="module")
def generated_conf(serve_bin, tmp_path_factory):
    """deploy/gen-config.sh run on the binary under test, as meson runs it, with a
    STATE_DIRECTORY in the environment that must not reach the file."""
    out = str(tmp_path_factory.mktemp("conf") / "sparsityd.conf")
    env = dict(os.environ, STATE_DIRECTORY="/should/not/appear")
    ok(["sh", os.path.join(DEPLOY, "gen-config.sh"), serve_bin, out], env=env)
    with open(out) as f:
        return out, f.read()


def test_generated_config_comments_every_setting_with_its_default(serve_bin, generated_conf):
    path, text = generated_conf
    defaults = settings(serve_bin, env=env_without_state())
    lines = [l for l in text.splitlines() if l.strip()]
    assert all(l.startswith("#") for l in lines), [l for l in lines if not l.startswith("#")]
    commented = {}
    for l in lines:
        m = re.fullmatch(r"#([a-z_]+) =(?: (.*))?", l)
        if m:
            commented[m.group(1)] = m.group(2) or ""
    assert commented == defaults, "the file's commented settings differ from the table"
    assert "/should/not/appear" not in text
    # commented out, it changes nothing; it parses as a config file
    assert settings(serve_bin, "--config", path, env=env_without_state()) == defaults


def test_generated_config_uncommented_parses_to_the_defaults(serve_bin, generated_conf, tmp_path):
    _, text = generated_conf
    live = tmp_path / "live.conf"
    live.write_text("".join(re.sub(r"^#([a-z_]+ =)", r"\1", l) + "\n"
                            for l in text.splitlines()))
    assert re.search(r"^listen = ", live.read_text(), re.M)
    env = env_without_state()
    assert settings(serve_bin, "--config", str(live), env=env) == settings(serve_bin, env=env)
    # and a changed line takes effect, so the comparison above can tell
    live.write_text(live.read_text().replace("\nworkers = ", "\nworkers = 3\n#was "))
    assert settings(serve_bin, "--config", str(live), env=env)["workers"] == "3"


def test_build_directory_has_the_same_config(serve_bin, generated_conf):
    built = os.path.join(os.path.dirname(os.path.dirname(serve_bin)), "deploy", "sparsityd.conf")
    if not os.path.isfile(built):
        pytest.skip("%s is not in a meson build directory" % serve_bin)
    with open(built) as f:
        assert f.read() == generated_conf[1]


# ---------------------------------------------------------------------------------------
# Man pages


def man_settings(text):
    """{name: default} of sparsityd.conf(5)'s SETTINGS section, whose entries read
    `.BR name " (default " value )` or `.BR name " (default empty)"`."""
    sect = text.split(".SH SETTINGS", 1)[1].split("\n.SH ", 1)[0]
    rows = {}
    for m in re.finditer(r'^\.TP\n\.BR (\w+) " \(default (?:empty\)"|" (\S+) \))$', sect, re.M):
        rows[m.group(1)] = m.group(2) or ""
    assert len(rows) == sect.count(".TP\n"), "an entry of SETTINGS has another form"
    return rows


def test_conf_man_page_lists_every_setting_and_default(serve_bin):
    with open(os.path.join(DEPLOY, "man", "sparsityd.conf.5")) as f:
        rows = man_settings(f.read())
    defaults = settings(serve_bin, env=env_without_state())
    assert list(rows) == list(defaults), "sparsityd.conf.5's SETTINGS differ from the table"
    assert rows == defaults


@pytest.mark.parametrize("page", ["sparsityd.1", "sparsityd.conf.5"])
def test_man_pages_render_without_warnings(page):
    groff = shutil.which("groff")
    assert groff, "groff is missing (Debian: groff-base; scripts/deps.sh --test installs it)"
    p = run([groff, "-man", "-ww", "-z", os.path.join(DEPLOY, "man", page)])
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    # -P-cbou: plain text, no overstrike bold or underline
    out = ok([groff, "-man", "-Tutf8", "-P-cbou", os.path.join(DEPLOY, "man", page)])
    assert "NAME" in out and "SEE ALSO" in out


def test_cli_man_page_names_every_command(serve_bin):
    with open(os.path.join(DEPLOY, "man", "sparsityd.1")) as f:
        text = f.read()
    p = run([serve_bin, "--help"])
    usage = p.stdout + p.stderr
    commands = set(re.findall(r"^  (\w+) ", usage, re.M))
    assert {"insert", "export", "prune", "check", "serve", "token", "version"} <= commands
    for c in commands:
        assert re.search(r"^\.B sparsityd %s\b" % c, text, re.M), "sparsityd.1 lacks %s" % c


# ---------------------------------------------------------------------------------------
# meson install


def build_dir_of(binary):
    b = os.path.dirname(os.path.dirname(binary))
    return b if os.path.isfile(os.path.join(b, "meson-private", "coredata.dat")) else None


def test_meson_install_layout(serve_bin, tmp_path):
    build = build_dir_of(serve_bin)
    if not build:
        pytest.skip("%s is not in a meson build directory" % serve_bin)
    info = json.loads(ok(["meson", "introspect", "--buildoptions", build]))
    opt = {o["name"]: o["value"] for o in info}
    prefix = opt["prefix"]

    dest = tmp_path / "all"
    ok(["meson", "install", "-C", build, "--destdir", str(dest), "--no-rebuild",
        "--tags", "runtime,man,service"])
    sysconf = os.path.join(prefix, opt["sysconfdir"])
    binpath = os.path.join(prefix, opt["bindir"], "sparsityd")
    files = {
        "binary": str(dest) + binpath,
        "man1": str(dest) + os.path.join(prefix, opt["mandir"], "man1", "sparsityd.1"),
        "man5": str(dest) + os.path.join(prefix, opt["mandir"], "man5", "sparsityd.conf.5"),
        "unit": str(dest) + os.path.join(prefix, "lib", "systemd", "system", "sparsityd.service"),
        "sysusers": str(dest) + os.path.join(prefix, "lib", "sysusers.d", "sparsityd.conf"),
        "conf": str(dest) + os.path.join(sysconf, "sparsityd", "sparsityd.conf"),
    }
    for what, f in files.items():
        assert os.path.isfile(f), "%s not installed at %s" % (what, f)
    with open(files["unit"]) as f:
        unit = f.read()
    # the unit starts the binary this install put in place, with its config file
    assert re.search(r"^ExecStart=%s serve --config %s\s*$" % (
        re.escape(binpath), re.escape(os.path.join(sysconf, "sparsityd", "sparsityd.conf"))),
        unit, re.M), unit
    assert "/usr/bin/sparsityd" not in unit or binpath == "/usr/bin/sparsityd"
    with open(files["sysusers"]) as f:
        assert re.search(r"^u sparsityd - .* /var/lib/sparsityd", f.read(), re.M)

    # the installed binary alone, started far from the source tree, serves its contract
    data = tmp_path / "data"
    dmn = D.Daemon(files["binary"], str(data), args=["--config", files["conf"]],
                   log_dir=str(tmp_path / "logs"))
    dmn.cwd = "/"
    dmn.start()
    try:
        r = dmn.get("/openapi.yaml")
        assert r.status == 200
        with open(D.OPENAPI, "rb") as f:
            assert r.body == f.read()
    finally:
        dmn.stop()

    # what `pip install .` installs (pyproject.toml's tags) carries none of these
    wheel = tmp_path / "wheel"
    ok(["meson", "install", "-C", build, "--destdir", str(wheel), "--no-rebuild",
        "--tags", "runtime,python-runtime"])
    got = [os.path.relpath(os.path.join(d, f), str(wheel)) for d, _, fs in os.walk(wheel) for f in fs]
    assert not [g for g in got if "/man/" in g or "systemd" in g or "sysusers" in g
                or g.endswith("sparsityd.conf")], got


# ---------------------------------------------------------------------------------------
# Kubernetes


def manifests():
    docs = []
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml"):
            with open(os.path.join(K8S, name)) as f:
                docs += [(name, d) for d in yaml.safe_load_all(f) if d]
    return docs


def by_kind(kind):
    found = [d for _, d in manifests() if d["kind"] == kind]
    assert found, "no %s in deploy/kubernetes" % kind
    return found


def test_manifests_validate_against_kubernetes_1_30_offline():
    kv = pytest.importorskip("kubernetes_validate",
                             reason="pip install kubernetes-validate (tests/py/requirements.txt)")
    docs = manifests()
    assert {d["kind"] for _, d in docs} >= {"StatefulSet", "Service", "Secret", "ConfigMap"}
    for name, d in docs:
        kv.validate(d, "1.30.0", strict=True)   # raises ValidationError on a bad field
    # the validator does catch a misspelt field and a wrong type, so passing means something
    sts = json.loads(json.dumps(by_kind("StatefulSet")[0]))
    sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, "1.30.0", strict=True)
    sts = json.loads(json.dumps(by_kind("StatefulSet")[0]))
    sts["spec"]["replicas"] = "one"
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, "1.30.0", strict=True)


def test_statefulset_is_restricted_and_probed():
    sts = by_kind("StatefulSet")[0]
    spec = sts["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    psc = pod["securityContext"]
    # Pod Security Standards, "restricted" profile
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert not [v for v in pod.get("volumes", []) if "hostPath" in v]
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert not sc.get("privileged")
    main = pod["containers"][0]
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["resources"]["requests"]["cpu"] and main["resources"]["requests"]["memory"]
    # the data directory is a PersistentVolumeClaim
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    assert mounts["/var/lib/sparsityd"] in claims
    ann = spec["template"]["metadata"]["annotations"]
    port = str(main["ports"][0]["containerPort"])
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == port
    assert ann["prometheus.io/path"] == "/metrics"
    # the TLS pair comes from the kubernetes.io/tls Secret
    secret = by_kind("Secret")[0]
    assert secret["type"] == "kubernetes.io/tls"
    tls_vol = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") ==
               secret["metadata"]["name"]]
    assert tls_vol and tls_vol[0]["name"] in mounts.values()
    svc = [s for s in by_kind("Service") if s["metadata"]["name"] == spec["serviceName"]]
    assert svc, "serviceName %s has no Service" % spec["serviceName"]


def test_configmap_config_is_accepted_by_the_daemon(serve_bin, tmp_path):
    """The ConfigMap's file parses with the binary's own table, and says what the pod
    mounts: the data directory, and the certificate and key where the Secret lands."""
    cm = by_kind("ConfigMap")[0]
    conf = tmp_path / "sparsityd.conf"
    conf.write_text(cm["data"]["sparsityd.conf"])
    got = settings(serve_bin, "--config", str(conf), env=env_without_state())
    pod = by_kind("StatefulSet")[0]["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert main["args"][main["args"].index("--config") + 1] == (
        [m["mountPath"] for m in main["volumeMounts"] if m["name"] == "config"][0]
        + "/sparsityd.conf")
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert got["data_dir"] == mounts["data"]
    assert got["tls_cert"] == mounts["tls"] + "/tls.crt"
    assert got["tls_key"] == mounts["tls"] + "/tls.key"
    assert got["listen"].endswith(":%d" % main["ports"][0]["containerPort"])


# ---------------------------------------------------------------------------------------
# One licence


def test_one_licence_everywhere():
    with open(os.path.join(REPO, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    with open(os.path.join(REPO, "meson.build")) as f:
        assert re.search(r"license\s*:\s*'%s'" % LICENSE_ID, f.read())
    with open(D.OPENAPI) as f:
        lic = yaml.safe_load(f)["info"]["license"]
    assert lic["identifier"] == LICENSE_ID, lic
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    assert proj["license"] in ({"text": LICENSE_ID}, LICENSE_ID), proj["license"]
    # the .deb's copyright file is generated from project()'s licence (deploy/meson.build);
    # test_deb.py reads it from the installed package
    with open(os.path.join(DEPLOY, "deb", "copyright.in")) as f:
        assert re.search(r"^License: @LICENSE@$", f.read(), re.M)


def test_copyright_file_names_the_licence(serve_bin):
    build = build_dir_of(serve_bin)
    if not build:
        pytest.skip("%s is not in a meson build directory" % serve_bin)
    with open(os.path.join(build, "deploy", "copyright")) as f:
        text = f.read()
    assert re.findall(r"^License: (.*)$", text, re.M) == [LICENSE_ID, LICENSE_ID], text
    assert "/usr/share/common-licenses/%s." % LICENSE_ID in text
