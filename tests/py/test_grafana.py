"""deploy/grafana/sparsityd.json: the Grafana dashboard, held against a live daemon.

The file parses as JSON and has the shape Grafana imports (a uid, a schema version,
panels with unique ids on the 24-column grid without overlaps, a Prometheus data source
chosen by the `datasource` variable, targets with unique refIds). Every query (each
panel's PromQL and each variable's `label_values(...)`) is run as Grafana would send it,
each variable at All, by a real Prometheus server (Debian's, unpacked by
scripts/deps.sh --test) scraping a daemon that has run a few jobs: Prometheus must
accept it and return data (so every metric, label and value it names is one the daemon
exports), every series it returns must carry the labels its legend shows, and a
multi-value variable may only be matched with `=~`. Prometheus is the parser: the test
writes none of its own. The dashboard must show what the issue asks for (jobs by state,
stage durations, HTTP status rates, upload bytes, busy workers) and every family of the
/metrics page but virtual memory. The last test feeds the checker broken copies of the
dashboard (a misspelt metric, label, value, function or variable, a legend label the
query drops) to show it fails on each.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from daemon import CFG, CHAIN, REPO, free_port
from test_metrics import samples, scrape

DASHBOARD = os.path.join(REPO, "deploy", "grafana", "sparsityd.json")

# Labels Prometheus attaches to every series it scrapes, so they are on no /metrics page.
TARGET_LABELS = {"job", "instance"}
# What the issue asks the dashboard to show, as the series that carry it.
REQUIRED = {
    "jobs by state": "sparsityd_jobs",
    "stage durations": "sparsityd_stage_duration_seconds_bucket",
    "HTTP status rates": "sparsityd_http_requests_total",
    "upload bytes": "sparsityd_upload_bytes_total",
    "busy workers": "sparsityd_workers_busy",
}
# Grafana's own variables, and a value each expands to that Prometheus accepts.
GRAFANA_GLOBALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# Grafana 10/11's core panel types (a plugin panel would need installing first).
PANEL_TYPES = {"row", "stat", "timeseries", "heatmap", "gauge", "bargauge", "table", "text",
               "piechart", "histogram", "state-timeline", "status-history", "barchart",
               "logs", "news", "dashlist", "alertlist", "nodeGraph", "traces", "flamegraph"}

class QueryError(Exception):
    pass


# --------------------------------------------------------------------------------------
# The dashboard


def load():
    with open(DASHBOARD) as f:
        return json.load(f)


VAR_REF = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")


def variables(dash):
    return {v["name"]: v for v in dash["templating"]["list"]}


def queries(dash):
    """(where, query, legend) of every query the dashboard sends to Prometheus."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]\w*)\)", q.strip())
            assert m, "variable %s: only label_values(selector, label) is used: %r" % (v["name"], q)
            out.append(("variable " + v["name"], m.group(1), "{{%s}}" % m.group(2)))
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append(("panel %d %r target %s" % (p["id"], p["title"], t["refId"]), t["expr"],
                        t.get("legendFormat", "")))
    return out


def expand(expr, dash, keep_variables):
    """Grafana's substitution: its globals by a typical value, the dashboard's variables
    by their All value (or left in place with keep_variables: they belong in matchers'
    strings, where check_query looks at them). QueryError on an undefined variable."""
    vs = variables(dash)

    def sub(m):
        name = next(g for g in m.groups() if g)
        if name in GRAFANA_GLOBALS:
            return GRAFANA_GLOBALS[name]
        if name not in vs:
            raise QueryError("undefined variable $%s in %r" % (name, expr))
        return m.group() if keep_variables else vs[name].get("allValue") or ".*"
    return VAR_REF.sub(sub, expr)


def live_labels(text):
    """{series name: {label: {values}}} of a /metrics page."""
    out = {}
    for (name, labels) in samples(text):
        ls = out.setdefault(name, {})
        for k, v in labels:
            ls.setdefault(k, set()).add(v)
    return out


