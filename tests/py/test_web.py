"""The dashboard the daemon serves at /, in headless Chromium against a real daemon.

Debian's `chromium` and `chromium-driver` drive the page through Selenium (scripts/deps.sh
--test and tests/py/requirements.txt install them). Each browser test also fails on a
console error (a script error, a Content-Security-Policy violation, a failed load) other
than the HTTP errors the test provoked on purpose. Screenshots of the list and the
detail, at 1280x800 and phone size, go to tests/py/.out/web/ (their paths are printed).

What is proven:
- a job submitted through the API appears in the list and is shown queued, running and
  succeeded without a reload, each within 1 s of the change (the daemon's own
  created_at / started_at / finished_at against the moment the row changed);
- the detail shows the same layers, reasons, zero fractions, totals, artifacts and log
  as the API; its columns sort;
- a model uploaded through the form runs (its bytes arrive intact, the progress bar
  moves); a refused form shows the problem next to the field it names; a bad config
  fails the job and the page shows the engine's line:col message;
- cancel and delete work from the page;
- with tokens, a tenant's page shows none of another tenant's jobs, live or listed, and
  the token never appears in a URL;
- the page and its assets: CSP without inline script, nosniff, frame-ancestors 'none',
  immutable caching of hashed assets, no-cache for /, nothing loaded from elsewhere,
  under 100 KB in all.
"""
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import time

import pytest

import daemon as D
from daemon import CFG, CHAIN

OUT = os.path.join(D.HERE, ".out", "web")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SKIP_CFG = CFG + 'skip_layers: "mm_b"\n'


# ---------------------------------------------------------------------------------------
# the browser


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -r tests/py/requirements.txt")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail("%s not found: scripts/deps.sh --test installs chromium and "
                        "chromium-driver" % path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,800", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_window_size(1280, 800)
    os.makedirs(OUT, exist_ok=True)
    yield drv
    drv.quit()


def console_errors(drv, allow=()):
    """SEVERE console entries since the last call, except network failures whose text
    matches one of the allow patterns (HTTP errors the test asked for)."""
    bad = []
    for e in drv.get_log("browser"):
        if e["level"] != "SEVERE":
            continue
        if e.get("source") == "network" and any(re.search(p, e["message"]) for p in allow):
            continue
        bad.append(e["message"])
    return bad


def wait_for(fn, timeout=20, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = fn()
        except Exception as e:  # noqa: BLE001 - stale elements while the page re-renders
            v, last = None, e
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s (last error: %r)" % (what, last))


def has_events_route(binary):
    out = subprocess.run([binary, "serve", "--print-routes"], capture_output=True, text=True,
                         check=True).stdout
    return "GET /v1/events" in out.splitlines()


def load(drv, dmn, token=None, fragment=""):
    """Opens the page (a fresh document), with token typed into the page when given."""
    drv.get("about:blank")
    drv.get_log("browser")  # the last test's page (reconnecting to a daemon now gone)
    drv.get(dmn.url + "/" + fragment)
    drv.execute_script("sessionStorage.clear()")
    if token:
        drv.find_element("id", "token").send_keys(token)
        drv.find_element("css selector", "#auth button[type=submit]").click()
    wait_for(lambda: drv.find_element("id", "live").text in ("live", "polling"),
             what="the page to connect for updates")
    drv.execute_script("window.__loaded = 1")  # gone if the page ever reloads


def rows(drv):
    return drv.execute_script(
        "return [...document.querySelectorAll('#jobs tbody tr')].map(tr => "
        "[tr.dataset.id, tr.dataset.state])")


def shot(drv, name):
    path = os.path.join(OUT, name + ".png")
    drv.save_screenshot(path)
    print("screenshot:", path)
    return path


def ms(ts):
    """A job timestamp (RFC 3339, ms, UTC) as Unix seconds."""
    import datetime
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


# Records, for every job row, each state it was shown in and when (Date.now()), from a
# MutationObserver installed before the jobs exist, so no change goes unseen.
WATCH_ROWS = """
window.__seen = {};
const tb = document.querySelector('#jobs tbody');
const look = () => {
  for (const tr of tb.rows) {
    const a = window.__seen[tr.dataset.id] = window.__seen[tr.dataset.id] || [];
    if (!a.length || a[a.length - 1][1] !== tr.dataset.state)
      a.push([Date.now(), tr.dataset.state]);
  }
};
new MutationObserver(look).observe(tb, {childList: true, subtree: true, attributes: true});
look();
"""


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory):
    """A GraphDef of 8 MatMul layers of 2048x2048 float32 (128 MiB): a prune of it runs
    long enough (about half a second) to be seen running, and it uploads faster than a
    prune of big_model (conftest.py) runs, so it can be seen queued behind one."""
    path = str(tmp_path_factory.mktemp("web") / "mid.pb")
    D.write_mlp(path, 8, 2048)
    yield path
    os.unlink(path)


