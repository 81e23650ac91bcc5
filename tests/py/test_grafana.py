"""deploy/grafana/sparsityd.json: the Grafana dashboard, held against a live daemon.

The file parses as JSON and has the shape Grafana imports (a uid, a schema version,
panels with unique ids on the 24-column grid without overlaps, a Prometheus data source
chosen by the `datasource` variable, targets with unique refIds). Every query (each
panel's PromQL and each variable's `label_values(...)`) is read by a PromQL lexer and a
small parser that tell metric names from functions, keywords, label names and strings,
and is then checked against the /metrics page of a daemon that has run a few jobs:
each series it names is on the page, each label it matches on, groups by or shows in a
legend is one those series carry (or `job`/`instance`, which Prometheus adds when it
scrapes), each value an `=` matcher asks for is a value the page shows, and a
multi-value variable is only matched with `=~`. The dashboard must show what the issue
asks for (jobs by state, stage durations, HTTP status rates, upload bytes, busy workers)
and every family but virtual memory. Then the real thing: promtool parses every query as
a recording rule, and a Prometheus server (Debian's, like promtool unpacked by
scripts/deps.sh --test) scraping the daemon every second runs every query, with each
variable at All, and must return data for each. The last test feeds the checker broken
copies of the dashboard (a misspelt metric, label, value, function or variable, a legend
label the query drops) to show it fails on each.
"""

import ast
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

# --------------------------------------------------------------------------------------
# PromQL, enough to know what each identifier of a query is

TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<dur>(?:[0-9]+(?:ms|[smhdwy]))+)(?![a-zA-Z0-9_:])
  | (?P<num>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|=~|!~|<=|>=|[-+*/%^<>=(){}\[\],:@])
