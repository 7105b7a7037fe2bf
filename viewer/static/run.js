// The run page: snapshot + live events into one state, drawn as graph, timeline, inspector and logs; replay.
// Stalled spans (a live flag: quiet or slow) are marked amber in the graph, the timeline and the inspector.

import {
  LiveConnection, apiUrl, clear, compareIds, every, formatClock, formatDuration, getJSON, h, parseTime, progressPercent,
  statusLabel,
} from "./common.js";
import { GraphView, PENDING, buildGraph, displayName, graphOwner, markStalls } from "./graph.js";
import { header } from "./header.js";
import { Inspector } from "./inspector.js";
import { TimelineView } from "./timeline.js";
import {
  DATA_FLOW_FROM, DATA_FLOW_TO, EVENT_DATA_FLOW, EVENT_EXCEPTION, EVENT_LOG, EXCEPTION_MESSAGE, EXCEPTION_TYPE,
  KIND_WORKFLOW, LOG_LEVEL, LOG_LEVELS, LOG_MESSAGE, RUN_ENDED, RUN_STARTED, RUN_UPDATED, SPAN_ABANDONED, SPAN_ENDED,
  SPAN_EVENT, SPAN_STALLED, SPAN_STARTED, SPAN_UNSTALLED, SPAN_UPDATED, STATUS_ERROR, STATUS_OK, STATUS_RUNNING,
} from "./wire.js";

// LOG_LEVELS lists the levels least severe first (debug, info, warning, error, critical): that is their rank
const [, LEVEL_INFO, LEVEL_WARNING, LEVEL_ERROR] = LOG_LEVELS;
const LEVEL_RANK = new Map(LOG_LEVELS.map((level, i) => [level, i]));
LEVEL_RANK.set("warn", LEVEL_RANK.get(LEVEL_WARNING)); // read as log() reads it
const SPAN_TYPES = new Set([SPAN_STARTED, SPAN_UPDATED, SPAN_ENDED, SPAN_ABANDONED]);
const RUN_TYPES = new Set([RUN_STARTED, RUN_UPDATED, RUN_ENDED]);
const FINAL = new Set([STATUS_OK, STATUS_ERROR]);
const WATCHDOG_MS = 4000; // silence on an open SSE stream before the buffering check
const REPLAY_TICKS = 1000;
const NOT_STALLED = new Map(); // replay shows no stalls: they are a live flag

const $ = (id) => document.getElementById(id);
const runKey = document.body.dataset.run;
const jaegerUrl = document.body.dataset.jaegerUrl;

// ------------------------------------------------------------------------------------------- state

const live = { run: null, spans: new Map(), stalled: new Map() }; // stalled: span id -> its `stalled` object
let connection = null;
let resyncing = null; // buffered events while a snapshot is re-fetched
let selectedSpanId = null;
let replay = null; // {spansFinal, progress, start, end, t, playing, speed, flows}

function mergeSpan(spans, incoming) {
  const current = spans.get(incoming.span_id);
  if (current && FINAL.has(current.status) && !FINAL.has(incoming.status)) return; // ended spans are final
  spans.set(incoming.span_id, incoming);
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
  } else if (SPAN_TYPES.has(envelope.type)) {
    const existing = live.spans.get(envelope.span.span_id);
    if (existing && existing.placeholder) envelope.span.events = mergeEvents(envelope.span.events, existing.events);
    mergeSpan(live.spans, envelope.span);
    if (live.spans.get(envelope.span.span_id).status !== STATUS_RUNNING) live.stalled.delete(envelope.span.span_id);
  } else if (envelope.type === SPAN_STALLED) {
    const span = envelope.span;
    if (!live.spans.has(span.span_id)) mergeSpan(live.spans, span);
    if (envelope.stalled && live.spans.get(span.span_id).status === STATUS_RUNNING) live.stalled.set(span.span_id, envelope.stalled);
  } else if (envelope.type === SPAN_UNSTALLED) {
    live.stalled.delete(envelope.span.span_id);
  } else if (envelope.type === SPAN_EVENT) {
    const added = addSpanEvent(live.spans, envelope);
    if (added && animate && envelope.event.name === EVENT_DATA_FLOW) {
      const a = envelope.event.attributes || {};
      graph.particle(String(a[DATA_FLOW_FROM]), String(a[DATA_FLOW_TO]));
    }
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
  scheduleRender();
}

async function loadSnapshot() {
  const data = await getJSON(`/api/runs/${encodeURIComponent(runKey)}`);
  live.run = data.run;
  live.spans = new Map();
  for (const span of data.spans) live.spans.set(span.span_id, span);
  live.stalled = new Map(Object.entries(data.stalled || {}));
  return data;
}

async function resync() {
  header.refresh();
  if (resyncing) return;
  resyncing = [];
  try {
    const data = await loadSnapshot();
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
    resyncing = null;
    showProblem(`Could not reload the run: ${err.message}`);
  }
  scheduleRender();
}

// ------------------------------------------------------------------------------------------- views

const graph = new GraphView({
  svgEl: $("graph"), viewEl: $("graph-view"), nodesEl: $("graph-nodes"), edgesEl: $("graph-edges"),
  particlesEl: $("graph-particles"), wrapEl: $("graph-wrap"), emptyEl: $("graph-empty"), onSelect: select,
});
const timeline = new TimelineView({
  container: $("timeline"), rowsEl: $("tl-rows"), nowEl: $("tl-now"), scaleEl: $("timeline-scale"), onSelect: select,
});
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

