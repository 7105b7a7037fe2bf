// The runs page: every run, newest first, kept live by run.* events; the header by those and alert.* events.

import {
  LiveConnection, apiUrl, every, formatDuration, formatWhen, getJSON, h, progressPercent, statusLabel,
} from "./common.js";
import { displayName } from "./graph.js";
import { header } from "./header.js";
import { RUN_ENDED, RUN_STARTED, RUN_UPDATED, STALLED, STATUS_OK, STATUS_RUNNING } from "./wire.js";

const RUN_TYPES = [RUN_STARTED, RUN_UPDATED, RUN_ENDED];
const STREAM_TYPES = ["run", "alert"]; // type prefixes: every run.* and alert.* event
const LISTED = new Set([STATUS_RUNNING, STALLED]); // filters the server lists (beyond the newest PAGE_SIZE runs)
const PAGE_SIZE = 200;

const runs = new Map(); // trace id -> run summary
const rows = new Map(); // trace id -> <tr>
const tbody = document.querySelector("#runs tbody");
const form = document.getElementById("run-filters");
const summary = document.getElementById("runs-summary");
let total = 0;

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

function matches(run) {
  const f = new FormData(form);
  const status = f.get("status");
  const name = String(f.get("name") || "").trim().toLowerCase();
  const service = String(f.get("service") || "").trim().toLowerCase();
  if (status === STALLED) {
    if (!stalledCount(run)) return false;
  } else if (status && run.status !== status) {
    return false;
  }
  if (name && !`${run.name} ${run.otelflow_run_id || ""} ${run.trace_id}`.toLowerCase().includes(name)) return false;
  if (service && !String(run.service || "").toLowerCase().includes(service)) return false;
  return true;
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
    h("td", { class: "col-started" }),
    h("td", { class: "num col-duration" }),
  );
  // the whole row opens the run; the link stays the keyboard target
  row.addEventListener("click", (e) => {
    if (e.target.closest("a")) return;
    location.href = link.href;
  });
  return row;
}

function updateRow(row, run) {
  const [nameCell, serviceCell, statusCell, progressCell, agentsCell, failuresCell, startedCell] = row.children;
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
  failuresCell.textContent = String(run.error_count || 0);
  failuresCell.classList.toggle("has-errors", (run.error_count || 0) > 0);
  startedCell.textContent = formatWhen(startMs(run));
  tickRow(row, run);
}

function tickRow(row, run) {
  row.lastElementChild.textContent = formatDuration(durationMs(run));
}

function render() {
  const ordered = [...runs.values()].sort((a, b) => startMs(b) - startMs(a));
  let shown = 0;
  let previous = null;
  for (const run of ordered) {
    let row = rows.get(run.trace_id);
    if (!row) {
      row = buildRow(run);
      rows.set(run.trace_id, row);
    }
    updateRow(row, run);
    const visible = matches(run);
    row.hidden = !visible;
    if (visible) shown++;
    // keep DOM order = sorted order without rebuilding
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (expected !== row) tbody.insertBefore(row, expected);
    previous = row;
  }
  const running = ordered.filter((r) => r.status === STATUS_RUNNING).length;
  const stalled = ordered.filter((r) => stalledCount(r) > 0).length;
  summary.textContent = `${runs.size} run${runs.size === 1 ? "" : "s"}${total > runs.size ? ` of ${total}` : ""} · ${running} running${stalled ? ` · ${stalled} stalled` : ""} · ${shown} shown`;
  document.getElementById("runs-empty").hidden = runs.size > 0;
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

async function loadSnapshot() {
  const data = await getJSON("/api/runs", { limit: PAGE_SIZE });
  runs.clear();
  for (const run of data.runs) runs.set(run.trace_id, run);
  total = data.total;
  scheduleRender();
}

/**
 * The runs of a status the server lists (running, stalled now) that the newest PAGE_SIZE may miss. Runs the page
 * knows already are kept live by the stream; only the others are taken.
 */
async function loadListed() {
  const status = String(new FormData(form).get("status") || "");
  if (!LISTED.has(status)) return;
  try {
    const data = await getJSON("/api/runs", { status, limit: PAGE_SIZE });
    for (const run of data.runs) if (!runs.has(run.trace_id)) runs.set(run.trace_id, run);
    scheduleRender();
  } catch (err) {
    summary.textContent = `Could not load ${status} runs: ${err.message}`;
  }
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
  const filters = { type: STREAM_TYPES.join(",") };
  try {
    const health = await getJSON("/healthz");
    await loadSnapshot();
    await loadListed();
    connection = new LiveConnection({ filters, onEvent, onReset: resync, lastEventId: health.last_event_id, badge });
  } catch (err) {
    summary.textContent = `Could not load runs: ${err.message}`;
    connection = new LiveConnection({ filters, onEvent, onReset: resync, badge });
  }
  header.follow({ complete: true });
  connection.start();
  every(500, () => {
    for (const [id, run] of runs) if (run.status === STATUS_RUNNING) tickRow(rows.get(id), run);
  });
}

main();