# a label matcher whose value is a string: label, operator, value
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def check_query(where, expr, legend, dash, prometheus, live):
    """Runs the query as Grafana would send it (every variable at All) in the Prometheus
    that scrapes the daemon; QueryError when Prometheus refuses it (syntax, an unknown
    function, a bad regular expression), when it has no data (a metric, label or value
    the daemon does not export), when a series it returns lacks a label its legend
    shows, or when a multi-value variable is matched with `=` (Grafana then sends
    `a|b`, which only `=~` takes as alternatives). Returns the daemon's families the
    query names."""
    vs = variables(dash)
    for label, op, value in MATCHER.findall(expand(expr, dash, keep_variables=True)):
        for m in VAR_REF.finditer(value):
            name = next(g for g in m.groups() if g)
            if vs.get(name, {}).get("multi") and op not in ("=~", "!~"):
                raise QueryError("%s: multi-value $%s needs =~, not %s" % (where, name, op))
    q = expand(expr, dash, keep_variables=False)
    ans = prometheus.query(q)
    if ans.get("status") != "success":
        raise QueryError("%s: Prometheus refuses %s: %s" % (where, q, ans.get("error", ans)))
    result = ans["data"]["result"]
    if not result:
        raise QueryError("%s: no data for %s" % (where, q))
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        missing = [r["metric"] for r in result if label not in r["metric"]]
        if missing:
            raise QueryError("%s: legend shows {{%s}}, which %s does not keep (%s)" % (
                where, label, q, missing[0]))
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", q)) & set(live)


def check_dashboard(dash, prometheus, live):
    used = set()
    for where, expr, legend in queries(dash):
        used |= check_query(where, expr, legend, dash, prometheus, live)
    return used


