// The kombu monitor's page: plain DOM, no framework, nothing loaded from elsewhere. Every
// value from the server is written as text (textContent), never as HTML.
"use strict";

const VIEWS = ["workers", "tasks", "queues", "charts"];
const STATE_OF = {
  "task-sent": "PENDING", "task-received": "RECEIVED", "task-started": "STARTED",
  "task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-retried": "RETRY",
  "task-revoked": "REVOKED", "task-rejected": "REJECTED",
};
const TIMELINE = ["sent", "received", "started", "succeeded", "failed", "retried",
                  "revoked", "rejected"];

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function cell(row, value, numeric) {
  const td = el("td", value === null || value === undefined ? "–" : value, numeric ? "num" : "");
  row.appendChild(td);
  return td;
}

function when(seconds) {
  if (typeof seconds !== "number") return "–";
  return new Date(seconds * 1000).toLocaleString();
}

function age(seconds) {
  if (typeof seconds !== "number") return "–";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

// A path of the API as an absolute URL without credentials: a page opened with a user and
// password in its address would resolve relative URLs with them, which fetch and
// EventSource refuse; the browser sends the password it opened the page with anyway.
function api(path) {
  const url = new URL(path, document.baseURI);
  url.username = "";
  url.password = "";
  return url.href;
}

async function getJson(path) {
  const response = await fetch(api(path), { headers: { Accept: "application/json" } });
  const text = await response.text();
  if (!response.ok) {
    let reason = text;
    try { reason = JSON.parse(text).error || text; } catch (_) { /* text as it is */ }
    throw new Error(`${response.status}: ${reason}`);
  }
  return JSON.parse(text);
}

// ---- views ----

let current = "workers";

function show(view, focus) {
  if (!VIEWS.includes(view)) view = "workers";
  current = view;
  for (const name of VIEWS) {
    $(`view-${name}`).hidden = name !== view;
    const link = document.querySelector(`nav a[data-view="${name}"]`);
    if (name === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // After the view is shown: a hidden heading takes no focus.
  if (focus) {
    const heading = $(`h-${view}`);
    heading.tabIndex = -1;
    heading.focus();
  }
  refresh();
}

function refresh() {
  if (current === "workers") loadWorkers();
  if (current === "tasks") loadTasks();
  if (current === "queues") loadQueues();
  if (current === "charts") loadCharts();
}

// ---- workers ----

async function loadWorkers() {
  let data;
  try { data = await getJson("api/monitor/workers"); } catch (e) { return status(e.message); }
  const body = $("workers-body");
  body.replaceChildren();
  if (data.workers.length === 0) {
    const row = el("tr");
    const td = cell(row, "No worker heard of yet.");
    td.colSpan = 8;
    body.appendChild(row);
    return;
  }
  for (const w of data.workers) {
    const row = el("tr");
    const name = el("th", w.hostname);
    name.scope = "row";
    row.appendChild(name);
    cell(row, w.online ? "online" : "offline").className = w.online ? "online" : "offline";
    cell(row, w.active, true);
    cell(row, w.processed, true);
    cell(row, w.succeeded, true);
    cell(row, w.failed, true);
    cell(row, Array.isArray(w.loadavg) ? w.loadavg.join(", ") : null);
    cell(row, w.sw_ident ? `${w.sw_ident} ${w.sw_ver || ""}` : null);
    body.appendChild(row);
  }
}

// ---- tasks ----

function taskQuery() {
  const form = new FormData($("task-filters"));
  const params = new URLSearchParams({ limit: "100" });
  for (const [key, value] of form.entries()) {
    if (value) params.set(key, String(value));
  }
  return params;
}

function filtered() {
  const params = taskQuery();
  return ["state", "taskname", "workername", "search", "sort_by"].some((k) => params.has(k));
}

const shown = new Map(); // uuid -> row

function taskRow(uuid, task) {
  const row = el("tr");
  row.dataset.uuid = uuid;
  const nameCell = el("td");
  const open = el("button", task.name || "(unknown)", "link");
  open.type = "button";
  open.setAttribute("aria-label", `${task.name || "task"} ${uuid}`);
  open.addEventListener("click", () => openTask(uuid));
  nameCell.appendChild(open);
  row.appendChild(nameCell);
  cell(row, task.state).className = KNOWN.has(task.state) ? task.state : "";
  cell(row, task.worker);
  cell(row, when(task.received));
  cell(row, typeof task.runtime === "number" ? task.runtime.toFixed(3) : null, true);
  cell(row, uuid).className = "mono";
  return row;
}

async function loadTasks() {
  const error = $("tasks-error");
  let tasks;
  try {
    tasks = await getJson(`api/tasks?${taskQuery()}`);
    error.hidden = true;
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
    return;
  }
  const body = $("tasks-body");
  body.replaceChildren();
  shown.clear();
  for (const [uuid, task] of Object.entries(tasks)) {
    const row = taskRow(uuid, task);
    shown.set(uuid, row);
    body.appendChild(row);
  }
}

async function openTask(uuid) {
  let task;
  try { task = await getJson(`api/task/info/${encodeURIComponent(uuid)}`); }
  catch (e) { return status(e.message); }
  const panel = $("task");
  panel.hidden = false;
  $("h-task").textContent = `Task ${task.name || ""} ${uuid}`;
  const facts = $("task-facts");
  facts.replaceChildren();
  for (const key of ["state", "worker", "args", "kwargs", "result", "exception", "retries",
                     "eta", "expires", "runtime", "routing_key", "root_id", "parent_id"]) {
    let value = task[key];
    if (value === null || value === undefined) continue;
    if (key === "runtime" && typeof value === "number") value = `${value.toFixed(6)} s`;
    facts.appendChild(el("dt", key));
    facts.appendChild(el("dd", typeof value === "object" ? JSON.stringify(value) : value));
  }
  const timeline = $("task-timeline");
  timeline.replaceChildren();
  const steps = TIMELINE.filter((k) => typeof task[k] === "number")
    .sort((a, b) => task[a] - task[b]);
  for (const step of steps) {
    const item = el("li");
    item.appendChild(el("strong", step));
    item.appendChild(document.createTextNode(` ${when(task[step])}`));
    timeline.appendChild(item);
  }
  $("task-traceback").textContent = task.traceback || "None";
  $("h-task").focus();
}

// A task event: the row is updated in place, or added at the top when nothing filters.
// Celery's precedence of states: a late event never moves a task back.
const PRECEDENCE = ["PENDING", "RECEIVED", "STARTED", "RETRY", "REJECTED", "REVOKED",
                    "FAILURE", "SUCCESS"];
const rank = (state) => PRECEDENCE.indexOf(state);
const KNOWN = new Set(PRECEDENCE);

function onTask(event) {
  if (current !== "tasks") return;
  const row = shown.get(event.uuid);
  const state = STATE_OF[event.event];
  // task-sent comes from the client, not from a worker.
  const worker = event.event === "task-sent" ? null : event.worker;
  if (row) {
    const cells = row.children;
    const was = cells[1].textContent;
    if (state && (rank(state) >= rank(was) || !KNOWN.has(was))) {
      cells[1].textContent = state;
      cells[1].className = state;
    }
    if (worker) cells[2].textContent = worker;
    if (typeof event.runtime === "number") cells[4].textContent = event.runtime.toFixed(3);
  } else if (!filtered()) {
    const added = taskRow(event.uuid, {
      name: event.name, state, worker, received: event.received,
      runtime: event.runtime,
    });
    shown.set(event.uuid, added);
    $("tasks-body").prepend(added);
    while (shown.size > 100) {
      const last = $("tasks-body").lastElementChild;
      if (!last) break;
      shown.delete(last.dataset.uuid);
      last.remove();
    }
  }
}

// ---- queues ----

async function loadQueues() {
  let data;
  try { data = await getJson("api/broker/queues"); } catch (e) { return status(e.message); }
  $("queues-transport").textContent = `Transport: ${data.transport}` +
    (data.management_api && data.management_api.error
      ? ` (management API: ${data.management_api.error})` : "");
  const body = $("queues-body");
  body.replaceChildren();
  for (const q of data.queues) {
    const row = el("tr");
    const name = el("th", q.name);
    name.scope = "row";
    row.appendChild(name);
    if (q.error) {
      const td = cell(row, q.error, false);
      td.colSpan = 8;
      td.className = "error";
      body.appendChild(row);
      continue;
    }
    cell(row, q.ready, true);
    cell(row, q.unacked, true);
    cell(row, q.consumers, true);
    const oldest = q.oldest_message_age === null ? null
      : `${age(q.oldest_message_age)}${q.oldest_message_age_source === "observed" ? " (at least)" : ""}`;
    cell(row, oldest);
    cell(row, q.publish_rate === null ? null : q.publish_rate.toFixed(1), true);
    cell(row, q.deliver_rate === null ? null : q.deliver_rate.toFixed(1), true);
    cell(row, q.dead_letter_queue ? `${q.dead_letter_queue.ready} in ${q.dead_letter_queue.name}` : "none");
    cell(row, q.workers.length ? q.workers.join(", ") : null);
    body.appendChild(row);
  }
  const notes = $("queues-unreported");
  notes.replaceChildren();
  for (const [what, why] of Object.entries(data.unreported || {})) {
    const item = el("li");
    item.appendChild(el("strong", what.replace(/_/g, " ")));
    item.appendChild(document.createTextNode(`: ${why}`));
    notes.appendChild(item);
  }
}

// ---- charts ----

function draw(canvas, series, lines, summary) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const style = getComputedStyle(document.documentElement);
  ctx.clearRect(0, 0, width, height);
  const values = lines.flatMap((l) => series[l.key].filter((v) => typeof v === "number"));
  const top = Math.max(1e-9, ...values);
  const n = series.seconds.length;
  const x = (i) => 40 + (i * (width - 50)) / Math.max(1, n - 1);
  const y = (v) => height - 20 - (v / top) * (height - 40);
  ctx.strokeStyle = style.getPropertyValue("--line").trim();
  ctx.strokeRect(40, 20, width - 50, height - 40);
  ctx.fillStyle = style.getPropertyValue("--muted").trim();
  ctx.font = "12px system-ui";
  ctx.fillText(top.toPrecision(3), 2, 24);
  ctx.fillText("0", 28, height - 20);
  let legend = 50;
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.beginPath();
    let pen = false;
    series[line.key].forEach((v, i) => {
      if (typeof v !== "number") { pen = false; return; }
      if (pen) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
      pen = true;
    });
    ctx.stroke();
    ctx.fillStyle = line.color;
    ctx.fillText(line.label, legend, 14);
    legend += ctx.measureText(line.label).width + 20;
  }
  summary.textContent = lines.map((l) => {
    const xs = series[l.key].filter((v) => typeof v === "number");
    const total = xs.reduce((a, b) => a + b, 0);
    return l.total ? `${l.label}: ${total} in ten minutes`
      : `${l.label}: ${xs.length ? (total / xs.length).toFixed(3) + " s on average" : "none"}`;
  }).join("; ") + ".";
}

async function loadCharts() {
  let series;
  try { series = await getJson("api/stats/series"); } catch (e) { return status(e.message); }
  draw($("chart-throughput"), series, [
    { key: "received", label: "received", color: "#0969da", total: true },
    { key: "succeeded", label: "succeeded", color: "#1a7f37", total: true },
    { key: "failed", label: "failed", color: "#cf222e", total: true },
  ], $("throughput-summary"));
  draw($("chart-latency"), series, [
    { key: "runtime", label: "runtime", color: "#8250df" },
    { key: "wait", label: "wait", color: "#bc4c00" },
  ], $("latency-summary"));
}

// ---- live ----

function status(text) { $("link").textContent = text; }

let lost = false;
function listen() {
  const source = new EventSource(api("api/live"));
  source.addEventListener("hello", () => {
    status("Live");
    // What happened while the stream was down.
    if (lost) { lost = false; refresh(); }
  });
  source.addEventListener("task", (e) => onTask(JSON.parse(e.data)));
  source.addEventListener("worker", () => { if (current === "workers") scheduleWorkers(); });
  source.addEventListener("lagged", () => refresh());
  source.onerror = () => {
    lost = true;
    if (source.readyState === EventSource.CLOSED) {
      status("Live updates are off (refused); refreshing every 5 s");
      setTimeout(listen, 30000);
    } else {
      status("Reconnecting…");
    }
  };
}

let workersTimer = null;
function scheduleWorkers() {
  if (workersTimer) return;
  workersTimer = setTimeout(() => { workersTimer = null; loadWorkers(); }, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("task-filters").addEventListener("submit", (e) => { e.preventDefault(); loadTasks(); });
  window.addEventListener("hashchange", () => {
    const view = location.hash.slice(1);
    if (VIEWS.includes(view)) show(view, true);
  });
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    $("main").focus();
  });
  show(location.hash.slice(1) || "workers");
  listen();
  setInterval(() => { if (current !== "tasks") refresh(); }, 5000);
});