# ---------------------------------------------------------------------------------------
# the page and its assets, over plain HTTP


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.assets, self.inline, self.handlers, self.urls = [], [], [], []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k, v in attrs:
            if k.startswith("on") or k == "style":
                self.handlers.append((tag, k))
            if k in ("src", "href") and v and v.startswith("/assets/"):
                self.assets.append(v)
            if k in ("src", "href", "action") and v and re.match(r"^(https?:)?//", v):
                self.urls.append(v)
        if tag == "style":
            self.inline.append("style element")
        if tag == "script":
            if "src" not in a:
                self.inline.append("script without src")
            self._in_script = True

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append("script text")


def test_page_headers_and_assets(d, contract):
    r = d.get("/", auth=False)
    assert r.status == 200, r.describe()
    contract.check(r)
    assert r.header("content-type") == "text/html; charset=utf-8"
    csp = r.header("content-security-policy") or ""
    policy = {p.split()[0]: p.split()[1:] for p in csp.split(";") if p.strip()}
    assert policy.get("default-src") == ["'none'"], csp
    assert policy.get("script-src") == ["'self'"], csp       # no inline script, no eval
    assert policy.get("style-src") == ["'self'"], csp
    assert policy.get("frame-ancestors") == ["'none'"], csp
    assert "unsafe" not in csp, csp
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("cache-control") == "no-cache"
    etag = r.header("etag")
    assert etag and etag.startswith('"'), r.describe()
    r304 = d.get("/", auth=False, headers={"If-None-Match": etag})
    assert r304.status == 304 and r304.body == b"", r304.describe()

    page = _Page()
    page.feed(r.text)
    assert not page.inline and not page.handlers, (page.inline, page.handlers)
    assert not page.urls, "the page loads from elsewhere: %s" % page.urls
    assert len(page.assets) == 3, page.assets   # script, stylesheet, icon
    total = len(r.body)
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
             ".svg": "image/svg+xml"}
    for path in page.assets:
        a = d.get(path, auth=False)
        assert a.status == 200, a.describe()
        contract.check(a)
        total += len(a.body)
        m = re.fullmatch(r"/assets/[a-z]+\.([0-9a-f]{12})(\.[a-z]+)", path)
        assert m, path
        assert m.group(1) == hashlib.sha256(a.body).hexdigest()[:12], path
        assert a.header("content-type") == types[m.group(2)], a.describe()
        assert a.header("cache-control") == "public, max-age=31536000, immutable"
        assert a.header("x-content-type-options") == "nosniff"
        # nothing fetched from another origin: no URL with a scheme or host in the files
        assert not re.search(rb"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", a.body.replace(
            b"http://www.w3.org/2000/svg", b"")), path
        h = d.request("HEAD", path, auth=False)
        assert h.status == 200 and h.body == b"", h.describe()
    assert total < 100 * 1024, "page and assets: %d bytes" % total

    gone = d.get("/assets/app.000000000000.js", auth=False)
    D.assert_problem(gone, 404, "not-found")
    assert d.get("/healthz", auth=False).header("x-content-type-options") == "nosniff"
    assert d.get("/v1/jobs").header("x-content-type-options") == "nosniff"