""", re.X)

AGGREGATIONS = {"sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk",
                "bottomk", "quantile", "count_values"}
# Prometheus 2.42's functions (promql/parser/functions.go).
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
}
KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan", "start", "end"}


class QueryError(Exception):
    pass


def lex(expr):
    toks, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise QueryError("unexpected %r at offset %d of %r" % (expr[pos], pos, expr))
        if m.lastgroup != "ws":
            toks.append((m.lastgroup, m.group()))
        pos = m.end()
    return toks


def unquote(s):
    return s[1:-1] if s[0] == "`" else ast.literal_eval(s)


def parse(expr):
    """(selectors, aggregations, matching) of a PromQL expression: selectors is a list
    of (metric, [(label, op, value)]), one per vector selector; aggregations a list of
    [operator, clause, labels] in the order they appear (clause "by", "without" or None,
    wherever the clause is written); matching the labels of on, ignoring, group_left and
    group_right. QueryError on what PromQL would refuse at the lexical level, an unknown
    function, unbalanced brackets, or a selector with no metric name."""
    toks = lex(expr)
    selectors, aggregations, matching = [], [], set()
    parens = []  # per open '(': the aggregation whose argument list it opens, or None
    brackets = 0

    def peek(k):
        return toks[k][1] if k < len(toks) else None

    def label_list(k):
        # '(' label (',' label)* ','? ')'
        if peek(k) != "(":
            raise QueryError("'(' expected after %r in %r" % (toks[k - 1][1], expr))
        k += 1
        names = []
        while peek(k) != ")":
            if k >= len(toks) or toks[k][0] != "ident":
                raise QueryError("label name expected in a grouping of %r, got %r" % (expr, peek(k)))
            names.append(toks[k][1])
            k += 1
            if peek(k) == ",":
                k += 1
            elif peek(k) != ")":
                raise QueryError("',' or ')' expected in a grouping of %r" % expr)
        return names, k + 1

    def matchers(k):
        # '{' label op string (',' label op string)* ','? '}'
        k += 1
        out = []
        while peek(k) != "}":
            if (k + 2 >= len(toks) or toks[k][0] != "ident" or
                    toks[k + 1][1] not in ("=", "!=", "=~", "!~") or toks[k + 2][0] != "str"):
                raise QueryError("label matcher expected in %r at %r" % (expr, peek(k)))
            out.append((toks[k][1], toks[k + 1][1], unquote(toks[k + 2][1])))
            k += 3
            if peek(k) == ",":
                k += 1
            elif peek(k) != "}":
                raise QueryError("',' or '}' expected in the matchers of %r" % expr)
        return out, k + 1

    i = 0
    while i < len(toks):
        kind, text = toks[i]
        word = text.lower() if kind == "ident" else None
        if word in AGGREGATIONS and (peek(i + 1) or "").lower() in ("(", "by", "without"):
            agg = [word, None, set()]
            aggregations.append(agg)
            i += 1
            if peek(i).lower() in ("by", "without"):
                agg[1] = peek(i).lower()
                names, i = label_list(i + 1)
                agg[2] = set(names)
            if peek(i) != "(":
                raise QueryError("'(' expected after %s in %r" % (word, expr))
            parens.append(agg)
            i += 1
        elif word in ("on", "ignoring", "group_left", "group_right"):
            if peek(i + 1) == "(":
                names, i = label_list(i + 1)
                matching.update(names)
            elif word in ("on", "ignoring"):
                raise QueryError("'(' expected after %s in %r" % (word, expr))
            else:
                i += 1
        elif word in ("by", "without"):
            raise QueryError("%s outside an aggregation in %r" % (word, expr))
        elif kind == "ident" and peek(i + 1) == "(":
            if text not in FUNCTIONS:
                raise QueryError("unknown function %r in %r" % (text, expr))
            parens.append(None)
            i += 2
        elif word in KEYWORDS:
            i += 1
        elif kind == "ident" or text == "{":
            k = i + 1 if kind == "ident" else i
            ms = []
            if peek(k) == "{":
                ms, k = matchers(k)
            named = [v for (l, op, v) in ms if l == "__name__" and op == "="]
            name = text if kind == "ident" else (named[0] if named else None)
            if not name:
                raise QueryError("a selector without a metric name in %r" % expr)
            selectors.append((name, [m for m in ms if m[0] != "__name__"]))
            i = k
        elif text == "(":
            parens.append(None)
            i += 1
        elif text == ")":
            if not parens:
                raise QueryError("unbalanced ')' in %r" % expr)
            agg = parens.pop()
            i += 1
            if agg and peek(i) and peek(i).lower() in ("by", "without"):
                if agg[1]:
                    raise QueryError("%s has two grouping clauses in %r" % (agg[0], expr))
                word = peek(i).lower()
                names, i = label_list(i + 1)
                agg[1], agg[2] = word, set(names)
        elif text in ("[", "]"):
            brackets += 1 if text == "[" else -1
            if brackets < 0:
                raise QueryError("unbalanced ']' in %r" % expr)
            i += 1
        elif kind == "dur" and not brackets and (i == 0 or toks[i - 1][1].lower() != "offset"):
            raise QueryError("duration %r outside a range or offset in %r" % (text, expr))
        else:
            i += 1
    if parens or brackets:
        raise QueryError("unbalanced brackets in %r" % expr)
    return selectors, aggregations, matching


def test_parser():
    sel, aggs, on = parse('histogram_quantile(0.99, sum by (route, le) (rate(x_bucket'
                          '{route!="/v1/jobs/{id}", job=~"a|b"}[5m])))')
    assert sel == [("x_bucket", [("route", "!=", "/v1/jobs/{id}"), ("job", "=~", "a|b")])]
    assert aggs == [["sum", "by", {"route", "le"}]] and on == set()
    sel, aggs, on = parse("SUM(rate(a_total[1m] offset 5m)) without (x) / on (y) group_left b"
                          " > bool 1e3 and max({__name__=\"c\", d='e'})")
    assert sel == [("a_total", []), ("b", []), ("c", [("d", "=", "e")])], sel
    assert aggs == [["sum", "without", {"x"}], ["max", None, set()]] and on == {"y"}, aggs
    assert parse("time() - max(process_start_time_seconds)")[0] == [("process_start_time_seconds", [])]
    for bad, why in (("rat(x[5m])", "unknown function"), ("x{a=b}", "label matcher"),
                     ("sum(x", "unbalanced"), ("x $y", "unexpected"), ("{a=\"b\"}", "without a metric"),
                     ("sum by (a, 1) (x)", "label name"), ("x + 5m", "duration"),
                     ("sum by (a) (x) by (b)", "two grouping clauses"), ("x by (a)", "outside")):
        with pytest.raises(QueryError, match=why):
            parse(bad)


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


def check_query(where, expr, legend, dash, live):
    """The series names a query uses; QueryError naming what in the query the live page
    does not have. A legend may show the labels of the first aggregation's `by` (all but
    those of its `without`, none without a clause), or with no aggregation those the
    series carry."""
    vs = variables(dash)
    sel, aggs, matching = parse(expand(expr, dash, keep_variables=True))
    if not sel:
        raise QueryError("%s: no metric in %r" % (where, expr))
    carried = set(TARGET_LABELS)
    for name, ms in sel:
        if name not in live:
            raise QueryError("%s: %s is not on the daemon's /metrics page" % (where, name))
        carried |= set(live[name])
        for label, op, value in ms:
            if label not in live[name] and label not in TARGET_LABELS:
                raise QueryError("%s: %s has no label %r" % (where, name, label))
            refs = [next(g for g in m.groups() if g) for m in VAR_REF.finditer(value)]
            for r in refs:
                if vs.get(r, {}).get("multi") and op not in ("=~", "!~"):
                    raise QueryError("%s: multi-value $%s needs =~, not %s" % (where, r, op))
            if op == "=" and not refs and label not in TARGET_LABELS and value not in live[name][label]:
                raise QueryError("%s: %s{%s=%r} is not on the page (values: %s)" % (
                    where, name, label, value, sorted(live[name][label])))
            if op in ("=~", "!~"):
                try:
                    re.compile(expand(value, dash, keep_variables=False))
                except re.error as err:
                    raise QueryError("%s: bad regular expression %r: %s" % (where, value, err))
    names = [n for n, _ in sel]
    for label in sorted(matching.union(*(a[2] for a in aggs))):
        if label not in carried:
            raise QueryError("%s: grouping by %r, which none of %s carries" % (where, label, names))
    shown = carried
    if aggs:
        clause, labels = aggs[0][1], aggs[0][2]
        shown = labels if clause == "by" else carried - labels if clause == "without" else set()
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if label not in shown:
            raise QueryError("%s: legend shows {{%s}}, which %s does not keep" % (where, label, names))
    return set(names)


def check_dashboard(dash, live):
    used = set()
    for where, expr, legend in queries(dash):
        used |= check_query(where, expr, legend, dash, live)
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


def test_queries_against_live_metrics(live):
    dash = load()
    used = check_dashboard(dash, live)
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


def test_promtool_parses_every_query(tmp_path):
    """Prometheus's own parser on each query, as a recording rule (promtool check rules)."""
    tool = shutil.which("promtool")
    assert tool, ("promtool not found: scripts/deps.sh --test unpacks it from Debian's "
                  "prometheus package into /usr/local/bin")
    dash = load()
    rules = []
    for k, (where, expr, _legend) in enumerate(queries(dash)):
        rules.append({"record": "grafana:query_%d" % k,
                      "expr": expand(expr, dash, keep_variables=False),
                      "labels": {"where": where}})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "sparsityd_grafana", "rules": rules}]}))
    p = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "SUCCESS: %d rules found" % len(rules) in p.stdout, (
        "promtool check rules: exit %d\n%s%s\n--- rules:\n%s" % (
            p.returncode, p.stdout, p.stderr, path.read_text()))