function spanMatches(span, f) {
  if (f.kind && span.kind !== f.kind) return false;
  if (f.status && span.status !== f.status) return false;
  if (f.name && !span.name.toLowerCase().includes(f.name)) return false;
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
  return { run: live.run, spans: replayState(replay.t), stalled: NOT_STALLED, now: replay.t, live: false };
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

let renderScheduled = false;
function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(() => {
    renderScheduled = false;
    render();
  });
}

function render() {
  const v = view();
  const f = filters();
  const root = rootOf(v.spans, v.run);
  const g = markStalls(buildGraph(v.spans, root, graphOwner(v.spans, root)), v.stalled);
  graph.render(g, (node) => nodeMatches(node, f), v.now);
  timeline.replaying = Boolean(replay);
  timeline.render(v.spans, (span) => spanMatches(span, f), v.now, v.live, v.stalled);
  inspector.show(selectedSpanId ? v.spans.get(selectedSpanId) || null : null, v.now, stallOf(v, selectedSpanId));
  renderHeader(v, root);
  renderLogs(v.spans, f);
  document.body.dataset.spanCount = String(v.spans.size);
  document.body.dataset.stalledCount = String(v.stalled.size);
  document.body.dataset.runStatus = v.run ? v.run.status : "";
}

/** The stall of a running span of the view, or null. */
function stallOf(v, spanId) {
  const span = spanId ? v.spans.get(spanId) : null;
  return span && span.status === STATUS_RUNNING ? v.stalled.get(spanId) || null : null;
}

function renderHeader(v, root) {
  const run = v.run;
  if (!run) return;
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

const logsEl = $("logs");
const logKeys = new Set();
let logEntries = [];
let logsFollow = true;
let logSignature = "";

function logsOf(spans) {
  const out = [];
  for (const span of spans.values()) {
    for (const ev of span.events || []) {
      if (ev.name !== EVENT_LOG && ev.name !== EVENT_EXCEPTION) continue;
      const a = ev.attributes || {};
      const level = ev.name === EVENT_EXCEPTION ? LEVEL_ERROR : String(a[LOG_LEVEL] || LEVEL_INFO).toLowerCase();
      const message = ev.name === EVENT_EXCEPTION
        ? `${a[EXCEPTION_TYPE] || EVENT_EXCEPTION}: ${a[EXCEPTION_MESSAGE] || ""}`
        : String(a[LOG_MESSAGE] ?? "");
      out.push({ key: `${span.span_id}|${ev.name}|${ev.time}`, time: parseTime(ev.time), level, message, span });
    }
  }
  return out.sort((a, b) => a.time - b.time || a.key.localeCompare(b.key));
}

function renderLogs(spans, f) {
  const min = LEVEL_RANK.get($("log-level").value) ?? 0;
  const rank = (level) => LEVEL_RANK.get(level) ?? LEVEL_RANK.get(LEVEL_INFO);
  const entries = logsOf(spans).filter((e) => rank(e.level) >= min && spanMatches(e.span, f));
  const signature = `${min}|${f.kind}|${f.status}|${f.name}|${Boolean(replay)}`;
  const appendOnly = signature === logSignature && entries.length >= logEntries.length
    && logEntries.every((e, i) => entries[i].key === e.key);
  if (!appendOnly) {
    clear(logsEl);
    logKeys.clear();
    logEntries = [];
    logSignature = signature;
  }
  for (const entry of entries.slice(logEntries.length)) {
    if (logKeys.has(entry.key)) continue;
    logKeys.add(entry.key);
    logEntries.push(entry);
    logsEl.append(h("li", { class: "log", "data-level": entry.level, "data-key": entry.key },
      h("span", { class: "log-time num", text: formatClock(entry.time) }),
      h("span", { class: "log-level", text: entry.level }),
      h("button", { type: "button", class: "log-span", text: displayName(entry.span), title: entry.span.name, onclick: () => select(entry.span.span_id) }),
      h("span", { class: "log-msg", text: entry.message })));
  }
  $("log-count").textContent = `${logEntries.length} line${logEntries.length === 1 ? "" : "s"}`;
  if (logsFollow) logsEl.scrollTop = logsEl.scrollHeight;
}

logsEl.addEventListener("scroll", () => {
  const atBottom = logsEl.scrollTop + logsEl.clientHeight >= logsEl.scrollHeight - 24;
  logsFollow = atBottom;
  $("log-jump").hidden = atBottom;
});
$("log-jump").addEventListener("click", () => {
  logsFollow = true;
  logsEl.scrollTop = logsEl.scrollHeight;
  $("log-jump").hidden = true;
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
  replay = {
    spansFinal, progress, start, end: Math.max(end, start + 1), t: start, playing: true, speed: replay?.speed || 1, flows,
    last: null,
  };
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
    data = await loadSnapshot();
  } catch (err) {
    showProblem(err.status === 404 ? `No run ${runKey}` : `Could not load the run: ${err.message}`);
  }
  const traceId = data ? data.run.trace_id : runKey;
  connection = new LiveConnection({
    filters: { run: traceId }, onEvent, onReset: resync, lastEventId: data ? data.last_event_id : null, badge,
  });
  connection.start();
  scheduleRender();
  every(250, () => {
    if (replay) return;
    const v = view();
    graph.tick(v.now);
    timeline.tick(v.now, v.spans);
    tickHeader(v);
    inspector.tick(selectedSpanId ? v.spans.get(selectedSpanId) : null, v.now, stallOf(v, selectedSpanId));
  });
  setInterval(watchdog, WATCHDOG_MS / 2);
}

main();
