/*
 * The sparsityd dashboard: the job list, a job's detail and the submit form, over the
 * daemon's own API (openapi.yaml). Plain JavaScript, no library, no build step.
 *
 * Design:
 * - Every byte shown comes from /v1 with the token typed into the page (sessionStorage,
 *   sent as a Bearer header, never in a URL); the daemon scopes it to the tenant, so the
 *   page shows exactly what the API would.
 * - Live: one fetch() of GET /v1/events read as a stream (EventSource cannot send an
 *   Authorization header). A job event carries the job's list-row members, rendered by
 *   the same code as the list's, so the row is put in place from the event alone: a
 *   refetch per event cost more than the event (on two cores, Chromium's fetch per
 *   change delayed the stream itself by tens of ms). What the event does not carry is
 *   fetched: the open job's detail, a name too long for an event, and the list after a
 *   deletion or a reset. Refetches coalesce: one in flight per view, one more queued if
 *   events arrived meanwhile. After a reconnect the stream resumes with Last-Event-ID
 *   and the page refetches anyway. A daemon without /v1/events gets polling
 *   (conditional GETs, so an unchanged list costs a 304).
 * - Text from the API is only ever set with textContent: names and messages come from
 *   models and clients, and the Content-Security-Policy forbids inline script anyway.
 */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "sparsityd.token";
  const PAGE_SIZE = 25;
  const POLL_MS = 700;          // fallback when the daemon has no /v1/events
  const RETRY_MS = [250, 1000, 3000, 5000];

  // ---- state ----
  const view = {
    filters: { state: "", stage: "" },
    cursors: [""],              // cursors[i]: the cursor of page i ("" = newest)
    page: 0,
    next: null,                 // next_cursor of the page shown
    detail: null,               // id of the open job
    sort: { key: null, dir: 1 },
    job: null,                  // the open job's document
    jobs: [],                   // the list page shown
    deleting: null,             // the id a DELETE is in flight for
  };

  // ---- HTTP ----
  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h.Authorization = "Bearer " + t;
    return h;
  }

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem && problem.detail ? problem.detail : "HTTP " + status);
      this.status = status;
      this.problem = problem;
    }
  }

  async function problemOf(r) {
    try { return await r.json(); } catch (_) { return null; }
  }

  async function api(path, opts) {
    const o = Object.assign({}, opts || {});
    o.headers = authHeaders(o.headers);
    const r = await fetch(path, o);
    if (r.status === 401) needToken(await problemOf(r));
    if (!r.ok) throw new ApiError(r.status, await problemOf(r));
    return r;
  }

  function needToken(problem) {
    $("auth-msg").textContent = (token() ? "Token refused: " : "This daemon needs an API token: ") +
      (problem && problem.detail ? problem.detail : "401");
    $("auth").classList.add("wanted");
    $("token").focus();
  }

  // ---- formatting ----
  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  // The list's short form: the time of day for today, else the date and minutes.
  function fmtWhen(iso, now) {
    const d = new Date(iso), n = new Date(now);
    const hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (d.toDateString() === n.toDateString()) return hm + ":" + pad(d.getSeconds());
    return (d.getFullYear() === n.getFullYear() ? "" : d.getFullYear() + "-") +
      pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + hm;
  }
  function fmtDuration(ms) {
    if (ms == null || ms < 0) return "";
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.floor(s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  // Wall time of a job: queued jobs count from creation, finished ones stop at the end.
  function jobDuration(j, now) {
    const t = (x) => (x ? Date.parse(x) : null);
    const start = t(j.started_at), end = t(j.finished_at);
    if (start == null) return j.state === "queued" ? null : (end != null ? 0 : null);
    return (end != null ? end : now) - start;
  }
  function fmtBytes(n) {
    if (n == null) return "";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(v < 10 ? 2 : 1) : String(v)) + " " + u[i];
  }
  function fmtFraction(f) { return f == null ? "" : (f * 100).toFixed(2) + "%"; }
  function fmtShape(s) { return s ? s.join("x") : ""; }
  function yesNo(b) { return b == null ? "" : (b ? "yes" : "no"); }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  }
  function stateBadge(state) { return el("span", { class: "state s-" + state, text: state }); }

  // ---- coalesced refreshes: one in flight per view, one more if asked meanwhile ----
  function coalesced(fn) {
    let running = false, again = false;
    const run = async () => {
      if (running) { again = true; return; }
      running = true;
      try {
        do { again = false; await fn(); } while (again);
      } finally { running = false; }
    };
    run.busy = () => running;
    return run;
  }

  // ---- the job list ----
  function listQuery() {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE), view: "brief" });
    if (view.filters.state) q.set("state", view.filters.state);
    if (view.filters.stage) q.set("stage", view.filters.stage);
    if (view.cursors[view.page]) q.set("cursor", view.cursors[view.page]);
    return "/v1/jobs?" + q;
  }

  const refreshList = coalesced(async () => {
    let doc;
    try {
      doc = await (await api(listQuery(), { cache: "no-cache" })).json();
      $("jobs-msg").textContent = "";
    } catch (e) {
      $("jobs-msg").textContent = "Cannot list jobs: " + e.message;
      return;
    }
    view.next = doc.next_cursor;
    renderList(doc.jobs);
  });

  function jobRow(j, now) {
    const link = el("a", { href: "#job=" + j.id, text: j.id, class: "id", title: j.id });
    const tr = el("tr", { "data-id": j.id, "data-state": j.state },
      el("td", null, stateBadge(j.state),
        j.state === "running" ? el("span", { class: "pct", text: " " + j.progress + "%" }) : null),
      el("td", { text: j.stage }),
      el("td", { text: j.name || "", class: "name" }),
      el("td", null, link),
      el("td", { text: fmtWhen(j.created_at, now), title: fmtTime(j.created_at) }),
      el("td", { class: "num dur", text: fmtDuration(jobDuration(j, now)),
                 "data-start": j.state === "running" ? j.started_at : null }),
      el("td", { class: "num", text: fmtBytes(j.input_bytes), title: j.input_bytes + " bytes" }));
    if (j.id === view.detail) tr.classList.add("open");
    return tr;
  }

  // What a row shows, so an unchanged row is kept as it is (durations of running rows
  // move by the timer below; the day decides the created column's form).
  function rowSig(j, day) {
    return [j.state, j.progress, j.stage, j.name, j.created_at, j.started_at, j.finished_at,
            j.input_bytes, j.id === view.detail, day].join("\u0001");
  }

  // The list goes in with as few DOM changes as give the same table: rows already shown
  // and unchanged stay, a changed row is replaced, a new one inserted. An event thus costs
  // one row, not the table: events can come faster than a page rebuilds 25 rows, and on
  // two cores the renderer then fell behind the stream by hundreds of ms.
  function renderList(jobs) {
    const now = Date.now(), day = new Date(now).toDateString();
    view.jobs = jobs;
    const tbody = $("jobs").tBodies[0];
    const shown = new Map();
    for (const tr of tbody.rows) shown.set(tr.dataset.id, tr);
    jobs.forEach((j, i) => {
      const sig = rowSig(j, day);
      let tr = shown.get(j.id);
      if (!tr || tr.sig !== sig) {
        const fresh = jobRow(j, now);
        fresh.sig = sig;
        if (tr) tr.replaceWith(fresh);
        tr = fresh;
      }
      if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    });
    while (tbody.rows.length > jobs.length) tbody.deleteRow(-1);
    // The first render with the list, for the Navigation Timing figures
    // (tests/bench/bench_web.py).
    if (!performance.getEntriesByName("sparsityd:list").length) performance.mark("sparsityd:list");
    $("jobs-empty").hidden = jobs.length > 0;
    $("page-no").textContent = "page " + (view.page + 1);
    $("newer").disabled = view.page === 0;
    $("older").disabled = !view.next;
  }

  // Running jobs' durations move every second without asking the server.
  setInterval(() => {
    const now = Date.now();
    for (const td of document.querySelectorAll("td.dur[data-start]"))
      td.textContent = fmtDuration(now - Date.parse(td.getAttribute("data-start")));
  }, 1000);

  // One job changed: its own document is fetched (a key lookup for the daemon, where a
  // list page counts every job matching the filters) and put in place. Page 0 takes in
  // a new job the same way; a job leaving the filters, or a deletion, needs the list.
  const jobRefresh = new Map();
  function refreshJob(id) {
    if (view.page > 0 && !view.jobs.some((j) => j.id === id)) return;
    let f = jobRefresh.get(id);
    if (!f) {
      f = coalesced(async () => {
        let j;
        try {
          j = await (await api("/v1/jobs/" + id, { cache: "no-cache" })).json();
        } catch (_) {
          return refreshList(); // gone or unreadable: the list says what is left
        }
        placeJob(j);
      });
      jobRefresh.set(id, f);
    }
    f().finally(() => { if (!f.busy()) jobRefresh.delete(id); });
  }

  function matches(j) {
    return (!view.filters.state || j.state === view.filters.state) &&
      (!view.filters.stage || j.stage === view.filters.stage);
  }

  function placeJob(j) {
    if (refreshList.busy()) return refreshList(); // the list's answer would race this one
    const jobs = view.jobs.slice();
    const i = jobs.findIndex((x) => x.id === j.id);
    if (i >= 0) {
      if (!matches(j)) return refreshList(); // the page refills from the daemon
      if (Date.parse(jobs[i].updated_at) > Date.parse(j.updated_at)) return; // stale answer
      jobs[i] = j;
    } else {
      if (view.page > 0 || !matches(j)) return;
      const at = jobs.findIndex((x) => x.id < j.id); // ids sort by creation: newest first
      if (at < 0 && jobs.length >= PAGE_SIZE) return;  // older than the whole page
      jobs.splice(at < 0 ? jobs.length : at, 0, j);
      if (jobs.length >= PAGE_SIZE) {
        jobs.length = PAGE_SIZE;
        view.next = jobs[PAGE_SIZE - 1].id; // as the daemon's next_cursor of a full page
      }
    }
    renderList(jobs);
  }

  function resetPages() {
    view.cursors = [""];
    view.page = 0;
    refreshList();
  }

  // ---- a job's detail ----
  const LAYER_COLS = [
    { key: "name", label: "Layer" },
    { key: "type", label: "Type" },
    { key: "weight_shape", label: "Weight shape", fmt: fmtShape,
      sortv: (l) => (l.weight_shape || []).reduce((a, b) => a * b, 1) },
    { key: "prune_axis", label: "Axis", num: true },
    { key: "action", label: "Action" },
    { key: "reason", label: "Reason" },
    { key: "zero_fraction", label: "Zero fraction", num: true, fmt: fmtFraction },
    { key: "is_2of4", label: "2:4", fmt: yesNo },
  ];

  const refreshDetail = coalesced(async () => {
    const id = view.detail;
    if (!id || id === view.deleting) return;
    let job, log = "";
    try {
      job = await (await api("/v1/jobs/" + id, { cache: "no-cache" })).json();
      log = await (await api("/v1/jobs/" + id + "/log", { cache: "no-cache" })).text();
    } catch (e) {
      if (id !== view.detail) return;
      if (e.status === 404) {
        detailGone(id);
      } else {
        $("d-msg").textContent = "Cannot read job " + id + ": " + e.message;
      }
      return;
    }
    if (id !== view.detail) return;
    $("d-msg").textContent = "";
    view.job = job;
    renderDetail(job, log);
  });

  function detailGone(id) {
    $("d-msg").textContent = "Job " + id + " is gone (deleted, expired, or not yours).";
    $("d-cancel").disabled = true;
    $("d-delete").disabled = true;
  }

  function fact(dl, name, value) {
    if (value === "" || value == null) return;
    dl.append(el("dt", { text: name }), el("dd", { text: String(value) }));
  }

  function renderDetail(j, log) {
    $("detail-h").textContent = (j.name || "Job") + " (" + j.stage + ")";
    $("d-state").replaceChildren(stateBadge(j.state));
    $("detail").setAttribute("data-state", j.state);
    const active = j.state === "queued" || j.state === "running";
    $("d-cancel").disabled = !active;
    $("d-delete").disabled = false;
    const facts = $("d-facts");
    facts.replaceChildren();
    fact(facts, "Id", j.id);
    fact(facts, "Outputs", j.outputs.join(", "));
    fact(facts, "Record from", j.record_from);
    fact(facts, "Created", fmtTime(j.created_at));
    fact(facts, "Started", fmtTime(j.started_at));
    fact(facts, "Finished", fmtTime(j.finished_at));
    fact(facts, "Duration", fmtDuration(jobDuration(j, Date.now())));
    fact(facts, "Input", fmtBytes(j.input_bytes));
    fact(facts, "Attempts", j.attempts);
    const prog = $("d-progress");
    prog.hidden = j.state !== "running";
    prog.value = j.progress;

    $("d-error").hidden = !j.error;
    if (j.error) {
      $("d-error-code").textContent = j.error.code;
      $("d-error-msg").textContent = j.error.message;
    }

    const res = j.result;
    $("d-result").hidden = !res;
    if (res) renderResult(res);

    $("d-artifacts").tBodies[0].replaceChildren(...(j.artifacts || []).map((a) =>
      el("tr", { "data-name": a.name },
        el("td", null, downloadLink(a)),
        el("td", { text: a.kind }),
        el("td", { class: "num", text: fmtBytes(a.size), title: a.size + " bytes" }),
        el("td", { class: "sha", text: a.sha256 }))));
    const pre = $("d-log");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = log;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  function renderResult(res) {
    const t = res.totals || {};
    const dl = $("d-totals");
    dl.replaceChildren();
    fact(dl, "Layers", t.layers);
    fact(dl, "Pruned", t.pruned);
    fact(dl, "Skipped", t.skipped);
    for (const [reason, n] of Object.entries(t.skipped_by_reason || {}))
      fact(dl, "Skipped: " + reason, n);
    fact(dl, "Weights", t.weights);
    fact(dl, "Zeroed", t.weights_zeroed);
    fact(dl, "Checked", t.checked);
    fact(dl, "2:4 layers", t.layers_2of4);
    $("d-warnings").replaceChildren(...(res.warnings || []).map((w) => el("li", { text: w })));
    renderLayers(res.layers || []);
  }

  function renderLayers(layers) {
    const head = $("d-layers").tHead.rows[0];
    head.replaceChildren(...LAYER_COLS.map((c) => {
      const sorted = view.sort.key === c.key;
      const th = el("th", { scope: "col", class: c.num ? "num" : null },
        el("button", { type: "button", class: "sort", text: c.label, "data-key": c.key }));
      th.setAttribute("aria-sort", sorted ? (view.sort.dir > 0 ? "ascending" : "descending") : "none");
      return th;
    }));
    let rows = layers.slice();
    const col = LAYER_COLS.find((c) => c.key === view.sort.key);
    if (col) {
      const v = col.sortv || ((l) => l[col.key]);
      rows.sort((a, b) => {
        const x = v(a), y = v(b);
        if (x == null || y == null) return (x == null) - (y == null);
        return (x < y ? -1 : x > y ? 1 : 0) * view.sort.dir;
      });
    }
    $("d-layers").tBodies[0].replaceChildren(...rows.map((l) =>
      el("tr", { "data-layer": l.name }, ...LAYER_COLS.map((c) =>
        el("td", { class: c.num ? "num" : null,
                   text: c.fmt ? c.fmt(l[c.key]) : (l[c.key] == null ? "" : String(l[c.key])) })))));
  }

  $("d-layers").tHead.addEventListener("click", (ev) => {
    const b = ev.target.closest("button.sort");
    if (!b) return;
    const key = b.getAttribute("data-key");
    view.sort = { key, dir: view.sort.key === key ? -view.sort.dir : 1 };
    if (view.job && view.job.result) renderLayers(view.job.result.layers || []);
    const again = document.querySelector('#d-layers button[data-key="' + key + '"]');
    if (again) again.focus();
  });

  // Without tokens a plain link streams the file; with one the download needs the
  // header, so it is fetched and handed over as a blob.
  function downloadLink(a) {
    const link = el("a", { href: a.href, text: a.name, download: a.name });
    link.addEventListener("click", async (ev) => {
      if (!token()) return;
      ev.preventDefault();
      try {
        const blob = await (await api(a.href)).blob();
        const url = URL.createObjectURL(blob);
        const tmp = el("a", { href: url, download: a.name });
        document.body.append(tmp);
        tmp.click();
        tmp.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (e) {
        $("d-msg").textContent = "Download of " + a.name + " failed: " + e.message;
      }
    });
    return link;
  }

  function openFromHash() {
    const m = /^#job=([0-9A-Za-z]{1,64})$/.exec(location.hash);
    const id = m ? m[1] : null;
    if (id === view.detail) return;
    view.detail = id;
    view.job = null;
    $("detail").hidden = !id;
    document.body.classList.toggle("with-detail", !!id);
    for (const tr of $("jobs").tBodies[0].rows) tr.classList.toggle("open", tr.dataset.id === id);
    if (!id) return;
    $("detail-h").textContent = "Job " + id;
    for (const x of ["d-facts", "d-totals", "d-warnings", "d-log"]) $(x).replaceChildren();
    $("d-layers").tBodies[0].replaceChildren();
    $("d-artifacts").tBodies[0].replaceChildren();
    $("d-error").hidden = true;
    $("d-result").hidden = true;
    $("d-msg").textContent = "";
    resetDelete();
    refreshDetail();
    $("detail-h").focus();
  }

  $("d-cancel").addEventListener("click", async () => {
    const id = view.detail;
    try {
      await api("/v1/jobs/" + id + "/cancel", { method: "POST" });
    } catch (e) {
      $("d-msg").textContent = "Cancel failed: " + e.message;
    }
    refreshDetail();
    refreshList();
  });

  // Delete asks twice: a second click within 4 s confirms.
  let deleteArmed = null;
  function resetDelete() {
    clearTimeout(deleteArmed);
    deleteArmed = null;
    $("d-delete").textContent = "Delete";
  }
  $("d-delete").addEventListener("click", async () => {
    if (!deleteArmed) {
      $("d-delete").textContent = "Really delete?";
      deleteArmed = setTimeout(resetDelete, 4000);
      return;
    }
    resetDelete();
    const id = view.detail;
    view.deleting = id; // the deletion's own event must not fetch the job again
    try {
      await api("/v1/jobs/" + id, { method: "DELETE" });
      location.hash = "";
      openFromHash(); // now, not at hashchange: the deletion's event may come first
    } catch (e) {
      $("d-msg").textContent = "Delete failed: " + e.message;
    } finally {
      view.deleting = null;
    }
    refreshList();
  });

  // ---- the submit form ----
  const FIELDS = ["stage", "model", "config", "record", "record_from", "outputs", "name"];

  function clearFieldErrors() {
    for (const f of FIELDS) {
      $("e-" + f).textContent = "";
      $("s-" + f).removeAttribute("aria-invalid");
    }
    $("e-form").textContent = "";
  }

  // The daemon names the part a problem concerns ("part 'outputs' ...", "missing part
  // 'model'", "record_from job ... is not ..."): the message goes next to that field.
  function fieldOf(detail) {
    const m = /part '([a-z_]+)'/.exec(detail || "") || /^([a-z_]+)\b/.exec(detail || "");
    return m && FIELDS.includes(m[1]) ? m[1] : null;
  }

  async function refreshRecordSources() {
    const sel = $("s-record_from");
    let doc;
    try {
      doc = await (await api("/v1/jobs?state=succeeded&stage=insert&limit=200&view=brief",
                             { cache: "no-cache" })).json();
    } catch (_) {
      return; // the list shows the reason
    }
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "", text: "none" }), ...doc.jobs.map((j) =>
      el("option", { value: j.id, text: (j.name ? j.name + " " : "") + j.id + " (" +
                     fmtTime(j.finished_at) + ")" })));
    sel.value = keep;
  }
  $("submit-box").addEventListener("toggle", () => {
    if ($("submit-box").open) refreshRecordSources();
  });

  $("submit").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearFieldErrors();
    const fd = new FormData();
    fd.append("stage", $("s-stage").value);
    for (const f of ["model", "config", "record"]) {
      const file = $("s-" + f).files[0];
      if (file) fd.append(f, file, file.name);
    }
    for (const f of ["record_from", "outputs", "name"]) {
      const v = $("s-" + f).value.trim();
      if (v) fd.append(f, v);
    }
    // XMLHttpRequest: fetch() reports no upload progress.
    const xhr = new XMLHttpRequest();
    const bar = $("s-progress");
    xhr.open("POST", "/v1/jobs");
    const t = token();
    if (t) xhr.setRequestHeader("Authorization", "Bearer " + t);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = e.loaded / e.total;
    });
    xhr.addEventListener("load", () => {
      bar.hidden = true;
      $("s-go").disabled = false;
      let doc = null;
      try { doc = JSON.parse(xhr.responseText); } catch (_) { /* shown below */ }
      if (xhr.status === 202 && doc) {
        $("s-status").textContent = "Job " + doc.id + " queued.";
        $("submit").reset();
        location.hash = "job=" + doc.id;
        refreshList();
        return;
      }
      $("s-status").textContent = "";
      if (xhr.status === 401) needToken(doc);
      const detail = doc && doc.detail ? doc.detail : "HTTP " + xhr.status;
      const field = fieldOf(detail);
      if (field) {
        $("e-" + field).textContent = detail;
        $("s-" + field).setAttribute("aria-invalid", "true");
        $("s-" + field).focus();
      } else {
        $("e-form").textContent = detail;
      }
    });
    xhr.addEventListener("error", () => {
      bar.hidden = true;
      $("s-go").disabled = false;
      $("s-status").textContent = "";
      $("e-form").textContent = "The upload was cut off (network error).";
    });
    bar.value = 0;
    bar.hidden = false;
    $("s-go").disabled = true;
    $("s-status").textContent = "Uploading…";
    xhr.send(fd);
  });

  // ---- live updates ----
  function setLive(text, cls) {
    const p = $("live");
    p.textContent = text;
    p.className = "live " + (cls || "");
  }

  // ev null: anything may have changed.
  function changed(ev) {
    const id = ev ? ev.id : null, deleted = !!ev && ev.deleted === true;
    if (!id || deleted) refreshList();
    else if (typeof ev.name === "string" && ev.created_at) placeJob(ev);
    else refreshJob(id);
    if (id && deleted && id === view.detail) detailGone(id);
    else if (!id || id === view.detail) refreshDetail();
  }

  let lastEventId = null;
  let retry = 0;
  let gen = 0;                // the stream of an older token ends quietly
  let ctl = null;

  // One server-sent event block (lines without the blank one that ended it).
  function dispatch(block) {
    let type = "message", data = [], id = null;
    for (const line of block.split("\n")) {
      if (!line || line[0] === ":") continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (id !== null) lastEventId = id;
    // "reset": the daemon could not replay what was missed; reload what is shown.
    if (type === "reset") return changed(null);
    if (type !== "job" || !data.length) return;
    let ev;
    try { ev = JSON.parse(data.join("\n")); } catch (_) { return; }
    if (ev && typeof ev.id === "string") changed(ev);
  }

  function restartStream() {
    if (ctl) ctl.abort();
    ctl = new AbortController();
    lastEventId = null;
    retry = 0;
    stream(++gen, ctl.signal);
  }

  async function stream(g, signal) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    let r;
    try {
      r = await fetch("/v1/events", { headers, cache: "no-store", signal });
    } catch (_) {
      return reconnect(g, signal);
    }
    if (g !== gen) return; // a token change started another stream meanwhile
    if (r.status === 404) return poll();
    if (r.status === 401) {
      needToken(await problemOf(r));
      setLive("waiting for a token", "off");
      return; // the token form restarts it
    }
    if (!r.ok || !r.body) return reconnect(g, signal);
    setLive("live", "on");
    retry = 0;
    // Whatever changed before the stream was open (even on the first connection: the
    // page's first fetches were answered before it) is fetched again.
    changed(null);
    // A TextDecoder on the body's own reader: pipeThrough(TextDecoderStream) adds a
    // task per chunk between the network and the page.
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        // Line ends may be \r\n, \r or \n; a \r at the end may be half of a \r\n.
        const hold = buf.endsWith("\r");
        let text = (hold ? buf.slice(0, -1) : buf).replace(/\r\n?/g, "\n");
        let i;
        while ((i = text.indexOf("\n\n")) >= 0) {
          dispatch(text.slice(0, i));
          text = text.slice(i + 2);
        }
        buf = text + (hold ? "\r" : "");
      }
    } catch (_) { /* the connection broke or was aborted: see reconnect */ }
    reconnect(g, signal);
  }

  function reconnect(g, signal) {
    if (g !== gen) return;
    setLive("reconnecting", "off");
    setTimeout(() => { if (g === gen) stream(g, signal); },
               RETRY_MS[Math.min(retry++, RETRY_MS.length - 1)]);
  }

  let polling = false;
  function poll() {
    if (polling) return;
    polling = true;
    setLive("polling", "on");
    setInterval(() => changed(null), POLL_MS);
  }

  // ---- wiring ----
  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    $("auth-msg").textContent = "";
    $("auth").classList.remove("wanted");
    tokenChanged();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenChanged();
  });
  function tokenChanged() {
    $("token").placeholder = token() ? "token set (type to replace)" : "sdt_… (when tokens are configured)";
    resetPages();
    if (view.detail) refreshDetail();
    if (!polling) restartStream();
  }
  $("f-state").addEventListener("change", () => { view.filters.state = $("f-state").value; resetPages(); });
  $("f-stage").addEventListener("change", () => { view.filters.stage = $("f-stage").value; resetPages(); });
  $("newer").addEventListener("click", () => {
    if (view.page > 0) { view.page--; refreshList(); }
  });
  $("older").addEventListener("click", () => {
    if (!view.next) return;
    view.cursors[view.page + 1] = view.next;
    view.page++;
    refreshList();
  });
  $("d-close").addEventListener("click", (ev) => {
    ev.preventDefault();
    location.hash = "";
  });
  window.addEventListener("hashchange", openFromHash);

  openFromHash();
  tokenChanged();
})();