def test_queries_in_prometheus(prometheus, live):
    """Each query, as Grafana would send it with every variable at All, run by a real
    Prometheus that scraped the daemon: accepted, and with data."""
    dash = load()
    for where, expr, legend in queries(dash):
        q = expand(expr, dash, keep_variables=False)
        ans = prometheus.query(q)
        assert ans.get("status") == "success", "%s: %s\n%s" % (where, q, ans)
        result = ans["data"]["result"]
        assert result, "%s: no data for %s" % (where, q)
        if where.startswith("variable"):
            label = legend.strip("{}")
            want = {"job": "sparsityd", "instance": prometheus.target}
            assert {r["metric"].get(label) for r in result} == {want[label]}, (where, result)


def test_checker_fails_on_broken_dashboards(live):
    """The checks above can fail: each broken copy is refused, naming the cause."""
    dash = load()
    check_dashboard(dash, live)
    target = next(p for p in dash["panels"] if p["title"] == "Failures per minute by cause")["targets"][0]
    expr = target["expr"]
    assert 'outcome="failed"' in expr and "sparsityd_jobs_finished_total" in expr, expr
    cases = [
        ("expr", expr.replace("sparsityd_jobs_finished_total", "sparsityd_jobs_finish_total"),
         "not on the daemon's /metrics page"),
        ("expr", expr.replace('outcome="failed"', 'outcom="failed"'), "has no label 'outcom'"),
        ("expr", expr.replace('outcome="failed"', 'outcome="failure"'), "is not on the page"),
        ("expr", expr.replace("sum by (stage, code)", "sum by (stage, cause)"), "grouping by 'cause'"),
        ("expr", expr.replace("rate(", "rates("), "unknown function 'rates'"),
        ("expr", expr.replace('job=~"$job"', 'job="$job"'), "needs =~"),
        ("expr", expr.replace("$job", "$jobs"), "undefined variable"),
        ("expr", expr.replace('job=~"$job"', 'job=~"$job("'), "bad regular expression"),
        ("legendFormat", "{{stage}} {{error}}", "legend shows {{error}}"),
        ("legendFormat", "{{stage}} {{outcome}}", "legend shows {{outcome}}"),  # summed away
    ]
    for key, value, why in cases:
        broken = copy.deepcopy(dash)
        t = next(p for p in broken["panels"] if p["title"] == "Failures per minute by cause")["targets"][0]
        t[key] = value
        with pytest.raises(QueryError, match=re.escape(why)):
            check_dashboard(broken, live)