class Prometheus:
    """A Prometheus server (Debian's, which scripts/deps.sh --test unpacks) scraping one
    daemon every second, with its data in a temporary directory."""

    def __init__(self, target, root):
        tool = shutil.which("prometheus")
        assert tool, ("prometheus not found: scripts/deps.sh --test unpacks it from Debian's "
                      "prometheus package into /usr/local/bin")
        self.target = target
        self.url = "http://127.0.0.1:%d" % free_port()
        cfg = os.path.join(root, "prometheus.yml")
        with open(cfg, "w") as f:
            yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                            "scrape_configs": [{"job_name": "sparsityd",
                                                "static_configs": [{"targets": [target]}]}]}, f)
        self.log = os.path.join(root, "prometheus.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [tool, "--config.file=" + cfg, "--storage.tsdb.path=" + os.path.join(root, "data"),
                 "--web.listen-address=" + self.url[len("http://"):], "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def query(self, q):
        """The answer of /api/v1/query as JSON; a 4xx answer (a query Prometheus refuses)
        comes back as its JSON error, not an exception."""
        try:
            with urllib.request.urlopen(self.url + "/api/v1/query?" + urllib.parse.urlencode(
                    {"query": q}), timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def until(self, what, q, timeout=30):
        """Waits for q to have a result (the server up and scraping, a series there)."""
        deadline = time.time() + timeout
        while True:
            assert self.proc.poll() is None, "prometheus exited: %s" % open(self.log).read()
            try:
                if self.query(q)["data"]["result"]:
                    return
            except (OSError, ValueError, KeyError):
                pass  # not listening yet
            assert time.time() < deadline, "%s: %s gives nothing after %ds\n%s" % (
                what, q, timeout, open(self.log).read())
            time.sleep(0.2)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus(d, tmp_path_factory):
    prom = Prometheus("%s:%d" % (d.host, d.port), str(tmp_path_factory.mktemp("prometheus")))
    yield prom
    prom.close()


@pytest.fixture(scope="module")
def live(d, prometheus):
    """The /metrics page of a daemon that has run a check and a prune (succeeded), an
    insert with a bad config (failed, so failures have a code label) and answered a 404,
    while Prometheus scraped it; Prometheus has scraped it a few times since."""
    prometheus.until("the daemon scraped", 'up{job="sparsityd"} == 1')
    assert d.run_job("check", model=CHAIN)["state"] == "succeeded"
    j = d.run_job("insert", model=CHAIN, config="bogus\n", outputs="out")
    assert j["state"] == "failed" and j["error"]["code"] == "bad-config", j
    assert d.run_job("prune", model=CHAIN, config=CFG, outputs="out")["state"] == "succeeded"
    assert d.get("/nope").status == 404
    page = live_labels(scrape(d))
    prometheus.until("the jobs scraped", 'sparsityd_jobs{state="failed"} == 1')
    # rate() needs two samples of the same series; a failure's series is new
    prometheus.until("a few scrapes since",
                     'count_over_time(sparsityd_jobs_finished_total{outcome="failed"}[1m]) >= 3')
    return page


def test_shape():
    dash = load()
    assert isinstance(dash.get("title"), str) and dash["title"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dash.get("uid", "")), dash.get("uid")
    assert isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36, (
        "schemaVersion %r: Grafana 9.0 or later" % dash.get("schemaVersion"))
    assert dash.get("id") is None, "an exported dashboard has no database id"
    assert set(dash["time"]) == {"from", "to"}
    vs = dash["templating"]["list"]
    names = [v["name"] for v in vs]
    assert len(names) == len(set(names)), names
    ds = variables(dash)["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus", ds
    # a variable's query may use only the variables above it (Grafana resolves in order)
    for k, v in enumerate(vs):
        for m in VAR_REF.finditer(json.dumps(v.get("query", ""))):
            ref = next(g for g in m.groups() if g)
            assert ref in names[:k], "variable %s uses $%s before it is defined" % (v["name"], ref)
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v

    ids, boxes = set(), []
    for p in dash["panels"]:
        assert isinstance(p.get("id"), int) and p["id"] not in ids, ("panel ids unique", p.get("id"))
        ids.add(p["id"])
        assert p.get("type") in PANEL_TYPES, (p["id"], p.get("type"))
        assert p.get("title"), p["id"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh"), g
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, (
            p["id"], p["title"], g)
        for (oid, o) in boxes:
            overlap = (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and
                       g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"])
            assert not overlap, "panels %d and %d overlap: %s %s" % (oid, p["id"], g, o)
        boxes.append((p["id"], g))
        if p["type"] == "row":
            assert p.get("collapsed") is False and p.get("panels") == [], (
                "row %d: expanded, its panels listed after it" % p["id"])
            assert not p.get("targets"), p["id"]
            continue
        assert p.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, (p["id"], p.get("datasource"))
        targets = p.get("targets")
        assert targets, "panel %d %r has no query" % (p["id"], p["title"])
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), (p["id"], refs)
        for t in targets:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), (p["id"], t)
            assert t.get("datasource", p["datasource"]) == p["datasource"], (p["id"], t)
        for o in p.get("fieldConfig", {}).get("overrides", []):
            if o["matcher"]["id"] == "byFrameRefID":
                assert o["matcher"]["options"] in refs, (p["id"], o)
    # panels are listed top to bottom, so a row owns the panels that follow it
    ys = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in dash["panels"]]
    assert ys == sorted(ys), ys


def test_queries_against_live_metrics(prometheus, live):
    dash = load()
    used = check_dashboard(dash, prometheus, live)
    for what, series in REQUIRED.items():
        assert series in used, "the dashboard shows no %s (%s)" % (what, series)
    # every family of the page is on some panel
    unused = {n for n in live if not n.endswith(("_bucket", "_sum", "_count"))} - used
    unused -= {h[:-len("_bucket")] for h in used if h.endswith("_bucket")}
    unused -= {h[:-len("_count")] for h in used if h.endswith("_count")}
    # virtual memory counts mappings never touched: resident memory is the one to watch
    unused -= {"process_virtual_memory_bytes"}
    assert not unused, ("families no panel shows: %s (a new family belongs on the dashboard, "
                        "or in the exceptions above with the reason)" % sorted(unused))
    # the variables list this daemon as Prometheus labels it
    want = {"job": "sparsityd", "instance": prometheus.target}
    for where, expr, legend in queries(dash):
        if where.startswith("variable"):
            label = legend.strip("{}")
            result = prometheus.query(expand(expr, dash, keep_variables=False))["data"]["result"]
            assert {r["metric"].get(label) for r in result} == {want[label]}, (where, result)


def test_checker_fails_on_broken_dashboards(prometheus, live):
    """The checks above can fail: each broken copy is refused, naming the cause."""
    dash = load()
    check_dashboard(dash, prometheus, live)
    target = next(p for p in dash["panels"] if p["title"] == "Failures per minute by cause")["targets"][0]
    expr = target["expr"]
    assert 'outcome="failed"' in expr and "sparsityd_jobs_finished_total" in expr, expr
    cases = [
        ("expr", expr.replace("sparsityd_jobs_finished_total", "sparsityd_jobs_finish_total"),
         "no data"),
        ("expr", expr.replace('outcome="failed"', 'outcom="failed"'), "no data"),
        ("expr", expr.replace('outcome="failed"', 'outcome="failure"'), "no data"),
        ("expr", expr.replace("sum by (stage, code)", "sum by (stage, cause)"),
         "legend shows {{code}}"),
        ("expr", expr.replace("rate(", "rates("), "Prometheus refuses"),
        ("expr", expr.replace('job=~"$job"', 'job="$job"'), "needs =~"),
        ("expr", expr.replace("$job", "$jobs"), "undefined variable"),
        ("expr", expr.replace('job=~"$job"', 'job=~"$job("'), "Prometheus refuses"),
        ("legendFormat", "{{stage}} {{error}}", "legend shows {{error}}"),
        ("legendFormat", "{{stage}} {{outcome}}", "legend shows {{outcome}}"),  # summed away
    ]
    for key, value, why in cases:
        broken = copy.deepcopy(dash)
        t = next(p for p in broken["panels"] if p["title"] == "Failures per minute by cause")["targets"][0]
        t[key] = value
        with pytest.raises(QueryError, match=re.escape(why)):
            check_dashboard(broken, prometheus, live)
