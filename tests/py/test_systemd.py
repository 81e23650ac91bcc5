"""deploy/systemd/sparsityd.service and the daemon's side of it.

- `systemd-analyze verify` passes on the unit (its binary and man pages found), and
  `systemd-analyze security` rates its exposure 2.5 or less ("OK" or better);
- the daemon, started exactly as the unit's ExecStart says (the binary path and the
  config file swapped for the built ones) from "/" with the environment systemd gives a
  Type=notify service (STATE_DIRECTORY, NOTIFY_SOCKET, WATCHDOG_USEC), tells a socket
  the test reads: READY=1 once it listens, WATCHDOG=1 every half interval, RELOADING=1
  with MONOTONIC_USEC on SIGHUP then READY=1, STOPPING=1 on SIGTERM; its data lands in
  STATE_DIRECTORY, not in /var;
- an abstract NOTIFY_SOCKET (@name) works; a bad one or a watchdog meant for another
  process is logged or ignored, never fatal;
- started from "/" with no STATE_DIRECTORY, the default ./var is refused, not /var.

HTTP and CLI only: no TensorFlow. Needs systemd-analyze (Debian package systemd) and
man (man-db) for the first two tests; scripts/deps.sh --test installs them.
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

import daemon as D

UNIT = os.path.join(D.REPO, "deploy", "systemd", "sparsityd.service")
MAN = os.path.join(D.REPO, "deploy", "man")


def unit_settings():
    """The unit's [Service] assignments, name -> list of values."""
    out, section = {}, None
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            name, _, value = line.partition("=")
            if section == "Service":
                out.setdefault(name.strip(), []).append(value.strip())
    return out


def exec_start(binary, config):
    """The unit's ExecStart as an argv, with the installed paths swapped for the test's."""
    (line,) = unit_settings()["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == "/usr/bin/sparsityd", "ExecStart runs %r, not /usr/bin/sparsityd" % argv[0]
    assert "/etc/sparsityd/sparsityd.conf" in argv, argv
    return [binary if a == argv[0] else config if a == "/etc/sparsityd/sparsityd.conf" else a
            for a in argv]


def run(*argv, env=None):
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, env=env)
    return p.returncode, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------
# the unit file


def test_unit_says_what_the_service_is():
    s = unit_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["KillSignal"] == "SIGTERM"  # the drain signal
    assert one["Restart"] == "on-failure"
    assert one["StateDirectory"] == "sparsityd"
    assert one["WatchdogSec"]
    for key, want in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                      ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                      ("ProtectHome", "yes"), ("CapabilityBoundingSet", "")):
        assert one.get(key) == want, "%s=%r, want %r" % (key, one.get(key), want)
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in s["SystemCallFilter"]


def test_systemd_analyze_verify(serve_bin, tmp_path):
    if not shutil.which("systemd-analyze") or not shutil.which("man"):
        pytest.fail("systemd-analyze or man missing: apt install systemd man-db "
                    "(scripts/deps.sh --test)")
    # The unit as installed, but naming the binary built here (verify checks that
    # ExecStart is executable) ...
    with open(UNIT) as f:
        text = f.read()
    unit = tmp_path / "sparsityd.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/sparsityd",
                                 "ExecStart=" + os.path.abspath(serve_bin)))
    # ... and the man pages of its Documentation= line, found through MANPATH as man(1)
    # finds installed ones.
    manpath = tmp_path / "man"
    for page, sec in (("sparsityd.1", "man1"), ("sparsityd.conf.5", "man5")):
        src = os.path.join(MAN, page)
        assert os.path.isfile(src), "Documentation= names %s, but %s is missing" % (page, src)
        (manpath / sec).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, manpath / sec / page)
    env = dict(os.environ, MANPATH=str(manpath))
    rc, out = run("systemd-analyze", "verify", str(unit), env=env)
    # (units it loads beside ours, e.g. network-online.target's, may have their own say)
    mine = [l for l in out.splitlines() if "sparsityd" in l]
    assert rc == 0 and not mine, "systemd-analyze verify: exit %d\n%s" % (rc, out)
    # It does check: a unit whose binary is missing fails.
    unit.write_text(text.replace("ExecStart=/usr/bin/sparsityd",
                                 "ExecStart=" + str(tmp_path / "no-such-binary")))
    rc, out = run("systemd-analyze", "verify", str(unit), env=env)
    assert rc != 0 and "no-such-binary" in out, out


