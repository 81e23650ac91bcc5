"""The tables that docs and contracts are made from cannot drift from the code:

- the stage table (`sparsityd --print-stages`) against openapi.yaml's Stage enum;
- the error table (`sparsityd --print-errors`) against the problem codes openapi.yaml
  lists and the statuses the API documents;
- the settings table (`sparsityd serve --print-config`) against README.md's settings
  table (names, defaults, which ones SIGHUP reloads);
- a reload is all or nothing: a config file with one bad line changes no setting.

HTTP and CLI only: no TensorFlow.
"""

import os
import re
import signal
import subprocess
import time

import yaml

import daemon as D

README = os.path.join(D.REPO, "README.md")


def run(binary, *args):
    p = subprocess.run([binary] + list(args), capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, "%s: exit %d\n%s" % (args, p.returncode, p.stderr)
    return p.stdout


def openapi():
    with open(D.OPENAPI) as f:
        return yaml.safe_load(f)


def test_stage_enum_is_the_stage_table(serve_bin):
    stages = run(serve_bin, "--print-stages").split()
    assert stages == ["insert", "export", "prune", "check"], stages
    assert openapi()["components"]["schemas"]["Stage"]["enum"] == stages


def test_problem_codes_are_the_error_table(serve_bin):
    rows = [l.split("\t") for l in run(serve_bin, "--print-errors").splitlines() if l]
    table = {r[2]: int(r[1]) for r in rows}  # code slug -> HTTP status
    assert len(table) == len(rows) >= 17, rows
    doc = openapi()["components"]["schemas"]["Problem"]["description"]
    listed = set(re.findall(r"\b([a-z]+(?:-[a-z]+)+|[a-z]{4,})\b(?= \(| and |,)", doc))
    for code in table:
        assert code in doc, "problem code %r (HTTP %d) is not in openapi.yaml's Problem " \
            "description" % (code, table[code])
    for word in listed:
        if "-" in word:
            assert word in table, "openapi.yaml lists problem code %r the error table " \
                "does not have" % word


def readme_settings():
    with open(README) as f:
        text = f.read()
    block = text[text.index("| setting | default | meaning |"):]
    rows = {}
    for line in block.splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, default, meaning = [c.strip() for c in line.strip("|").split("|")]
        rows[name] = (default, "reloaded on SIGHUP" in meaning)
    return rows


def test_readme_settings_are_the_settings_table(serve_bin):
    out = run(serve_bin, "serve", "--print-config")
    code = {}
    for help_line, setting in re.findall(r"^# (.*)\n(\w+) = .*$", out, re.M):
        default = re.search(r"\(default: (.*)\)$", help_line).group(1)
        code[setting] = (default, "reloaded on SIGHUP" in help_line)
    doc = readme_settings()
    assert sorted(doc) == sorted(code), "README settings %s != --print-config %s" % (
        sorted(doc), sorted(code))
    for name, (default, reload) in code.items():
        want = "(stderr)" if name == "log_file" else default
        assert doc[name][0] == want, "README says %s defaults to %r, the code %r" % (
            name, doc[name][0], want)
        assert doc[name][1] == reload, "README and the code disagree on whether SIGHUP " \
            "reloads %s" % name


def test_reload_is_all_or_nothing(daemons, serve_bin, tmp_path):
    cfg = tmp_path / "sparsityd.conf"
    cfg.write_text("log_level = warn\n")
    dmn = daemons.new(start=False)
    dmn.argv = lambda: [serve_bin, "serve", "--listen", "127.0.0.1:%d" % dmn.port,
                        "--data-dir", dmn.data_dir, "--config", str(cfg)]  # no --log-level
    dmn.start()
    # a file whose second line is bad: the good first line must not apply either
    cfg.write_text("log_level = debug\nretention_hours = soon\n")
    dmn.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert dmn.get("/healthz").status == 200
    r = dmn.submit("check", model=D.CHAIN)
    assert r.status == 202, r.describe()
    dmn.wait_job(r.json()["id"])
    logs = dmn.logs()
    assert "settings not reloaded" in logs, logs
    assert " debug " not in logs and " info " not in logs.split("settings not reloaded")[1], (
        "a failed reload applied log_level = debug:\n" + logs)
