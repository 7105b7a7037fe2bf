// The run page: snapshot + live events into one state, drawn as graph, timeline, inspector and logs; replay.
// Stalled spans (a live flag: quiet or slow) are marked amber in the graph, the timeline and the inspector.

import {
  LiveConnection, apiUrl, compareIds, every, formatDuration, getJSON, h, parseTime, progressPercent,
  statusLabel,
} from "./common.js";
import { GraphView, PENDING, buildGraph, displayName, graphOwner, markStalls } from "./graph.js";
import { header } from "./header.js";
import { Inspector } from "./inspector.js";
import { TimelineView } from "./timeline.js";
import { costTitle, formatCost, formatTokens, tokensTitle } from "./usage.js";
import {
  DATA_FLOW_FROM, DATA_FLOW_TO, EVENT_DATA_FLOW, EVENT_EXCEPTION, EVENT_LOG, EXCEPTION_MESSAGE, EXCEPTION_TYPE,
  KIND_LLM, KIND_WORKFLOW, LOG_LEVEL, LOG_LEVELS, LOG_MESSAGE, RUN_ENDED, RUN_STARTED, RUN_UPDATED, SPAN_ABANDONED, SPAN_ENDED,
  SPAN_EVENT, SPAN_STALLED, SPAN_STARTED, SPAN_UNSTALLED, SPAN_UPDATED, STATUS_CANCELLED, STATUS_ERROR, STATUS_OK,
  STATUS_RUNNING,
} from "./wire.js";

// LOG_LEVELS lists the levels least severe first (debug, info, warning, error, critical): that is their rank
const [, LEVEL_INFO, LEVEL_WARNING, LEVEL_ERROR] = LOG_LEVELS;
const LEVEL_RANK = new Map(LOG_LEVELS.map((level, i) => [level, i]));
LEVEL_RANK.set("warn", LEVEL_RANK.get(LEVEL_WARNING)); // read as log() reads it
const SPAN_TYPES = new Set([SPAN_STARTED, SPAN_UPDATED, SPAN_ENDED, SPAN_ABANDONED]);
const RUN_TYPES = new Set([RUN_STARTED, RUN_UPDATED, RUN_ENDED]);
const FINAL = new Set([STATUS_OK, STATUS_ERROR, STATUS_CANCELLED]);
const WATCHDOG_MS = 4000; // silence on an open SSE stream before the buffering check
const REPLAY_TICKS = 1000;
const NOT_STALLED = new Map(); // replay shows no stalls: they are a live flag

const $ = (id) => document.getElementById(id);
const runKey = document.body.dataset.run;
const jaegerUrl = document.body.dataset.jaegerUrl;

// ------------------------------------------------------------------------------------------- state

const live = { run: null, spans: new Map(), stalled: new Map() }; // stalled: span id -> its `stalled` object
// Totals of the model calls below each span (span id -> {calls, input_tokens, output_tokens, cost_usd,
// unpriced_calls}): the snapshot's `llm_by_span`, then each model call that ends live added to its ancestors.
let llmTotals = new Map();
let llmCounted = new Set(); // the model calls in those totals
let connection = null;
let resyncing = null; // buffered events while a snapshot is re-fetched
let selectedSpanId = null;
let replay = null; // {spansFinal, progress, start, end, t, playing, speed, flows, logs}
let waiting = false; // the page was opened before its run existed

// What changed since the last frame: a frame draws only that (see render()).
const changed = { structure: true, spans: true, run: true, graph: true, logs: true };
function markAll() {
  for (const key of Object.keys(changed)) changed[key] = true;
}

function mergeSpan(spans, incoming) {
  const current = spans.get(incoming.span_id);
  if (current && FINAL.has(current.status) && !FINAL.has(incoming.status)) return false; // ended spans are final
  spans.set(incoming.span_id, incoming);
  return true;
}

function addSpanEvent(spans, envelope) {
  const span = spans.get(envelope.span_id);
  const ev = envelope.event;
  if (!span) {
    // event before its span: keep a placeholder so the event is not lost
    spans.set(envelope.span_id, {
      trace_id: envelope.trace_id, span_id: envelope.span_id, parent_span_id: null, name: envelope.span_name,
      kind: envelope.span_kind, status: STATUS_RUNNING, start_time: ev.time, end_time: null, duration_ms: null,
      service: "", attributes: {}, events: [ev], error: null, placeholder: true,
    });
    return true;
  }
  const events = span.events || (span.events = []);
  if (events.some((e) => e.name === ev.name && e.time === ev.time)) return false;
  events.push(ev);
  return true;
}