def test_systemd_analyze_security_is_ok():
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze missing: apt install systemd (scripts/deps.sh --test)")
    # --threshold is on a 0..100 scale: 25 is an exposure of 2.5.
    rc, out = run("systemd-analyze", "security", "--offline=true", "--threshold=25",
                  "--no-pager", UNIT)
    m = re.search(r"Overall exposure level for sparsityd\.service: ([0-9.]+) (\w+)", out)
    assert m, out
    assert float(m.group(1)) <= 2.5, "exposure %s %s, want <= 2.5\n%s" % (
        m.group(1), m.group(2), out)
    assert rc == 0, out


# ---------------------------------------------------------------------------------------
# the daemon as the unit starts it


class Notify:
    """A datagram socket in the place of systemd's notify socket: collects what the
    daemon sends, one dict per datagram (its VAR=VALUE lines) with the receive time."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # '@name' is an abstract socket: a NUL byte, then the name
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address
        self.got = []

    def next(self, timeout=30):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            raise AssertionError("nothing on the notify socket within %ss; got %r" % (
                timeout, self.got))
        msg = dict(l.split("=", 1) for l in data.decode().split("\n") if l)
        msg["_t"] = time.monotonic()
        self.got.append(msg)
        return msg

    def wait(self, key, timeout=30, skip_watchdog=True):
        """The next message that has key, skipping watchdog pings only."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.next(max(0.1, deadline - time.monotonic()))
            if key in m:
                return m
            assert skip_watchdog and set(m) == {"WATCHDOG", "_t"}, \
                "expected %s, got %r" % (key, m)

    def close(self):
        self.sock.close()


def as_unit(daemons, serve_bin, tmp_path, notify_address=None, **env):
    """A daemon started the way the unit starts it: ExecStart's argv, from "/", with a
    state directory made for it and the notify socket set. Not started yet."""
    state = tmp_path / "state"
    state.mkdir()
    dmn = daemons.new(start=False, data_dir=str(state))
    config = tmp_path / "sparsityd.conf"
    config.write_text("listen = 127.0.0.1:%d\nlog_level = debug\n" % dmn.port)
    argv = exec_start(serve_bin, str(config))
    dmn.argv = lambda: argv
    dmn.cwd = "/"
    dmn.env = dict(os.environ, STATE_DIRECTORY=str(state), **env)
    if notify_address:
        dmn.env["NOTIFY_SOCKET"] = notify_address
    return dmn


def test_notify_lifecycle_as_the_unit_runs_it(daemons, serve_bin, tmp_path):
    notify = Notify(str(tmp_path / "notify"))
    # 1 s watchdog: a ping every 0.5 s
    dmn = as_unit(daemons, serve_bin, tmp_path, notify.address, WATCHDOG_USEC="1000000")
    try:
        dmn.start()
        ready = notify.wait("READY")
        assert ready["READY"] == "1" and "listening on" in ready.get("STATUS", ""), ready
        # READY=1 came once the port listens: nothing was sent before it
        assert notify.got == [ready], notify.got
        assert dmn.get("/readyz").status == 200

        pings = [notify.next(5) for _ in range(4)]
        assert all(p.get("WATCHDOG") == "1" for p in pings), pings
        gaps = [b["_t"] - a["_t"] for a, b in zip(pings, pings[1:])]
        assert all(0.3 < g < 0.8 for g in gaps), "pings every 0.5 s expected: %r" % gaps

        t0 = time.monotonic()
        dmn.signal(signal.SIGHUP)
        rel = notify.wait("RELOADING")
        assert rel["RELOADING"] == "1", rel
        # MONOTONIC_USEC is CLOCK_MONOTONIC, the clock of time.monotonic() on Linux
        mono = int(rel["MONOTONIC_USEC"]) / 1e6
        assert t0 - 0.1 <= mono <= time.monotonic() + 0.1, (t0, mono)
        again = notify.wait("READY")
        assert again["READY"] == "1", again
        assert dmn.get("/readyz").status == 200

        dmn.signal(signal.SIGTERM)
        stop = notify.wait("STOPPING")
        assert stop["STOPPING"] == "1" and "draining" in stop.get("STATUS", ""), stop
        assert dmn.proc.wait(30) == 0, dmn.logs()
    finally:
        notify.close()
    # StateDirectory= is the default data_dir: the data is there, not in /var
    assert os.path.isfile(os.path.join(dmn.data_dir, "sparsityd.db")), os.listdir(dmn.data_dir)
    assert "data in %s" % dmn.data_dir in dmn.logs(), dmn.logs()


