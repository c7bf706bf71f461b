// greenpipe's dashboard: polls dashboard/data once a second and draws.
// The web keeps the samples (rates, percentiles); this page only shows them.
"use strict";

const POLL_MS = 1000;
const COLORS = ["#2b7a3d", "#1f5fa8", "#b5541a", "#7a2b78", "#a8891f", "#1fa89a",
                "#a81f3d", "#555555"];
let since = 0;
let samples = [];
let keep = 300;
let charts = null;
let workerNames = [];
let updates = 0;

function $(id) { return document.getElementById(id); }
function text(id, value) { $(id).textContent = value === null || value === undefined ? "–" : String(value); }
const MIN_SPAN_S = 60;  // a fresh web's charts show a minute, ticks in whole seconds
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
function hms(t) { return new Date(t * 1000).toLocaleTimeString([], { hour12: false }); }
// A dead letter's "2026-11-23T17:18:14+0000": the time, with the date if not today.
function when(iso) {
  const d = new Date(String(iso).replace(/([+-]\d\d)(\d\d)$/, "$1:$2"));
  if (isNaN(d)) return iso;
  const today = d.toDateString() === new Date().toDateString();
  return (today ? "" : d.toLocaleDateString() + " ") + d.toLocaleTimeString();
}
function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (cls) td.className = cls;
  if (cls === "error") td.title = td.textContent;  // cut on the page: whole on hover
  return td;
}

function makeChart(el, title, series, yLabel) {
  const width = Math.max(320, el.clientWidth || 420);
  const opts = {
    width, height: 220,
    scales: { x: { time: true } },
    axes: [{ space: 70, incrs: TIME_INCRS, values: (u, ticks) => ticks.map(hms) },
           { label: yLabel, size: 60 }],
    series: [{}, ...series.map((s, i) => ({
      label: s, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
    }))],
    legend: { live: false },
  };
  return new uPlot(opts, [[], ...series.map(() => [])], el);
}

function buildCharts(names) {
  for (const id of ["chart-workers", "chart-latency", "chart-flight"]) $(id).textContent = "";
  charts = {
    workers: makeChart($("chart-workers"), "workers", names, "jobs/s"),
    latency: makeChart($("chart-latency"), "latency", ["p50", "p99"], "s"),
    flight: makeChart($("chart-flight"), "flight", ["in flight", "pending", "credit", "re-sent/s"], "jobs"),
  };
  workerNames = names;
}

function draw() {
  if (typeof uPlot === "undefined" || !charts) return;
  // At least MIN_SPAN_S on the time axis: a fresh web's one or two samples
  // would otherwise span a second (ticks ":21.000 :21.500") or, alone, none.
  const t = samples.map(s => s.t);
  const pad = t.length && t[0] > t[t.length - 1] - MIN_SPAN_S;
  const x = pad ? [t[t.length - 1] - MIN_SPAN_S, ...t] : t;
  const col = f => (pad ? [null] : []).concat(samples.map(f));
  charts.workers.setData([x, ...workerNames.map((_, i) => col(s => s.workers[i] ?? null))]);
  charts.latency.setData([x, col(s => s.p50), col(s => s.p99)]);
  charts.flight.setData([x, col(s => s.in_flight), col(s => s.pending),
                         col(s => s.credit), col(s => s.resent)]);
}

function showStrip(d) {
  const last = samples.length ? samples[samples.length - 1] : null;
  $("name").textContent = d.name || `pid ${d.pid}`;
  const barrier = $("barrier");
  barrier.textContent = d.barrier ? "barrier met" : "barrier not met";
  barrier.className = "badge " + (d.barrier ? "ok" : "bad");
  text("ready", d.ready); text("configured", d.configured);
  for (const key of ["accepted", "acked", "failed", "resent"]) {
    text(key + "-rate", last ? last[key] : null);
    text(key, d[key]);
  }
  text("pending", d.pending); text("in-flight", d.in_flight); text("credit", d.credit);
  // By queue once there is more than the default one: "reports 12 · default 3".
  const queues = Object.entries(d.pending_by_queue || {});
  text("pending-by-queue", queues.length > 1 || (queues.length && queues[0][0] !== "default")
    ? "(" + queues.map(([q, n]) => `${q} ${n}`).join(" · ") + ")" : "");
  text("waiting", d.waiting); text("retried", d.retried); text("cancelled", d.cancelled);
  text("rejected", d.rejected); text("dead-lettered", d.dead_lettered); text("redriven", d.redriven);
}

function showWorkers(d) {
  const body = $("workers").tBodies[0];
  body.textContent = "";
  for (const w of d.workers) {
    const row = body.insertRow();
    row.dataset.worker = w.endpoint;
    row.dataset.state = w.state;
    row.className = w.ready ? "ready" : "not-ready";
    cell(row, w.endpoint);
    cell(row, w.state, "state");
    cell(row, w.in_flight); cell(row, w.credit); cell(row, w.sent); cell(row, w.acked);
    cell(row, w.failed); cell(row, w.handled);
    cell(row, w.heartbeat_age);
    cell(row, runs(w.serves), "name runs").title = runs(w.serves);
  }
}

// What a worker's READY said it runs: its queues (if not the default alone),
// its job names, and "any name" for a default handler.
function runs(serves) {
  if (!serves) return "–";
  const names = serves.default
    ? [...serves.names, serves.names.length ? "any other name" : "any name"] : serves.names;
  const what = names.length ? names.join(", ") : "nothing";
  const queues = serves.queues || ["default"];
  return queues.length === 1 && queues[0] === "default" ? what : `${queues.join(", ")}: ${what}`;
}

