// The stats page: per agent/node/tool name, count, p50/p95 duration, error rate and cancelled count, with a small
// duration chart (the histogram of the period when the server sends one, p50/p95 bars otherwise). Sortable by any
// column; kept current by the stream (a refetch after run.ended / span.ended, at most one a second).

import { LiveConnection, clear, formatDuration, getJSON, h, svg } from "./common.js";
import { displayName } from "./graph.js";
import { RUN_ENDED, SPAN_ENDED } from "./wire.js";

const MIN_GAP_MS = 1000; // refetches follow events at most this often
const SETTLE_MS = 1500; // and once more this long after the last event (the history stores spans a moment later)
const CHART_W = 120;
const CHART_H = 24;

const table = document.getElementById("stats");
const tbody = table.querySelector("tbody");
const since = document.getElementById("stats-since");
const status = document.getElementById("stats-status");

/** How each sortable column (th[data-sort]) orders rows, and which way it sorts first. */
const SORTS = {
  name: { value: (s) => displayName({ name: s.name, attributes: {} }).toLowerCase(), first: "ascending" },
  kind: { value: (s) => String(s.kind || ""), first: "ascending" },
  count: { value: (s) => s.count || 0, first: "descending" },
  p50: { value: (s) => s.p50_ms ?? -1, first: "descending" },
  p95: { value: (s) => s.p95_ms ?? -1, first: "descending" },
  errors: { value: (s) => s.error_rate || 0, first: "descending" },
  cancelled: { value: (s) => s.cancelled ?? -1, first: "descending" },
};
let sort = { key: "count", direction: "descending" };
let stats = [];

function compare(a, b) {
  const { value } = SORTS[sort.key];
  const va = value(a);
  const vb = value(b);
  const order = typeof va === "string" ? va.localeCompare(vb) : va - vb;
  const byName = a.name.localeCompare(b.name) || String(a.kind).localeCompare(String(b.kind));
  return (sort.direction === "ascending" ? order : -order) || byName;
}

function percent(rate) {
  return `${(100 * rate).toFixed(rate > 0 && rate < 0.1 ? 1 : 0)}%`;
}

/** The histogram of a row's durations (`{edges_ms, counts}`) as tiny bars, or null when it has none. */
function histogramChart(hist) {
  if (!hist || !Array.isArray(hist.counts) || !Array.isArray(hist.edges_ms)) return null;
  const counts = hist.counts.map((c) => Math.max(0, Number(c) || 0));
  if (!counts.length || hist.edges_ms.length !== counts.length + 1) return null;
  const max = Math.max(1, ...counts);
  const width = CHART_W / counts.length;
  const chart = svg("svg", {
    class: "hist", viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `durations from ${formatDuration(hist.edges_ms[0])} to ${formatDuration(hist.edges_ms[counts.length])}`,
  });
  counts.forEach((count, i) => {
    const height = count ? Math.max(1.5, (CHART_H * count) / max) : 0;
    const bar = svg("rect", {
      class: count ? "hist-bar" : "hist-bar hist-empty", x: i * width + 0.5, width: Math.max(0.5, width - 1),
      y: CHART_H - Math.max(height, 0.75), height: Math.max(height, 0.75), "data-count": count,
    });
    const title = svg("title");
    title.textContent = `${formatDuration(hist.edges_ms[i])}–${formatDuration(hist.edges_ms[i + 1])}: ${count}`;
    bar.append(title);
    chart.append(bar);
  });
  const range = `${formatDuration(hist.edges_ms[0])} – ${formatDuration(hist.edges_ms[counts.length])}`;
  return h("div", { class: "chart chart-hist", title: "durations in the period, short to long (log scale)" },
    chart, h("span", { class: "hist-range", text: range }));
}