def test_page_options_match_the_tables(d, serve_bin, contract):
    """The stage and state pickers offer what the daemon's tables hold."""
    html_text = d.get("/", auth=False).text

    def options(select_id):
        m = re.search(r'<select id="%s"[^>]*>(.*?)</select>' % select_id, html_text, re.S)
        assert m, select_id
        return [v for v in re.findall(r"<option(?: value=\"[^\"]*\")?>([^<]*)</option>",
                                      m.group(1)) if v != "any"]
    stages = subprocess.run([serve_bin, "--print-stages"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert options("s-stage") == stages
    assert options("f-stage") == stages
    assert options("f-state") == contract.doc["components"]["schemas"]["State"]["enum"]


# ---------------------------------------------------------------------------------------
# live list


def test_list_follows_a_job_live(daemons, browser, big_model, mid_model, serve_bin):
    dmn = daemons.new(args=["--workers", "1"])
    load(browser, dmn)
    if has_events_route(serve_bin):
        assert browser.find_element("id", "live").text == "live", \
            "the daemon has /v1/events but the page does not use it"
    browser.execute_script(WATCH_ROWS)
    # A job that holds the only worker for seconds, so the watched one is queued a while.
    first = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    assert first.status == 202, first.describe()
    D.wait_state(dmn, first.json()["id"], ("running",))
    r = dmn.submit_file("prune", mid_model, config=CFG, outputs="out")
    assert r.status == 202, r.describe()
    jid = r.json()["id"]
    job = dmn.wait_job(jid, timeout=120)
    assert job["state"] == "succeeded", job
    dmn.wait_job(first.json()["id"], timeout=60)
    wait_for(lambda: ["succeeded"] == [s for i, s in rows(browser) if i == jid],
             what="the row to show succeeded")
    seen = browser.execute_script("return window.__seen[arguments[0]]", jid)
    assert [s for _, s in seen] == ["queued", "running", "succeeded"], seen
    changes = {"queued": job["created_at"], "running": job["started_at"],
               "succeeded": job["finished_at"]}
    for t, state in seen:
        lag = t / 1000 - ms(changes[state])
        assert lag < 1.0, "%s shown %.3f s after the change" % (state, lag)
        print("%-9s shown %4.0f ms after the change" % (state, lag * 1000))
    assert browser.execute_script("return window.__loaded") == 1, "the page reloaded"
    assert [i for i, _ in rows(browser)] == [jid, first.json()["id"]], "newest first"
    shot(browser, "list")
    assert console_errors(browser) == []


# ---------------------------------------------------------------------------------------
# detail


def to_fixed2(x):
    """JavaScript's x.toFixed(2): the exact binary value, rounded half up."""
    import decimal
    return str(decimal.Decimal(x).quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_UP))


def layer_row_text(layer):
    zf = layer.get("zero_fraction")
    fmt_frac = "" if zf is None else to_fixed2(zf * 100) + "%"
    is24 = layer.get("is_2of4")
    return [layer["name"], layer["type"],
            "x".join(str(n) for n in layer["weight_shape"] or []),
            "" if layer["prune_axis"] is None else str(layer["prune_axis"]),
            layer["action"], layer["reason"] or "", fmt_frac,
            "" if is24 is None else ("yes" if is24 else "no")]


def table_text(drv, table_id):
    return drv.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')].map(tr =>"
        " [...tr.cells].map(td => td.textContent))", table_id)


def test_detail_shows_what_the_api_says(d, contract, browser):
    job = D.run_ok(d, contract, "prune", model=CHAIN, config=SKIP_CFG, outputs="out",
                   name="detail")
    res = job["result"]
    assert {l["reason"] for l in res["layers"]} == {None, "skip_layers"}, res["layers"]
    load(browser, d, fragment="#job=" + job["id"])
    wait_for(lambda: len(table_text(browser, "d-layers")) == len(res["layers"]),
             what="the layer table")
    got = table_text(browser, "d-layers")
    assert got == [layer_row_text(l) for l in res["layers"]]

    facts = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#d-totals dt')].map(dt =>"
        " [dt.textContent, dt.nextElementSibling.textContent]))")
    t = res["totals"]
    assert facts["Weights"] == str(t["weights"]) and facts["Zeroed"] == str(t["weights_zeroed"])
    assert facts["Pruned"] == str(t["pruned"]) and facts["Skipped"] == str(t["skipped"])
    assert facts["Skipped: skip_layers"] == str(t["skipped_by_reason"]["skip_layers"])

    arts = table_text(browser, "d-artifacts")
    assert [(r[0], r[1], r[3]) for r in arts] == [
        (a["name"], a["kind"], a["sha256"]) for a in job["artifacts"]]
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('#d-artifacts tbody td:nth-child(3)')]"
        ".map(td => td.title)")
    assert sizes == ["%d bytes" % a["size"] for a in job["artifacts"]]
    log = d.get("/v1/jobs/%s/log" % job["id"]).text
    wait_for(lambda: browser.find_element("id", "d-log").get_attribute("textContent") == log,
             what="the log")

    # sorting: a column's button sorts up, again down; empty cells stay last
    def sort_by(key):
        browser.find_element("css selector", '#d-layers button[data-key="%s"]' % key).click()
        return [r[0] for r in table_text(browser, "d-layers")]
    names = sorted(l["name"] for l in res["layers"])
    assert sort_by("name") == names
    assert browser.switch_to.active_element.get_attribute("data-key") == "name", \
        "the sort button keeps the focus (keyboard use)"
    assert sort_by("name") == names[::-1]
    assert browser.find_element("css selector", 'th[aria-sort="descending"]')
    valued = [l for l in res["layers"] if l["zero_fraction"] is not None]
    empty = [l["name"] for l in res["layers"] if l["zero_fraction"] is None]
    up = [l["name"] for l in sorted(valued, key=lambda l: l["zero_fraction"])]
    assert sort_by("zero_fraction") == up + empty
    assert sort_by("zero_fraction") == up[::-1] + empty
    shot(browser, "detail")

    # phone-sized: nothing wider than the screen but the scrolling tables
    browser.set_window_size(390, 844)
    try:
        over = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert over <= 0, "the page is %d px wider than a phone's screen" % over
        shot(browser, "detail-phone")
    finally:
        browser.set_window_size(1280, 800)
    assert console_errors(browser) == []