function showFailures(d) {
  const body = $("failures").tBodies[0];
  body.textContent = "";
  for (const f of d.failures) {
    const row = body.insertRow();
    cell(row, clock(f.time)); cell(row, f.id); cell(row, f.name, "name").title = f.name;
    cell(row, f.worker); cell(row, f.error, "error");
  }
}

// "3 of 10" with a bar (or "3" alone when the handler gave no total).
function progressCell(row, p) {
  const td = row.insertCell();
  td.className = "bar";
  if (p.total) {
    const bar = document.createElement("progress");
    bar.max = p.total; bar.value = Math.min(p.done, p.total);
    td.appendChild(bar);
  }
  td.appendChild(document.createTextNode(p.total ? ` ${p.done} of ${p.total}` : String(p.done)));
}

function showRunning(d) {
  const body = $("running").tBodies[0];
  body.textContent = "";
  for (const j of d.running || []) {
    const row = body.insertRow();
    row.dataset.job = j.id;
    cell(row, j.id); cell(row, j.name, "name").title = j.name; cell(row, j.worker);
    progressCell(row, j.progress);
    cell(row, j.progress.note, "error");
    cell(row, clock(j.progress.at));
  }
}

async function resend(id, button) {
  button.disabled = true;
  try {
    const r = await fetch(`dashboard/dead/${encodeURIComponent(id)}/resend`, {
      method: "POST", headers: { "X-Greenpipe-Action": "resend" },
    });
    const body = await r.json();
    button.textContent = r.status === 202 ? `re-sent as ${body.id}` : `${r.status}: ${body.detail}`;
    button.dataset.result = String(r.status);
  } catch (e) {
    button.textContent = "failed: " + e;
    button.disabled = false;
  }
}

function showDead(d) {
  $("dead-file").textContent = d.dead_letter_file;
  const body = $("dead").tBodies[0];
  const done = new Map([...body.querySelectorAll("button[data-result]")].map(b => [b.dataset.id, b]));
  body.textContent = "";
  for (const r of d.dead_letters) {
    const row = body.insertRow();
    row.dataset.job = r.id;
    cell(row, when(r.time)).title = r.time; cell(row, r.id);
    cell(row, r.name || r.path, "name").title = r.name || r.path;
    cell(row, r.reason, "error");
    cell(row, r.attempts);
    const old = done.get(r.id);
    if (old) { row.insertCell().appendChild(old); continue; }
    const button = document.createElement("button");
    button.textContent = "re-send";
    if (r.resent_as) button.title = `re-sent already, as ${r.resent_as}: a click answers that job`;
    button.dataset.id = r.id;
    button.onclick = () => resend(r.id, button);
    row.insertCell().appendChild(button);
  }
}

// "Act on many": re-send kept jobs, or cancel a backlog, by name ("*": every
// one). The same routes as `greenpipe jobs resend` and `purge`, behind the
// same action header; the answer's counts are said next to the button.
function count(x) { return Array.isArray(x) ? x.length : Object.keys(x || {}).length; }
const ACTIONS = {
  "resend-many": { path: "failed/resend", action: "resend", said: a =>
    `${count(a.sent)} re-sent, ${count(a.already)} already, ${count(a.refused)} refused, ` +
    `${count(a.in_doubt)} in doubt` },
  "purge-many": { path: "backlog/purge", action: "purge", said: a =>
    `${count(a.cancelled)} cancelled, ${count(a.cancelling)} cancelling, ` +
    `${count(a.started)} started meanwhile, ${count(a.finished)} finished before, ` +
    `${count(a.refused)} refused` },
};

async function act(form) {
  const { path, action, said } = ACTIONS[form.id];
  const out = form.querySelector("output");
  const name = form.elements.name.value.trim();
  const body = name === "*" ? { every: true } : { name };
  if (form.elements.in_flight) body.in_flight = form.elements.in_flight.checked;
  form.querySelector("button").disabled = true;
  out.textContent = "…";
  try {
    const r = await fetch(path, {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-Greenpipe-Action": action },
    });
    const a = await r.json();
    out.textContent = (r.ok ? "" : `${r.status}: ${a.detail}; `) +
      ("sent" in a || "cancelled" in a ? said(a) : "");  // a 400 has no counts
    out.dataset.status = String(r.status);
  } catch (e) {
    out.textContent = "failed: " + e;
  } finally {
    form.querySelector("button").disabled = false;
  }
}

for (const id of Object.keys(ACTIONS)) {
  $(id).addEventListener("submit", e => { e.preventDefault(); act(e.target); });
}

async function poll() {
  try {
    const r = await fetch(`dashboard/data?since=${since}`, { cache: "no-store" });
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    const d = await r.json();
    keep = d.history_s || keep;
    samples = samples.concat(d.samples).slice(-keep);
    if (d.samples.length) since = d.samples[d.samples.length - 1].t;
    const names = d.workers.map(w => w.endpoint);
    if (!charts || names.join() !== workerNames.join()) buildCharts(names);
    showStrip(d); showWorkers(d); showRunning(d); showFailures(d); showDead(d); draw();
    $("status").textContent = "";
    document.body.dataset.updates = String(++updates);
    document.body.dataset.lastUpdate = String(d.time);
  } catch (e) {
    $("status").textContent = "web not answering: " + e.message;
  }
  setTimeout(poll, POLL_MS);
}

poll();