function applyEvent(envelope, { animate = true } = {}) {
  if (RUN_TYPES.has(envelope.type)) {
    live.run = envelope.run;
    changed.run = true;
  } else if (SPAN_TYPES.has(envelope.type)) {
    const id = envelope.span.span_id;
    const existing = live.spans.get(id);
    if (existing && existing.placeholder) envelope.span.events = mergeEvents(envelope.span.events, existing.events);
    if (!mergeSpan(live.spans, envelope.span)) return;
    const span = live.spans.get(id);
    if (!existing || existing.parent_span_id !== span.parent_span_id || existing.start_time !== span.start_time) changed.structure = true;
    if (span.status !== STATUS_RUNNING) {
      live.stalled.delete(id);
      if (span.kind === KIND_LLM) countLlm(span);
    }
    indexLogs(span);
    changed.spans = changed.graph = true;
  } else if (envelope.type === SPAN_STALLED) {
    const span = envelope.span;
    if (!live.spans.has(span.span_id)) {
      mergeSpan(live.spans, span);
      changed.structure = true;
    }
    if (envelope.stalled && live.spans.get(span.span_id).status === STATUS_RUNNING) live.stalled.set(span.span_id, envelope.stalled);
    changed.spans = changed.graph = true;
  } else if (envelope.type === SPAN_UNSTALLED) {
    live.stalled.delete(envelope.span.span_id);
    changed.spans = changed.graph = true;
  } else if (envelope.type === SPAN_EVENT) {
    const known = live.spans.has(envelope.span_id);
    const added = addSpanEvent(live.spans, envelope);
    if (!added) return;
    if (!known) changed.structure = true;
    const span = live.spans.get(envelope.span_id);
    addLogEntry(span, envelope.event);
    changed.spans = changed.graph = true;
    if (animate && envelope.event.name === EVENT_DATA_FLOW) {
      const a = envelope.event.attributes || {};
      graph.particle(String(a[DATA_FLOW_FROM]), String(a[DATA_FLOW_TO]));
    }
  }
}

/** Adds an ended model call to the totals of the spans above it (once): a walk up its ancestors, nothing more. */
function countLlm(span) {
  if (llmCounted.has(span.span_id) || !span.llm) return;
  llmCounted.add(span.span_id);
  const llm = span.llm;
  const priced = Number.isFinite(llm.cost_usd);
  const seen = new Set();
  for (let id = span.parent_span_id; id && !seen.has(id); id = live.spans.get(id)?.parent_span_id) {
    seen.add(id);
    const t = llmTotals.get(id) || { calls: 0, input_tokens: 0, output_tokens: 0, cost_usd: null, unpriced_calls: 0, cost_estimate: true };
    t.calls += 1;
    t.input_tokens += Number.isFinite(llm.input_tokens) ? llm.input_tokens : 0;
    t.output_tokens += Number.isFinite(llm.output_tokens) ? llm.output_tokens : 0;
    if (priced) t.cost_usd = (t.cost_usd || 0) + llm.cost_usd;
    else t.unpriced_calls += 1;
    llmTotals.set(id, { ...t }); // a new object: the inspector compares them
  }
}

function mergeEvents(a = [], b = []) {
  const out = [...a];
  for (const ev of b) if (!out.some((e) => e.name === ev.name && e.time === ev.time)) out.push(ev);
  return out;
}

function onEvent(envelope) {
  header.onEvent(envelope);
  if (resyncing) {
    resyncing.push(envelope);
    return;
  }
  applyEvent(envelope);
  if (!live.run) {
    resync(); // the run's first span: fetch the run itself
    return;
  }
  schedulePacedRender();
}

/** The run's snapshot (`run: null` while the viewer knows nothing of it: the page then waits for it). */
async function loadSnapshot() {
  const data = await getJSON(`/api/runs/${encodeURIComponent(runKey)}`, { wait: 1 });
  waiting = !data.run;
  if (waiting) {
    changed.run = true;
    return data;
  }
  live.run = data.run;
  live.spans = new Map();
  for (const span of data.spans) live.spans.set(span.span_id, span);
  live.stalled = new Map(Object.entries(data.stalled || {}));
  llmTotals = new Map(Object.entries(data.llm_by_span || {}));
  llmCounted = new Set();
  for (const span of live.spans.values()) if (span.kind === KIND_LLM && span.status !== STATUS_RUNNING) llmCounted.add(span.span_id);
  rebuildLogs(live.spans);
  markAll();
  return data;
}

let waitTimer = null;
async function resync() {
  header.refresh();
  if (resyncing) return;
  resyncing = [];
  try {
    const data = await loadSnapshot();
    if (waiting) throw Object.assign(new Error("not known yet"), { status: 404 });
    const buffered = resyncing;
    resyncing = null;
    let last = data.last_event_id;
    for (const envelope of buffered) {
      const order = compareIds(envelope.id, data.last_event_id);
      if (order !== null && order <= 0) continue; // already in the snapshot
      applyEvent(envelope, { animate: false });
      last = envelope.id;
    }
    connection.setLastEventId(last);
  } catch (err) {
    const buffered = resyncing;
    resyncing = null;
    if (err.status === 404 && waiting) {
      // not known yet: keep what the stream said and ask again shortly
      for (const envelope of buffered) applyEvent(envelope, { animate: false });
      clearTimeout(waitTimer);
      waitTimer = setTimeout(() => { if (!live.run) resync(); }, 500);
    } else {
      showProblem(`Could not reload the run: ${err.message}`);
    }
  }
  scheduleRender();
}

