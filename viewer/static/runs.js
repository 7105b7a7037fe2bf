// The runs page: every run, newest first, kept live by run.* events; the header by those and alert.* events.
// The newest PAGE_SIZE runs come first; older ones page in (keyset cursor) when the end of the list scrolls into
// view, or with the "Load older runs" button.

import {
  LiveConnection, apiUrl, every, formatDuration, formatWhen, getJSON, h, progressPercent, statusLabel,
} from "./common.js";
import { displayName } from "./graph.js";
import { header } from "./header.js";
import { costTitle, formatCost, formatTokens, tokensTitle } from "./usage.js";
import { RUN_ENDED, RUN_STARTED, RUN_UPDATED, STALLED, STATUS_OK, STATUS_RUNNING } from "./wire.js";

const RUN_TYPES = [RUN_STARTED, RUN_UPDATED, RUN_ENDED];
const STREAM_TYPES = ["run", "alert"]; // type prefixes: every run.* and alert.* event
const PAGE_SIZE = 100;
const ALL = ""; // the list without a status filter
const DAY_MS = 24 * 3600 * 1000;

const runs = new Map(); // trace id -> run summary
const rows = new Map(); // trace id -> <tr>
const tbody = document.querySelector("#runs tbody");
const form = document.getElementById("run-filters");
const summary = document.getElementById("runs-summary");
const more = document.getElementById("runs-more");
const moreButton = document.getElementById("runs-older");
const moreText = document.getElementById("runs-more-text");
let total = 0;
// per status filter ("" for none): the cursor of its next older page, null when there is none (or not read yet)
const cursors = new Map();
let loadingOlder = false;

function startMs(run) {
  return run.start_time_ns ? run.start_time_ns / 1e6 : Date.parse(run.start_time || "") || 0;
}

function durationMs(run) {
  if (run.duration_ms !== null && run.duration_ms !== undefined) return run.duration_ms;
  if (run.status === STATUS_RUNNING) return Date.now() - startMs(run);
  return null;
}

function percentOf(run) {
  return progressPercent(run.progress) ?? (run.status === STATUS_OK ? 100 : null);
}

function stalledCount(run) {
  return run.status === STATUS_RUNNING ? run.stalled_count || 0 : 0;
}

function filters() {
  const f = new FormData(form);
  return {
    status: String(f.get("status") || ""),
    name: String(f.get("name") || "").trim().toLowerCase(),
    service: String(f.get("service") || "").trim().toLowerCase(),
  };
}

function matches(run, { status, name, service }) {
  if (status === STALLED) {
    if (!stalledCount(run)) return false;
  } else if (status && run.status !== status) {
    return false;
  }
  if (name && !`${run.name} ${run.otelflow_run_id || ""} ${run.trace_id}`.toLowerCase().includes(name)) return false;
  if (service && !String(run.service || "").toLowerCase().includes(service)) return false;
  return true;
}

/** Newest first; while a filter is active, the runs running now come before the rest. */
function ordering(filtered) {
  return (a, b) => {
    if (filtered) {
      const running = (b.status === STATUS_RUNNING) - (a.status === STATUS_RUNNING);
      if (running) return running;
    }
    return startMs(b) - startMs(a) || (a.trace_id < b.trace_id ? 1 : -1);
  };
}

/** Local midnight of the day of `ms`. */
function dayOf(ms) {
  const d = new Date(ms);
  return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
}

/** The start as the list says it: the time of day, with the date once the listed runs span more than one day. */
function formatStart(ms, withDate) {
  if (!ms) return "–";
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour12: false });
  if (!withDate) return time;
  const options = { month: "short", day: "numeric" };
  if (d.getFullYear() !== new Date().getFullYear()) options.year = "numeric";
  return `${d.toLocaleDateString([], options)} ${time}`;
}

function runHref(run) {
  return apiUrl(`/runs/${encodeURIComponent(run.trace_id)}`).pathname + (apiUrl("/").search || "");
}