def test_abstract_notify_socket(daemons, serve_bin, tmp_path):
    notify = Notify("@sparsityd-test-%s" % uuid.uuid4().hex)
    dmn = as_unit(daemons, serve_bin, tmp_path, notify.address)
    try:
        dmn.start()
        assert notify.wait("READY")["READY"] == "1"
        # no WATCHDOG_USEC: no pings
        with pytest.raises(AssertionError, match="nothing on the notify socket"):
            notify.next(1.5)
        dmn.signal(signal.SIGTERM)
        assert notify.wait("STOPPING")["STOPPING"] == "1"
        assert dmn.proc.wait(30) == 0
    finally:
        notify.close()


def test_watchdog_of_another_process_is_not_pinged(daemons, serve_bin, tmp_path):
    notify = Notify(str(tmp_path / "notify"))
    # WATCHDOG_PID names the process the watchdog is for; inherited, it is not ours
    dmn = as_unit(daemons, serve_bin, tmp_path, notify.address, WATCHDOG_USEC="200000",
                  WATCHDOG_PID=str(os.getpid()))
    try:
        dmn.start()
        assert notify.wait("READY")["READY"] == "1"
        with pytest.raises(AssertionError, match="nothing on the notify socket"):
            notify.next(1)
    finally:
        notify.close()


@pytest.mark.parametrize("address, says", [
    ("notify.sock", "neither an absolute path nor an abstract socket"),
    ("/" + "x" * 200, "longer than an AF_UNIX address can be"),
    ("vsock:2:1234", "vsock"),
])
def test_bad_notify_socket_is_logged_not_fatal(daemons, serve_bin, tmp_path, address, says):
    dmn = as_unit(daemons, serve_bin, tmp_path, address)
    dmn.start()
    assert dmn.get("/healthz").status == 200
    assert "NOTIFY_SOCKET" in dmn.logs() and says in dmn.logs(), dmn.logs()


def test_bad_watchdog_usec_is_logged_not_fatal(daemons, serve_bin, tmp_path):
    dmn = as_unit(daemons, serve_bin, tmp_path, WATCHDOG_USEC="soon")
    dmn.start()
    assert dmn.get("/healthz").status == 200
    assert "WATCHDOG_USEC 'soon' is not a positive number" in dmn.logs(), dmn.logs()


def test_no_notify_socket_gone_is_a_warning(daemons, serve_bin, tmp_path):
    # systemd went away (or the path is wrong): READY=1 cannot be sent, the daemon runs
    dmn = as_unit(daemons, serve_bin, tmp_path, str(tmp_path / "nobody-listens"))
    dmn.start()
    assert dmn.get("/healthz").status == 200
    assert "cannot tell the service manager 'READY=1'" in dmn.logs(), dmn.logs()


def test_relative_data_dir_from_root_is_refused(serve_bin, tmp_path):
    """As systemd would start it without StateDirectory=: cwd "/", default ./var."""
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    before = os.path.exists("/var/sparsityd.db")
    p = subprocess.run([serve_bin, "serve", "--listen", "127.0.0.1:%d" % D.free_port()],
                       cwd="/", env=env, capture_output=True, text=True, timeout=30)
    if not before and os.path.exists("/var/sparsityd.db"):
        os.unlink("/var/sparsityd.db")
        pytest.fail("the daemon made /var/sparsityd.db")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "data_dir ./var is relative and the working directory is /" in p.stderr, p.stderr
    assert "StateDirectory=sparsityd" in p.stderr, p.stderr


def test_state_directory_is_the_printed_default(serve_bin, tmp_path):
    env = dict(os.environ, STATE_DIRECTORY="%s:%s" % (tmp_path / "a", tmp_path / "b"))
    p = subprocess.run([serve_bin, "serve", "--print-config"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    # the first of several directories; the table's default stays ./var
    assert re.search(r"^data_dir = %s$" % re.escape(str(tmp_path / "a")), p.stdout, re.M), p.stdout
    assert re.search(r"\(default: \./var\)\ndata_dir", p.stdout), p.stdout