// ------------------------------------------------------------------------------------------- views

const graph = new GraphView({
  svgEl: $("graph"), viewEl: $("graph-view"), nodesEl: $("graph-nodes"), edgesEl: $("graph-edges"),
  particlesEl: $("graph-particles"), wrapEl: $("graph-wrap"), emptyEl: $("graph-empty"), onSelect: select,
});
const timeline = new TimelineView({
  container: $("timeline"), rowsEl: $("tl-rows"), nowEl: $("tl-now"), scaleEl: $("timeline-scale"),
  axisEl: $("tl-axis"), ticksEl: $("tl-ticks"), resetEl: $("tl-zoom-reset"), onSelect: select,
});
timeline.onRequest = scheduleRender;
timeline.onTick = schedulePacedRender;
const inspector = new Inspector($("inspector"));
const filterForm = $("span-filters");

function select(spanId) {
  selectedSpanId = spanId;
  graph.select(spanId);
  timeline.select(spanId);
  scheduleRender();
}

function filters() {
  const f = new FormData(filterForm);
  return {
    kind: String(f.get("kind") || ""),
    status: String(f.get("status") || ""),
    name: String(f.get("name") || "").trim().toLowerCase(),
  };
}

/** Whether `span` passes the filters: kind, status, and a name that the shown name or the span name contains. */
function spanMatches(span, f) {
  if (f.kind && span.kind !== f.kind) return false;
  if (f.status && span.status !== f.status) return false;
  if (f.name && !displayName(span).toLowerCase().includes(f.name) && !span.name.toLowerCase().includes(f.name)) return false;
  return true;
}

function nodeMatches(node, f) {
  if (f.kind && node.kind !== f.kind) return false;
  if (f.status && node.status !== f.status) return false;
  if (f.name && !`${node.label} ${node.key}`.toLowerCase().includes(f.name)) return false;
  return true;
}

/** What the views show: the live state, or the replayed state at the scrubbed time. */
function view() {
  if (!replay) {
    return { run: live.run, spans: live.spans, stalled: live.stalled, now: Date.now(), live: live.run?.status === STATUS_RUNNING };
  }
  if (replay.stateAt !== replay.t) {
    replay.state = replayState(replay.t);
    replay.stateAt = replay.t;
  }
  return { run: live.run, spans: replay.state, stalled: NOT_STALLED, now: replay.t, live: false };
}

function rootOf(spans, run) {
  let root = null;
  for (const span of spans.values()) {
    if (!span.parent_span_id || !spans.has(span.parent_span_id)) {
      if (span.kind === KIND_WORKFLOW && (!root || parseTime(span.start_time) < parseTime(root.start_time))) root = span;
    }
  }
  if (!root && run) {
    for (const span of spans.values()) if (!span.parent_span_id) return span;
  }
  return root;
}