function buildRow(run) {
  const link = h("a", { href: runHref(run), class: "run-link" });
  const fill = h("div", { class: "progress-fill" });
  const row = h("tr", { "data-run-id": run.trace_id },
    h("td", { class: "col-name" }, link, h("div", { class: "run-sub" })),
    h("td", { class: "col-service" }),
    h("td", { class: "col-status" }, h("span", { class: "chip" }), h("span", { class: "stall-badge", hidden: true })),
    h("td", { class: "col-progress" },
      h("div", { class: "progress progress-small", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill),
      h("span", { class: "progress-text" })),
    h("td", { class: "num col-agents" }),
    h("td", { class: "num col-failures" }),
    h("td", { class: "num col-tokens" }),
    h("td", { class: "num col-cost" }),
    h("td", { class: "col-started" }, h("time", {})),
    h("td", { class: "num col-duration" }),
  );
  // the whole row opens the run; the link stays the keyboard target
  row.addEventListener("click", (e) => {
    if (e.target.closest("a")) return;
    location.href = link.href;
  });
  return row;
}

function updateRow(row, run, withDate) {
  const [nameCell, serviceCell, statusCell, progressCell, agentsCell, failuresCell] = row.children;
  const startedCell = row.querySelector(".col-started");
  const link = nameCell.querySelector("a");
  link.textContent = run.name ? displayName({ name: run.name, attributes: {} }) : run.trace_id;
  nameCell.querySelector(".run-sub").textContent = run.otelflow_run_id ? `${run.otelflow_run_id} · ${run.trace_id.slice(0, 12)}…` : `${run.trace_id.slice(0, 12)}…`;
  serviceCell.textContent = run.service || "–";
  const chip = statusCell.firstChild;
  chip.dataset.status = run.status;
  chip.textContent = statusLabel(run.status);
  row.dataset.status = run.status;
  const stalled = stalledCount(run);
  const badge = statusCell.lastChild;
  badge.hidden = stalled === 0;
  badge.textContent = `${stalled} stalled`;
  badge.title = stalled ? `${stalled} span${stalled === 1 ? "" : "s"} of this run stalled now` : "";
  row.dataset.stalled = String(stalled);
  const pct = percentOf(run);
  const bar = progressCell.querySelector(".progress");
  bar.dataset.status = run.status;
  bar.setAttribute("aria-valuenow", pct === null ? 0 : Math.round(pct));
  bar.firstChild.style.width = `${pct === null ? 0 : pct}%`;
  const message = run.progress && run.progress.message ? ` ${run.progress.message}` : "";
  progressCell.querySelector(".progress-text").textContent = pct === null ? "–" : `${Math.round(pct)}%${message}`;
  agentsCell.textContent = String(run.agent_count || 0);
  const failures = run.error_count || 0;
  failuresCell.textContent = String(failures);
  failuresCell.classList.toggle("has-errors", failures > 0);
  failuresCell.title = `${failures} failed span${failures === 1 ? "" : "s"}`;
  updateUsage(row, run.llm);
  const start = startMs(run);
  const time = startedCell.firstChild;
  time.textContent = formatStart(start, withDate);
  if (start) {
    time.dateTime = new Date(start).toISOString();
    time.title = formatWhen(start);
  }
  tickRow(row, run);
}

/** The tokens and cost of the run's model calls that ended (`run.llm`), "–" without any. */
function updateUsage(row, llm) {
  const tokens = row.querySelector(".col-tokens");
  const cost = row.querySelector(".col-cost");
  const calls = llm && llm.calls ? llm.calls : 0;
  row.toggleAttribute("data-llm", calls > 0);
  if (!calls) {
    tokens.textContent = cost.textContent = "–";
    tokens.title = cost.title = "no model calls";
    return;
  }
  tokens.textContent = `${formatTokens(llm.input_tokens || 0)} → ${formatTokens(llm.output_tokens || 0)}`;
  tokens.title = tokensTitle(llm.input_tokens, llm.output_tokens, calls);
  cost.textContent = formatCost(llm.cost_usd ?? null, llm.cost_estimate !== false);
  cost.title = costTitle(llm.cost_usd ?? null, llm.unpriced_calls || 0);
}

/** The duration cell of a row built by render(); a run the page has no row for yet is left to the next render. */
function tickRow(row, run) {
  const cell = row && row.querySelector(".col-duration");
  if (cell) cell.textContent = formatDuration(durationMs(run));
}

function render() {
  const wanted = filters();
  const filtered = Boolean(wanted.status || wanted.name || wanted.service);
  const ordered = [...runs.values()].sort(ordering(filtered));
  let first = Infinity;
  let last = -Infinity;
  for (const run of ordered) {
    const start = startMs(run);
    if (!start) continue;
    first = Math.min(first, start);
    last = Math.max(last, start);
  }
  // more than one day: the first and last start are on different days, or a whole day apart
  const withDate = last - first >= DAY_MS || (first <= last && dayOf(first) !== dayOf(last));
  tbody.dataset.dates = String(withDate);
  let shown = 0;
  let previous = null;
  for (const run of ordered) {
    let row = rows.get(run.trace_id);
    if (!row) {
      row = buildRow(run);
      rows.set(run.trace_id, row);
    }
    updateRow(row, run, withDate);
    const visible = matches(run, wanted);
    row.hidden = !visible;
    if (visible) shown++;
    // keep DOM order = sorted order without rebuilding
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (expected !== row) tbody.insertBefore(row, expected);
    previous = row;
  }
  for (const [id, row] of rows) {
    if (runs.has(id)) continue;
    row.remove();
    rows.delete(id);
  }
  const running = ordered.filter((r) => r.status === STATUS_RUNNING).length;
  const stalled = ordered.filter((r) => stalledCount(r) > 0).length;
  summary.textContent = `${runs.size} run${runs.size === 1 ? "" : "s"}${total > runs.size ? ` of ${total}` : ""} · ${running} running${stalled ? ` · ${stalled} stalled` : ""} · ${shown} shown`;
  document.getElementById("runs-empty").hidden = runs.size > 0;
  renderMore();
}

let scheduled = false;
function scheduleRender() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    render();
  });
}