# ---------------------------------------------------------------------------------------
# the form


def open_form(drv):
    box = drv.find_element("id", "submit-box")
    if not box.get_attribute("open"):
        drv.find_element("css selector", "#submit-box summary").click()


def fill_form(drv, stage, files=(), outputs=None, name=None):
    from selenium.webdriver.support.select import Select
    open_form(drv)
    Select(drv.find_element("id", "s-stage")).select_by_visible_text(stage)
    for field, path in files:
        drv.find_element("id", "s-" + field).send_keys(path)
    for field, value in (("outputs", outputs), ("name", name)):
        box = drv.find_element("id", "s-" + field)
        box.clear()
        if value:
            box.send_keys(value)
    drv.find_element("id", "s-go").click()


def submitted_id(drv):
    m = wait_for(lambda: re.search(r"#job=([0-9A-Z]{26})$", drv.current_url),
                 what="the page to open the new job")
    return m.group(1)


def test_form_upload_runs(d, contract, browser, tmp_path):
    model = str(tmp_path / "upload.pb")
    D.write_mlp(model, 2, 1024)  # 8 MiB: the progress bar has something to show
    cfg = tmp_path / "retrain.cfg"
    cfg.write_text(CFG)
    load(browser, d)
    browser.execute_script("""
        window.__bar = [];
        const bar = document.getElementById('s-progress');
        new MutationObserver(() => window.__bar.push([bar.value, bar.hidden]))
          .observe(bar, {attributes: true});""")
    fill_form(browser, "prune", [("model", model), ("config", str(cfg))], outputs="out",
              name="from the form")
    jid = submitted_id(browser)
    job = d.wait_job(jid)
    assert job["state"] == "succeeded", job
    assert job["name"] == "from the form" and job["outputs"] == ["out"]
    with open(model, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    inputs = {a["name"]: a for a in job["artifacts"] if a["kind"] == "input"}
    assert inputs["input_model"]["sha256"] == sha
    assert inputs["input_model"]["size"] == os.path.getsize(model)
    assert job["input_bytes"] == sum(a["size"] for a in inputs.values())
    wait_for(lambda: browser.find_element("css selector", "#d-state .state").text ==
             "succeeded", what="the page to show the job succeeded")
    bar = browser.execute_script("return window.__bar")
    assert any(not hidden for _, hidden in bar), "the progress bar was never shown: %s" % bar
    assert max(v for v, _ in bar) == 1, bar
    assert bar[-1][1], "the progress bar stayed up: %s" % bar

    # record_from: the picker offers finished insert jobs
    ins = D.run_ok(d, contract, "insert", model=CHAIN, config=CFG, outputs="out", name="ins")
    browser.find_element("id", "d-close").click()
    browser.find_element("css selector", "#submit-box summary").click()  # close
    browser.find_element("css selector", "#submit-box summary").click()  # open: refresh
    wait_for(lambda: ins["id"] in browser.execute_script(
        "return [...document.querySelectorAll('#s-record_from option')].map(o => o.value)"),
        what="the insert job in the record_from picker")
    assert console_errors(browser) == []


def test_form_problem_next_to_its_field(d, browser, tmp_path):
    load(browser, d)
    fill_form(browser, "prune", [("model", CHAIN)], outputs="out")   # no config
    err = wait_for(lambda: browser.find_element("id", "e-config").text,
                   what="the problem next to the config field")
    assert "config" in err, err
    assert browser.find_element("id", "s-config").get_attribute("aria-invalid") == "true"
    assert browser.find_element("id", "e-model").text == ""
    direct = d.submit("prune", model=CHAIN, outputs="out")
    assert direct.status == 400 and direct.json()["detail"] == err, direct.describe()

    # a refused form keeps what was typed; without a model the problem moves there
    browser.execute_script("document.getElementById('submit').reset()")
    fill_form(browser, "check", [])
    err = wait_for(lambda: browser.find_element("id", "e-model").text,
                   what="the problem next to the model field")
    assert "model" in err, err
    assert browser.find_element("id", "e-config").text == "", "old problems stay"
    assert console_errors(browser, allow=[r"/v1/jobs .*400"]) == []


def test_bad_config_shows_line_col(d, browser, tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("prune_config {\n  n_out_of_m_pruner { bogus_field: 1 }\n}\n")
    load(browser, d)
    fill_form(browser, "prune", [("model", CHAIN), ("config", str(cfg))], outputs="out")
    jid = submitted_id(browser)
    job = d.wait_job(jid)
    assert job["state"] == "failed" and job["error"]["code"] == "bad-config", job
    assert re.search(r":2:\d+", job["error"]["message"]), job["error"]
    wait_for(lambda: browser.find_element("id", "d-error-msg").text ==
             job["error"]["message"], what="the engine's message on the page")
    assert browser.find_element("id", "d-error-code").text == "bad-config"
    assert console_errors(browser) == []


# ---------------------------------------------------------------------------------------
# cancel, delete


def test_cancel_and_delete(daemons, browser, big_model):
    dmn = daemons.new(args=["--workers", "1"])
    first = dmn.submit_file("prune", big_model, config=CFG, outputs="out")
    D.wait_state(dmn, first.json()["id"], ("running",))
    queued = dmn.submit("check", model=CHAIN).json()["id"]  # behind it for seconds
    load(browser, dmn, fragment="#job=" + queued)
    wait_for(lambda: browser.find_element("css selector", "#d-state .state").text == "queued",
             what="the queued job's detail")
    browser.find_element("id", "d-cancel").click()
    wait_for(lambda: browser.find_element("css selector", "#d-state .state").text ==
             "canceled", what="canceled on the page")
    assert dmn.job(queued).json()["state"] == "canceled"
    assert not browser.find_element("id", "d-cancel").is_enabled()

    delete = browser.find_element("id", "d-delete")
    delete.click()
    assert delete.text == "Really delete?"
    assert dmn.job(queued).status == 200, "one click must not delete"
    delete.click()
    wait_for(lambda: browser.find_element("id", "detail").get_attribute("hidden"),
             what="the detail to close")
    assert dmn.job(queued).status == 404
    wait_for(lambda: queued not in [i for i, _ in rows(browser)],
             what="the deleted job to leave the list")
    dmn.wait_job(first.json()["id"], timeout=60)
    errors = console_errors(browser)
    assert errors == [], errors


# ---------------------------------------------------------------------------------------
# tenants


def test_tenant_sees_only_its_jobs(daemons, browser, serve_bin):
    data = daemons.data_dir()
    tok_a = D.token_create(serve_bin, data, "team-a")
    tok_b = D.token_create(serve_bin, data, "team-b")
    dmn = daemons.new(data_dir=data, token=tok_a)
    a_jobs = [dmn.run_job("check", model=CHAIN, token=tok_a)["id"] for _ in range(2)]
    b_jobs = [dmn.run_job("check", model=CHAIN, token=tok_b)["id"]]

    browser.get("about:blank")
    browser.get(dmn.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for(lambda: "needs an API token" in browser.find_element("id", "auth-msg").text,
             what="the page to ask for a token")
    load(browser, dmn, token=tok_a)
    assert tok_a not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('sparsityd.token')") == tok_a
    wait_for(lambda: sorted(i for i, _ in rows(browser)) == sorted(a_jobs),
             what="team-a's jobs, only")
    browser.execute_script(WATCH_ROWS)
    # live: a job of team-b never shows; one of team-a does
    b_new = dmn.run_job("check", model=CHAIN, token=tok_b)["id"]
    a_new = dmn.run_job("check", model=CHAIN, token=tok_a)["id"]
    wait_for(lambda: a_new in [i for i, _ in rows(browser)], what="team-a's new job")
    seen = browser.execute_script("return Object.keys(window.__seen)")
    assert not set(seen) & set(b_jobs + [b_new]), seen
    # another tenant's job by its id: the page says it is not there
    browser.get(dmn.url + "/#job=" + b_new)
    wait_for(lambda: "gone" in browser.find_element("id", "d-msg").text,
             what="another tenant's job refused")
    assert b_new not in browser.page_source.replace("#job=" + b_new, "").replace(
        "Job " + b_new, "")
    assert console_errors(browser, allow=[r"/v1/\S* .*40[14]"]) == []