// A change is drawn in the next frame. What the stream and the clock change is drawn at most every RENDER_GAP_MS
// (changes in between together): drawing on every frame that brought an event kept the main thread busy with style,
// layout and paint while the page could not draw frames of its own. A first event after a quiet spell is drawn in
// the next frame, and so is what the user does.
const RENDER_GAP_MS = 100;
let renderScheduled = false;
let renderTimer = null;
let renderAt = -Infinity;
function scheduleRender() {
  if (renderTimer) {
    clearTimeout(renderTimer);
    renderTimer = null;
  }
  if (renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(() => {
    renderScheduled = false;
    renderAt = performance.now();
    render();
  });
}

/** scheduleRender for the stream and the clock: no sooner than RENDER_GAP_MS after the last frame drawn. */
function schedulePacedRender() {
  if (renderScheduled || renderTimer) return;
  const wait = replay ? 0 : renderAt + RENDER_GAP_MS - performance.now();
  if (wait <= 0) scheduleRender();
  else renderTimer = setTimeout(scheduleRender, wait);
}

// The graph (buildGraph over every span, a layout when nodes or edges change, then the browser's style and paint
// of its SVG) is the costliest view: while events pour in it is redrawn at most every GRAPH_MIN_GAP_MS, and
// never sooner than GRAPH_COST_FACTOR times its own last cost (script and the frame that paints it), so that it
// takes a bounded share of the main thread; a quiet page redraws it at once (in a task right after the frame).
const GRAPH_COST_FACTOR = 8;
const GRAPH_MIN_GAP_MS = 500;
const GRAPH_MAX_WAIT_MS = 1000;
const GRAPH_DEFER_SPANS = 5000;
let graphAt = -Infinity;
let graphCost = 0;
let graphTimer = null;
let graphDrawn = false; // the first graph is drawn, or deferred for a big run
let graphRendered = false;
let rootCache = null;
let lastFilters = "";

/** The root span of the view (recomputed when the structure changed). */
function rootNow(v) {
  if (changed.structure || !rootCache || rootCache.spans !== v.spans) rootCache = { spans: v.spans, root: rootOf(v.spans, v.run) };
  // which span is the root only changes with the structure; its latest snapshot (e.g. ended) is the map's
  return rootCache.root ? v.spans.get(rootCache.root.span_id) || rootCache.root : null;
}

let graphSeq = 0; // graphs built: a split draw of an older one is dropped
/**
 * Builds and draws the graph of the current view; with `split`, draws it in a task after the one that builds it
 * (for a run of 20,000 spans each takes about 60 ms, together over the 100 ms a page may stop answering).
 */
function drawGraph(split = false) {
  const v = view();
  const f = filters();
  const root = rootNow(v);
  const t0 = performance.now();
  const g = markStalls(buildGraph(v.spans, root, graphOwner(v.spans, root)), v.stalled);
  const built = performance.now() - t0;
  changed.graph = false;
  const seq = ++graphSeq;
  const draw = () => {
    if (seq !== graphSeq) return; // a newer graph was drawn meanwhile
    const t1 = performance.now();
    graph.render(g, (node) => nodeMatches(node, f), v.now);
    graphDrawn = graphRendered = true;
    const at = (graphAt = performance.now());
    graphCost = built + at - t1;
    // its cost includes the browser's style, layout and paint of the changed SVG, in the frame that follows
    requestAnimationFrame(() => setTimeout(() => { if (graphAt === at) graphCost = built + performance.now() - t1; }, 0));
  };
  if (!split) return draw();
  graphTimer = setTimeout(() => {
    graphTimer = null;
    draw();
  }, 0);
}

function render() {
  const v = view();
  const f = filters();
  const filterKey = `${f.kind}|${f.status}|${f.name}`;
  const filtersChanged = filterKey !== lastFilters;
  lastFilters = filterKey;
  if (replay) markAll();
  rootNow(v); // now, while changed.structure still says whether the root may have changed

  if (changed.graph && !graphDrawn && v.spans.size > GRAPH_DEFER_SPANS && !graphTimer) {
    graphTimer = setTimeout(() => { // a big run: the timeline and logs first, the graph in a task of its own
      graphTimer = null;
      graphDrawn = true;
      scheduleRender();
    }, 0);
  } else if (filtersChanged || replay) {
    drawGraph(); // at once, in this frame
  } else if (changed.graph && !graphTimer) {
    // in a task of its own (the frame that paints it is another): the graph's script and the rest of the page's
    // frame in one task kept the page from answering for over 100 ms
    const gap = Math.min(GRAPH_MAX_WAIT_MS, Math.max(GRAPH_MIN_GAP_MS, graphCost * GRAPH_COST_FACTOR));
    const wait = Math.max(0, graphAt + gap - performance.now());
    graphTimer = setTimeout(() => {
      graphTimer = null;
      if (changed.graph) drawGraph(true);
    }, wait);
  }
  // timeline: the rows in view, re-filtered when spans or filters changed
  if (changed.structure || changed.spans || filtersChanged) {
    timeline.replaying = Boolean(replay);
    timeline.update({
      spans: v.spans, visible: (span) => spanMatches(span, f), now: v.now, live: v.live, stalled: v.stalled,
      structure: changed.structure, filtersChanged: true,
      fixedRange: replay ? { start: replay.start, end: replay.end } : null,
    });
  } else {
    timeline.now = v.now;
    timeline.live = v.live;
  }
  timeline.draw();

  inspector.show(selectedSpanId ? v.spans.get(selectedSpanId) || null : null, v.now, stallOf(v, selectedSpanId),
    replay || !selectedSpanId ? null : llmTotals.get(selectedSpanId) || null);
  if (changed.run || changed.structure || replay) renderHeader(v);
  renderLogs(v, f, filtersChanged);
  changed.structure = changed.spans = changed.run = changed.logs = false;
  setData(document.body, "spanCount", String(v.spans.size));
  setData(document.body, "stalledCount", String(v.stalled.size));
  setData(document.body, "runStatus", v.run ? v.run.status : "");
}

/** Sets a data attribute only when it changes (a write to the body's attributes restyles the page). */
function setData(el, key, value) {
  if (el.dataset[key] !== value) el.dataset[key] = value;
}

/** The stall of a running span of the view, or null. */
function stallOf(v, spanId) {
  const span = spanId ? v.spans.get(spanId) : null;
  return span && span.status === STATUS_RUNNING ? v.stalled.get(spanId) || null : null;
}

function renderHeader(v) {
  const run = v.run;
  if (!run) {
    if (waiting) {
      const chip = $("run-status");
      setData(chip, "status", "waiting");
      chip.textContent = `waiting for run ${runKey}…`;
    }
    return;
  }
  const name = run.name ? displayName({ name: run.name, attributes: {} }) : runKey;
  $("run-name").textContent = name;
  document.title = `${name} · otelflow`;
  const status = replay ? replayStatus(v) : run.status;
  const chip = $("run-status");
  chip.dataset.status = status;
  chip.textContent = replay ? `replay · ${statusLabel(status)}` : statusLabel(status);
  $("run-alias").textContent = run.otelflow_run_id || "–";
  $("run-trace").textContent = run.trace_id;
  $("run-service").textContent = run.service || "–";
  $("run-spans").textContent = String(v.spans.size);
  renderRunLlm(run.llm);
  tickHeader(v);
  const progress = replay ? replayProgress(replay.t) : run.progress;
  const pct = progressPercent(progress) ?? (status === STATUS_OK ? 100 : 0);
  const bar = $("run-progress");
  bar.dataset.status = status;
  bar.setAttribute("aria-valuenow", String(Math.round(pct)));
  bar.firstElementChild.style.width = `${pct}%`;
  const message = progress && progress.message ? ` · ${progress.message}` : "";
  $("run-progress-text").textContent = `${Math.round(pct)}%${message}`;
  $("export").href = apiUrl(`/api/runs/${encodeURIComponent(run.trace_id)}/export`).href;
  $("export").setAttribute("download", `${run.trace_id}.otlp.json`);
  if (jaegerUrl) {
    $("jaeger").hidden = false;
    $("jaeger").href = `${jaegerUrl}/trace/${encodeURIComponent(run.trace_id)}`;
  }
  const toggle = $("replay-toggle");
  toggle.disabled = run.status === STATUS_RUNNING;
  toggle.title = run.status === STATUS_RUNNING ? "Replay is available once the run has finished" : "Replay the recorded events";
}

/** The run's model calls in the header: tokens in → out and the estimated cost, as the run summary has them. */
function renderRunLlm(llm) {
  const box = $("run-llm");
  box.hidden = !llm || !llm.calls;
  if (box.hidden) return;
  const tokens = $("run-llm-tokens");
  tokens.textContent = `${formatTokens(llm.input_tokens)} → ${formatTokens(llm.output_tokens)}`;
  tokens.title = tokensTitle(llm.input_tokens, llm.output_tokens, llm.calls);
  const cost = $("run-llm-cost");
  cost.textContent = formatCost(llm.cost_usd, llm.cost_estimate !== false);
  cost.title = costTitle(llm.cost_usd, llm.unpriced_calls);
}

function tickHeader(v) {
  const run = v.run;
  if (!run) return;
  const start = run.start_time_ns ? run.start_time_ns / 1e6 : parseTime(run.start_time);
  let ms = run.duration_ms;
  if (replay) ms = v.now - replay.start;
  else if (run.status === STATUS_RUNNING) ms = v.now - start;
  $("run-duration").textContent = formatDuration(ms);
}

// ------------------------------------------------------------------------------------------- logs

// Log lines (log and exception events) are indexed as they arrive; the list draws only the lines in view.
const LOG_PX = 22; // .log height in style.css
const LOG_MARGIN = 10;
const logsEl = $("logs");
const logsSizer = h("li", { class: "logs-sizer", "aria-hidden": "true" });
logsEl.append(logsSizer);
const logKeys = new Set();
let logEntries = []; // every line, by time
let logsUnsorted = false;
let shownLogs = [];
let logsFollow = true;
let logsScrollTop = 0;
let logsScrollSet = 0; // the scrollTop the page last gave the list
let logsHeight = 200;
let logsKey = "";
const logRows = new Map(); // entry key -> its <li> (only lines in view)

function logEntry(span, ev) {
  if (ev.name !== EVENT_LOG && ev.name !== EVENT_EXCEPTION) return null;
  const a = ev.attributes || {};
  const level = ev.name === EVENT_EXCEPTION ? LEVEL_ERROR : String(a[LOG_LEVEL] || LEVEL_INFO).toLowerCase();
  const message = ev.name === EVENT_EXCEPTION
    ? `${a[EXCEPTION_TYPE] || EVENT_EXCEPTION}: ${a[EXCEPTION_MESSAGE] || ""}`
    : String(a[LOG_MESSAGE] ?? "");
  return { key: `${span.span_id}|${ev.name}|${ev.time}`, time: parseTime(ev.time), level, message, spanId: span.span_id };
}

function addLogEntry(span, ev) {
  const entry = logEntry(span, ev);
  if (!entry || logKeys.has(entry.key)) return;
  logKeys.add(entry.key);
  const last = logEntries[logEntries.length - 1];
  if (last && (last.time > entry.time || (last.time === entry.time && last.key > entry.key))) logsUnsorted = true;
  logEntries.push(entry);
  changed.logs = true;
}

function indexLogs(span) {
  for (const ev of span.events || []) addLogEntry(span, ev);
}

function rebuildLogs(spans) {
  logKeys.clear();
  logEntries = [];
  for (const span of spans.values()) indexLogs(span);
  logsUnsorted = true;
  changed.logs = true;
}

const byTime = (a, b) => a.time - b.time || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);