/** The cursor list of the current status filter: "" (all runs) or a status the server lists itself. */
function listKey() {
  const status = filters().status;
  return status === STALLED ? null : status; // stalled is a live flag: the server lists all of them at once
}

function renderMore() {
  const key = listKey();
  const cursor = key === null ? null : cursors.get(key);
  const state = loadingOlder ? "loading" : cursor ? "more" : "end";
  more.dataset.state = state;
  moreButton.hidden = state === "end";
  moreButton.disabled = state === "loading";
  moreText.textContent = state === "loading" ? "Loading older runs…" : state === "end" && runs.size ? "No older runs." : "";
}

/** Adds the runs of a page the page does not know (the stream keeps those it knows live); returns the new ones. */
function keep(data, key) {
  const added = [];
  for (const run of data.runs) {
    if (runs.has(run.trace_id)) continue;
    runs.set(run.trace_id, run);
    added.push(run);
  }
  if (key !== null) cursors.set(key, data.next || null);
  return added;
}

async function loadSnapshot() {
  const data = await getJSON("/api/runs", { limit: PAGE_SIZE });
  runs.clear();
  cursors.clear();
  keep(data, ALL);
  total = data.total;
  scheduleRender();
}

/** The newest runs of the chosen status, which the newest PAGE_SIZE of all may miss. */
async function loadListed() {
  const status = filters().status;
  if (!status || cursors.has(status)) return;
  try {
    keep(await getJSON("/api/runs", { status, limit: PAGE_SIZE }), listKey());
    scheduleRender();
  } catch (err) {
    summary.textContent = `Could not load ${statusLabel(status)} runs: ${err.message}`;
  }
}

/** The next older page of the current list; returns whether it brought runs the filters show. */
async function loadOlder() {
  const key = listKey();
  const cursor = key === null ? null : cursors.get(key);
  if (loadingOlder || !cursor) return false;
  loadingOlder = true;
  renderMore();
  let added = [];
  try {
    added = keep(await getJSON("/api/runs", { status: key, limit: PAGE_SIZE, after: cursor }), key);
  } catch (err) {
    moreText.textContent = `Could not load older runs: ${err.message}`;
    return false;
  } finally {
    loadingOlder = false;
  }
  render();
  const wanted = filters();
  return added.some((run) => matches(run, wanted));
}

/** Whether the end of the list (or nearly) is on the screen. */
function endInView() {
  const box = more.getBoundingClientRect();
  return box.bottom > 0 && box.top < window.innerHeight + 300;
}

/** Loads older pages while the end of the list is in view: scrolling down pages in the older runs. */
function followEnd() {
  let pumping = false;
  const pump = async () => {
    if (pumping) return;
    pumping = true;
    try {
      while (endInView() && (await loadOlder())) { /* the page grew: is its end still in view? */ }
    } finally {
      pumping = false;
    }
  };
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) pump();
  }, { rootMargin: "0px 0px 300px 0px" }).observe(more);
  moreButton.addEventListener("click", () => loadOlder());
}

function onEvent(envelope) {
  header.onEvent(envelope);
  if (!RUN_TYPES.includes(envelope.type) || !envelope.run) return;
  const previous = runs.get(envelope.run.trace_id);
  if (!previous) total++;
  runs.set(envelope.run.trace_id, envelope.run);
  scheduleRender();
}

async function main() {
  // `/?status=running` (the header's links) opens the page filtered
  const wanted = new URLSearchParams(location.search).get("status");
  const select = form.elements.namedItem("status");
  if (wanted && [...select.options].some((o) => o.value === wanted)) select.value = wanted;
  form.addEventListener("input", scheduleRender);
  select.addEventListener("change", loadListed);
  form.addEventListener("submit", (e) => e.preventDefault());
  const badge = document.getElementById("conn");
  let connection;
  const resync = async () => {
    header.refresh();
    try {
      await loadSnapshot();
      await loadListed();
    } catch (err) {
      summary.textContent = `Could not load runs: ${err.message}`;
    }
  };
  const streamFilters = { type: STREAM_TYPES.join(",") };
  try {
    const health = await getJSON("/healthz");
    await loadSnapshot();
    await loadListed();
    connection = new LiveConnection({ filters: streamFilters, onEvent, onReset: resync, lastEventId: health.last_event_id, badge });
  } catch (err) {
    summary.textContent = `Could not load runs: ${err.message}`;
    connection = new LiveConnection({ filters: streamFilters, onEvent, onReset: resync, badge });
  }
  header.follow({ complete: true });
  connection.start();
  followEnd();
  every(500, () => {
    for (const [id, row] of rows) {
      const run = runs.get(id);
      if (run && run.status === STATUS_RUNNING) tickRow(row, run);
    }
  });
}

main();