function barsChart(s, max) {
  const p50 = h("div", { class: "bar bar-p50" });
  const p95 = h("div", { class: "bar bar-p95" });
  p50.style.width = `${(100 * (s.p50_ms || 0)) / max}%`;
  p95.style.width = `${(100 * (s.p95_ms || 0)) / max}%`;
  return h("div", { class: "chart bars", role: "img", "aria-label": `p50 ${formatDuration(s.p50_ms)}, p95 ${formatDuration(s.p95_ms)}` }, p95, p50);
}

function render() {
  const rows = stats.slice().sort(compare);
  const max = Math.max(1e-9, ...rows.map((s) => s.p95_ms || 0));
  clear(tbody);
  for (const s of rows) {
    const rate = s.error_rate || 0;
    const hasCancelled = typeof s.cancelled === "number";
    tbody.append(h("tr", { "data-name": s.name, "data-kind": s.kind },
      h("td", { class: "col-name", text: displayName({ name: s.name, attributes: {} }), title: s.name }),
      h("td", { class: "col-kind", "data-label": "Kind" }, h("span", { class: "kind-tag", "data-kind": s.kind, text: s.kind })),
      h("td", { class: "num col-count", "data-label": "Count", text: String(s.count) }),
      h("td", { class: "num col-p50", "data-label": "p50", text: formatDuration(s.p50_ms) }),
      h("td", { class: "num col-p95", "data-label": "p95", text: formatDuration(s.p95_ms) }),
      h("td", { class: `num col-errors${rate > 0 ? " has-errors" : ""}`, "data-label": "Errors", text: percent(rate) }),
      h("td", {
        class: `num col-cancelled${s.cancelled > 0 ? " has-cancelled" : ""}`, "data-label": "Cancelled",
        text: hasCancelled ? String(s.cancelled) : "–", title: hasCancelled ? "" : "not counted by this viewer",
      }),
      h("td", { class: "col-chart", "data-label": "Durations" }, histogramChart(s.histogram) || barsChart(s, max))));
  }
  for (const th of table.querySelectorAll("th[data-sort]")) {
    if (th.dataset.sort === sort.key) th.setAttribute("aria-sort", sort.direction);
    else th.removeAttribute("aria-sort");
  }
  table.dataset.sort = `${sort.key} ${sort.direction}`;
  document.getElementById("stats-empty").hidden = rows.length > 0;
}

let requests = 0; // only the newest answer is shown
let lastLoad = 0;

async function load() {
  lastLoad = Date.now();
  const request = ++requests;
  try {
    const data = await getJSON("/api/stats", { since: since.value });
    if (request !== requests) return;
    stats = data.stats;
    status.textContent = `Updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
    render();
  } catch (err) {
    if (request !== requests) return;
    stats = [];
    clear(tbody);
    tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted", text: `Could not load stats: ${err.message}` })));
    status.textContent = "";
  }
}

let throttle = null;
let settle = null;
/** A refetch for an event of the stream: at most one a second, and one more once the events stop. */
function soon() {
  clearTimeout(settle);
  settle = setTimeout(load, SETTLE_MS);
  if (throttle !== null) return;
  throttle = setTimeout(() => {
    throttle = null;
    load();
  }, Math.max(0, lastLoad + MIN_GAP_MS - Date.now()));
}

function sortBy(key) {
  if (sort.key === key) sort = { key, direction: sort.direction === "ascending" ? "descending" : "ascending" };
  else sort = { key, direction: SORTS[key].first };
  render();
}

async function main() {
  for (const th of table.querySelectorAll("th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => sortBy(th.dataset.sort));
  }
  document.getElementById("stats-refresh").addEventListener("click", load);
  since.addEventListener("change", load);
  const filters = { type: [RUN_ENDED, SPAN_ENDED].join(",") };
  let lastEventId = null;
  try {
    lastEventId = (await getJSON("/healthz")).last_event_id;
  } catch { /* the badge tells */ }
  const connection = new LiveConnection({
    filters, lastEventId, onEvent: soon, onReset: load, badge: document.getElementById("conn"),
  });
  await load();
  connection.start();
}

main();
