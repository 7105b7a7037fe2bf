// The stats page: per agent/node/tool name, count, p50/p95 duration, error rate and cancelled count, with a small
// duration chart (the histogram of the period when the server sends one, p50/p95 bars otherwise); and per model,
// calls, tokens, estimated cost, latency, time to first token, error rate and cancelled calls. Both tables sort by
// any column; both are kept current by the stream (a refetch after run.ended / span.ended, at most one a second).

import { LiveConnection, clear, formatDuration, getJSON, h, svg } from "./common.js";
import { displayName } from "./graph.js";
import { costTitle, formatCost, formatExact, formatTokens } from "./usage.js";
import { RUN_ENDED, SPAN_ENDED } from "./wire.js";

const MIN_GAP_MS = 1000; // refetches follow events at most this often
const SETTLE_MS = 1500; // and once more this long after the last event (the history stores spans a moment later)
const CHART_W = 120;
const CHART_H = 24;

const table = document.getElementById("stats");
const tbody = table.querySelector("tbody");
const modelsTable = document.getElementById("models");
const modelsBody = modelsTable.querySelector("tbody");
const since = document.getElementById("stats-since");
const status = document.getElementById("stats-status");

/**
 * The sorting of a table by its th[data-sort] headers: `sorts` says, per header, how it orders rows (`value`, a
 * number or a string) and which way it sorts first; `tie` orders rows of equal value. A click on a header sorts
 * by it (again: the other way) and calls `onChange`; `mark()` tells the headers which one sorts and how.
 */
class TableSort {
  constructor(table, sorts, initial, tie, onChange) {
    this.table = table;
    this.sorts = sorts;
    this.current = { key: initial, direction: sorts[initial].first };
    this.tie = tie;
    for (const th of table.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => {
        this.by(th.dataset.sort);
        onChange();
      });
    }
  }

  by(key) {
    const { current } = this;
    if (current.key === key) this.current = { key, direction: current.direction === "ascending" ? "descending" : "ascending" };
    else this.current = { key, direction: this.sorts[key].first };
  }

  /** `rows` in the current order (a new array). */
  sorted(rows) {
    const { value } = this.sorts[this.current.key];
    const sign = this.current.direction === "ascending" ? 1 : -1;
    return rows.slice().sort((a, b) => {
      const va = value(a);
      const vb = value(b);
      const order = typeof va === "string" ? va.localeCompare(vb) : va - vb;
      return sign * order || this.tie(a, b);
    });
  }

  mark() {
    const { key, direction } = this.current;
    for (const th of this.table.querySelectorAll("th[data-sort]")) {
      if (th.dataset.sort === key) th.setAttribute("aria-sort", direction);
      else th.removeAttribute("aria-sort");
    }
    this.table.dataset.sort = `${key} ${direction}`;
  }
}

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
let stats = [];
const byName = (a, b) => a.name.localeCompare(b.name) || String(a.kind).localeCompare(String(b.kind));
const sort = new TableSort(table, SORTS, "count", byName, () => render());

/** The model of a row of /api/stats/models as the page names it. */
function modelName(m) {
  return m.model || "unknown model";
}

/** How each sortable column of the models table orders rows, and which way it sorts first. */
const MODEL_SORTS = {
  model: { value: (m) => modelName(m).toLowerCase(), first: "ascending" },
  provider: { value: (m) => String(m.provider || "").toLowerCase(), first: "ascending" },
  calls: { value: (m) => m.calls || 0, first: "descending" },
  input: { value: (m) => m.input_tokens || 0, first: "descending" },
  output: { value: (m) => m.output_tokens || 0, first: "descending" },
  cost: { value: (m) => m.cost_usd ?? -1, first: "descending" },
  p50: { value: (m) => m.p50_ms ?? -1, first: "descending" },
  p95: { value: (m) => m.p95_ms ?? -1, first: "descending" },
  ttft50: { value: (m) => m.ttft_p50_ms ?? -1, first: "descending" },
  ttft95: { value: (m) => m.ttft_p95_ms ?? -1, first: "descending" },
  errors: { value: (m) => m.error_rate || 0, first: "descending" },
  cancelled: { value: (m) => m.cancelled || 0, first: "descending" },
};
let models = [];
const byModel = (a, b) => modelName(a).localeCompare(modelName(b)) || String(a.provider || "").localeCompare(String(b.provider || ""));
const modelSort = new TableSort(modelsTable, MODEL_SORTS, "calls", byModel, () => renderModels());

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
  const rows = sort.sorted(stats);
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
  sort.mark();
  document.getElementById("stats-empty").hidden = rows.length > 0;
}