function renderLogs(v, f, filtersChanged) {
  const min = LEVEL_RANK.get($("log-level").value) ?? 0;
  const key = `${min}|${Boolean(replay)}`;
  const refilter = changed.logs || filtersChanged || key !== logsKey || replay || (f.status && changed.spans);
  if (refilter) {
    logsKey = key;
    if (logsUnsorted) {
      logEntries.sort(byTime);
      logsUnsorted = false;
    }
    const source = replay ? replay.logs : logEntries;
    const rank = (level) => LEVEL_RANK.get(level) ?? LEVEL_RANK.get(LEVEL_INFO);
    const plain = !f.kind && !f.status && !f.name;
    shownLogs = [];
    for (const entry of source) {
      if (replay && entry.time > replay.t) break;
      if (rank(entry.level) < min) continue;
      if (!plain) {
        const span = v.spans.get(entry.spanId);
        if (!span || !spanMatches(span, f)) continue;
      }
      shownLogs.push(entry);
    }
    $("log-count").textContent = `${shownLogs.length} line${shownLogs.length === 1 ? "" : "s"}`;
    const empty = logEntries.length === 0 && !replay;
    const panel = logsEl.closest(".panel");
    if (panel.dataset.empty !== String(empty)) {
      panel.dataset.empty = String(empty);
      panel.closest(".run-grid").classList.toggle("logs-empty", empty);
    }
    logsSizer.style.height = `${shownLogs.length * LOG_PX + 8}px`;
  }
  if (logsFollow) logsScrollTop = Math.max(0, shownLogs.length * LOG_PX + 8 - logsHeight);
  drawLogRows(v);
}