/** A figure cell of the models table (labelled on a phone). */
function figure(name, label, text, title = "") {
  return h("td", { class: `num col-${name}`, "data-label": label, text, title: title || null });
}

function renderModels() {
  const rows = modelSort.sorted(models);
  clear(modelsBody);
  for (const m of rows) {
    const rate = m.error_rate || 0;
    const cancelled = m.cancelled || 0;
    const failures = `${formatExact(m.errors || 0)} of ${formatExact((m.calls || 0) - cancelled)} calls failed`;
    modelsBody.append(h("tr", { "data-model": m.model || "", "data-provider": m.provider || "" },
      h("td", { class: m.model ? "col-name" : "col-name muted", text: modelName(m), title: m.model ? null : "the calls did not say their model" }),
      h("td", { class: "col-provider", text: m.provider || "–" }),
      figure("calls", "Calls", formatExact(m.calls || 0)),
      figure("input", "Tokens in", formatTokens(m.input_tokens || 0), `${formatExact(m.input_tokens || 0)} input tokens`),
      figure("output", "Tokens out", formatTokens(m.output_tokens || 0), `${formatExact(m.output_tokens || 0)} output tokens`),
      figure("cost", "Cost", formatCost(m.cost_usd ?? null, m.cost_estimate !== false), costTitle(m.cost_usd ?? null, m.unpriced_calls || 0)),
      figure("p50", "p50", formatDuration(m.p50_ms)),
      figure("p95", "p95", formatDuration(m.p95_ms)),
      figure("ttft50", "TTFT p50", formatDuration(m.ttft_p50_ms), m.ttft_p50_ms == null ? "no streamed calls" : ""),
      figure("ttft95", "TTFT p95", formatDuration(m.ttft_p95_ms), m.ttft_p95_ms == null ? "no streamed calls" : ""),
      h("td", { class: `num col-errors${rate > 0 ? " has-errors" : ""}`, "data-label": "Errors", text: percent(rate), title: failures }),
      h("td", { class: `num col-cancelled${cancelled > 0 ? " has-cancelled" : ""}`, "data-label": "Cancelled", text: formatExact(cancelled) })));
  }
  modelSort.mark();
  document.getElementById("models-empty").hidden = rows.length > 0;
}

/** A table's body saying why it has no rows. */
function failed(body, columns, what, err) {
  clear(body);
  body.append(h("tr", {}, h("td", { colspan: columns, class: "muted", text: `Could not load ${what}: ${err.message}` })));
}

let requests = 0; // only the newest answer is shown
let lastLoad = 0;

async function load() {
  lastLoad = Date.now();
  const request = ++requests;
  const period = { since: since.value };
  const [names, perModel] = await Promise.allSettled([getJSON("/api/stats", period), getJSON("/api/stats/models", period)]);
  if (request !== requests) return;
  if (names.status === "fulfilled") {
    stats = names.value.stats;
    render();
  } else {
    stats = [];
    failed(tbody, 8, "stats", names.reason);
  }
  if (perModel.status === "fulfilled") {
    models = perModel.value.models;
    renderModels();
  } else {
    models = [];
    document.getElementById("models-empty").hidden = true;
    failed(modelsBody, 12, "the models", perModel.reason);
  }
  const fine = names.status === "fulfilled" && perModel.status === "fulfilled";
  status.textContent = fine ? `Updated ${new Date().toLocaleTimeString([], { hour12: false })}` : "";
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

async function main() {
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