/**
 * Keeps a following list at its bottom. Called from ResizeObservers, which run after the frame's layout: there a
 * scrollTop write costs no layout of its own (in render() it would force one in the middle of the frame's writes).
 */
function applyFollow() {
  if (!logsFollow) return;
  const top = Math.max(0, shownLogs.length * LOG_PX + 8 - logsHeight);
  if (logsScrollSet === top) return;
  logsEl.scrollTop = logsScrollSet = top;
  ownScroll = true;
}

/** HH:MM:SS.mmm in local time (as formatClock shows it, without the cost of Intl's first call). */
function clockOf(ms) {
  if (!Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

function drawLogRows(v) {
  const first = Math.max(0, Math.floor(logsScrollTop / LOG_PX) - LOG_MARGIN);
  const last = Math.min(shownLogs.length, Math.ceil((logsScrollTop + logsHeight) / LOG_PX) + LOG_MARGIN);
  const wanted = new Set();
  for (let i = first; i < last; i++) wanted.add(shownLogs[i].key);
  for (const [key, row] of logRows) {
    if (!wanted.has(key) && !row.contains(document.activeElement)) {
      row.remove();
      logRows.delete(key);
    }
  }
  let previous = logsSizer;
  for (let i = first; i < last; i++) {
    const entry = shownLogs[i];
    let row = logRows.get(entry.key);
    if (!row) {
      const span = v.spans.get(entry.spanId) || { name: "", attributes: {}, span_id: entry.spanId };
      row = h("li", { class: "log", "data-level": entry.level, "data-key": entry.key },
        h("span", { class: "log-time num", text: clockOf(entry.time) }),
        h("span", { class: "log-level", text: entry.level }),
        h("button", { type: "button", class: "log-span", text: displayName(span), title: span.name, onclick: () => select(entry.spanId) }),
        h("span", { class: "log-msg", text: entry.message, title: entry.message }));
      logRows.set(entry.key, row);
    }
    if (row.index !== i) {
      row.style.transform = `translateY(${i * LOG_PX}px)`;
      row.index = i;
    }
    if (previous.nextSibling !== row) previous.after(row);
    previous = row;
  }
}

let ownScroll = false; // the next scroll event is the page's own follow: its position is known, not read
logsEl.addEventListener("scroll", () => {
  if (ownScroll) { // following the stream
    ownScroll = false;
    logsScrollTop = logsScrollSet;
    schedulePacedRender();
    return;
  }
  logsScrollTop = logsScrollSet = logsEl.scrollTop;
  const atBottom = logsScrollTop + logsHeight >= shownLogs.length * LOG_PX + 8 - 24;
  logsFollow = atBottom;
  $("log-jump").hidden = atBottom;
  scheduleRender();
}, { passive: true });
new ResizeObserver((entries) => {
  for (const entry of entries) if (entry.target === logsEl) logsHeight = entry.contentRect.height;
  applyFollow();
  scheduleRender();
}).observe(logsEl);
new ResizeObserver(applyFollow).observe(logsSizer);
$("log-jump").addEventListener("click", () => {
  logsFollow = true;
  $("log-jump").hidden = true;
  logsScrollTop = Math.max(0, shownLogs.length * LOG_PX + 8 - logsHeight);
  logsEl.scrollTop = logsScrollSet = logsScrollTop;
  scheduleRender();
});
$("log-level").addEventListener("change", scheduleRender);

// ------------------------------------------------------------------------------------------- replay

function replayState(t) {
  const out = new Map();
  for (const span of replay.spansFinal.values()) {
    const start = parseTime(span.start_time);
    if (start > t) continue;
    const end = span.end_time ? parseTime(span.end_time) : replay.end;
    const done = end <= t;
    out.set(span.span_id, {
      ...span,
      status: done ? span.status : STATUS_RUNNING,
      end_time: done ? span.end_time : null,
      duration_ms: done ? span.duration_ms : null,
      error: done ? span.error : null,
      events: (span.events || []).filter((e) => parseTime(e.time) <= t),
    });
  }
  return out;
}

function replayStatus(v) {
  if (replay.t >= replay.end) return live.run.status;
  return v.spans.size ? STATUS_RUNNING : PENDING;
}

/**
 * The run's progress at replay time `t`, as the server reported it: of the recorded `run.progress` values (in
 * the order the server published them), the last one whose progress event happened by `t`; at the end, the
 * last one. The browser never picks a span's progress itself: which span's progress is the run's is the
 * server's rule.
 */
function replayProgress(t) {
  const atEnd = t >= replay.end;
  let shown = null;
  for (const progress of replay.progress) {
    if (atEnd || !(parseTime(progress.time) > t)) shown = progress;
  }
  return shown;
}

/**
 * The final spans and the run's progress over time as the recorded events tell them (without history: the
 * snapshot's spans and the run's current progress).
 */
async function recorded() {
  const spans = new Map();
  const progress = [];
  try {
    const data = await getJSON(`/api/runs/${encodeURIComponent(runKey)}/events`);
    for (const envelope of data.events) {
      if (SPAN_TYPES.has(envelope.type)) mergeSpan(spans, { ...envelope.span, events: mergeEvents(envelope.span.events, spans.get(envelope.span.span_id)?.events) });
      else if (envelope.type === SPAN_EVENT) addSpanEvent(spans, envelope);
      else if (RUN_TYPES.has(envelope.type) && envelope.run && envelope.run.progress) {
        const last = progress[progress.length - 1];
        const next = envelope.run.progress;
        if (!last || last.time !== next.time || last.span_id !== next.span_id) progress.push(next);
      }
    }
  } catch {
    /* no history: use the snapshot */
  }
  if (!spans.size) for (const [id, span] of live.spans) spans.set(id, span);
  if (!progress.length && live.run && live.run.progress) progress.push(live.run.progress);
  return { spans, progress };
}

async function startReplay() {
  const { spans: spansFinal, progress } = await recorded();
  let start = Infinity;
  let end = -Infinity;
  const flows = [];
  for (const span of spansFinal.values()) {
    start = Math.min(start, parseTime(span.start_time));
    end = Math.max(end, span.end_time ? parseTime(span.end_time) : parseTime(span.start_time));
    for (const ev of span.events || []) {
      if (ev.name === EVENT_DATA_FLOW) flows.push({ t: parseTime(ev.time), a: ev.attributes || {} });
    }
  }
  if (!Number.isFinite(start)) return;
  const logs = [];
  for (const span of spansFinal.values()) {
    for (const ev of span.events || []) {
      const entry = logEntry(span, ev);
      if (entry) logs.push(entry);
    }
  }
  logs.sort(byTime);
  replay = {
    spansFinal, progress, start, end: Math.max(end, start + 1), t: start, playing: true, speed: replay?.speed || 1, flows,
    last: null, logs,
  };
  timeline.resetZoom();
  for (const id of ["replay-play", "replay-speed", "replay-scrub", "replay-time"]) $(id).hidden = false;
  $("replay-toggle").textContent = "Back to live";
  document.body.classList.add("replaying");
  updateReplayControls();
  requestAnimationFrame(replayFrame);
}

function stopReplay() {
  replay = null;
  for (const id of ["replay-play", "replay-speed", "replay-scrub", "replay-time"]) $(id).hidden = true;
  $("replay-toggle").textContent = "Replay";
  document.body.classList.remove("replaying");
  document.body.dataset.replay = "";
  timeline.replaying = false;
  timeline.resetZoom();
  markAll();
  scheduleRender();
}

function replayFrame(ts) {
  if (!replay) return;
  if (replay.playing) {
    const dt = replay.last === null ? 0 : ts - replay.last;
    const before = replay.t;
    replay.t = Math.min(replay.end, replay.t + dt * replay.speed);
    for (const flow of replay.flows) {
      if (flow.t > before && flow.t <= replay.t) graph.particle(String(flow.a[DATA_FLOW_FROM]), String(flow.a[DATA_FLOW_TO]));
    }
    if (replay.t >= replay.end) replay.playing = false;
    updateReplayControls();
    render();
  }
  replay.last = ts;
  requestAnimationFrame(replayFrame);
}

function updateReplayControls() {
  const f = (replay.t - replay.start) / (replay.end - replay.start);
  $("replay-scrub").value = String(Math.round(f * REPLAY_TICKS));
  $("replay-time").textContent = `${formatDuration(replay.t - replay.start)} / ${formatDuration(replay.end - replay.start)}`;
  const play = $("replay-play");
  play.textContent = replay.playing ? "❚❚" : "▶";
  play.setAttribute("aria-label", replay.playing ? "Pause" : "Play");
  document.body.dataset.replay = replay.t >= replay.end ? "end" : replay.playing ? "playing" : "paused";
}

$("replay-toggle").addEventListener("click", () => (replay ? stopReplay() : startReplay()));
$("replay-play").addEventListener("click", () => {
  if (!replay) return;
  if (replay.t >= replay.end) replay.t = replay.start;
  replay.playing = !replay.playing;
  updateReplayControls();
});
$("replay-speed").addEventListener("click", (e) => {
  const btn = e.target.closest("[data-speed]");
  if (!btn || !replay) return;
  replay.speed = Number(btn.dataset.speed);
  for (const b of $("replay-speed").querySelectorAll("[data-speed]")) b.setAttribute("aria-pressed", String(b === btn));
});
$("replay-scrub").addEventListener("input", (e) => {
  if (!replay) return;
  replay.t = replay.start + (Number(e.target.value) / REPLAY_TICKS) * (replay.end - replay.start);
  updateReplayControls();
  render();
});

// ------------------------------------------------------------------------------------------- wiring

function showProblem(text) {
  const el = $("run-status");
  el.dataset.status = STATUS_ERROR;
  el.textContent = text;
}

$("zoom-in").addEventListener("click", () => graph.zoomBy(1.25));
$("zoom-out").addEventListener("click", () => graph.zoomBy(1 / 1.25));
$("zoom-fit").addEventListener("click", () => graph.fit());
filterForm.addEventListener("input", scheduleRender);
const search = $("tl-search");
search.addEventListener("input", () => {
  timeline.search(search.value);
  scheduleRender();
});
search.addEventListener("keydown", (e) => {
  if (e.key !== "Enter") return;
  e.preventDefault();
  timeline.nextMatch(e.shiftKey);
});
installSplitter($("tl-splitter"), $("run-grid"));

/** The bar under the timeline: drag it (or use the arrow keys on it) to give the timeline more or less height. */
function installSplitter(handle, grid) {
  const panel = handle.closest(".panel");
  let drag = null;
  const setHeight = (px) => {
    const h = Math.max(140, Math.round(px));
    grid.style.setProperty("--tl-rows", `${h}px`);
    handle.setAttribute("aria-valuenow", String(h));
  };
  handle.addEventListener("pointerdown", (e) => {
    drag = { y: e.clientY, height: panel.getBoundingClientRect().height };
    handle.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  handle.addEventListener("pointermove", (e) => {
    if (drag) setHeight(drag.height + e.clientY - drag.y);
  });
  handle.addEventListener("pointerup", () => { drag = null; });
  handle.addEventListener("keydown", (e) => {
    if (e.key !== "ArrowUp" && e.key !== "ArrowDown") return;
    e.preventDefault();
    setHeight(panel.getBoundingClientRect().height + (e.key === "ArrowDown" ? 40 : -40));
  });
}
filterForm.addEventListener("submit", (e) => e.preventDefault());
window.addEventListener("resize", () => {
  if (!graph.userMoved) graph.fit();
});

/**
 * SSE that is open but has been silent for a whole watchdog period while the server has spans we never got
 * means a proxy buffers the stream: switch to the WebSocket. (A short silence is not enough: a healthy stream
 * may simply not have delivered a span that is a few milliseconds old.)
 */
let lastWatchdogCheck = -Infinity;
async function watchdog() {
  const silent = () => connection && connection.transport === "SSE" && connection.silentMs() >= WATCHDOG_MS;
  if (!silent() || live.run?.status !== STATUS_RUNNING || resyncing) return;
  if (performance.now() - lastWatchdogCheck < WATCHDOG_MS) return; // an idle run is checked once per period
  lastWatchdogCheck = performance.now();
  try {
    const data = await getJSON(`/api/runs/${encodeURIComponent(runKey)}`);
    if (silent() && data.spans.some((s) => !live.spans.has(s.span_id))) {
      connection.suspectBuffering();
      await resync();
    }
  } catch { /* the connection badge reports outages */ }
}

async function main() {
  const badge = $("conn");
  let data = null;
  try {
    data = await loadSnapshot(); // a run not known yet: shown as waiting, its first span fills the page in
  } catch (err) {
    showProblem(`Could not load the run: ${err.message}`);
  }
  const traceId = data && data.run ? data.run.trace_id : runKey;
  connection = new LiveConnection({
    filters: { run: traceId }, onEvent, onReset: resync, lastEventId: data ? data.last_event_id : null, badge,
  });
  connection.start();
  scheduleRender();
  every(250, () => {
    if (replay) return;
    const v = view();
    if (graphRendered) setTimeout(() => graph.tick(view().now), 0); // a task of its own
    if (v.live || v.stalled.size) timeline.tick(v.now);
    tickHeader(v);
    inspector.tick(selectedSpanId ? v.spans.get(selectedSpanId) : null, v.now, stallOf(v, selectedSpanId));
  });
  setInterval(watchdog, WATCHDOG_MS / 2);
}

main();
