// Shared by every page: safe DOM building, formatting, API access, and the live connection
// (one EventSource per tab, WebSocket /ws when SSE fails, jittered exponential backoff, resume by event id).
// Event types, statuses, kinds and attribute keys come from ./wire.js (the stream contract, served by the viewer).

import { EVENT_TYPES, MIME_JSON, RESET, SHUTDOWN, STATUS_ERROR, STATUS_OK } from "./wire.js";

const STATUS_LABEL = { [STATUS_OK]: "completed", [STATUS_ERROR]: "failed" };

/** How a status reads on the pages: a status without a label of its own reads as itself. */
export function statusLabel(status) {
  return STATUS_LABEL[status] || status;
}

/**
 * The percentage (0-100) of a run's progress as the server reports it (`run.progress`: percent, else
 * completed of total), or null. The server alone decides which span's progress is the run's.
 */
export function progressPercent(progress) {
  let pct = null;
  if (progress && typeof progress.percent === "number") pct = progress.percent;
  else if (progress && progress.total) pct = (100 * (progress.completed || 0)) / progress.total;
  return pct === null || !Number.isFinite(pct) ? null : Math.max(0, Math.min(100, pct));
}

const BACKOFF_BASE_MS = 400;
const BACKOFF_MAX_MS = 15000;
const SSE_FAILURES_BEFORE_WS = 2;
const SSE_OPEN_TIMEOUT_MS = 6000;
const WS_PING_MS = 20000;

// ------------------------------------------------------------------------------------------- DOM

/** Builds an element; strings in `children` become text nodes, never markup. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** A button that copies `getText()` to the clipboard and says so. */
export function copyButton(getText, label = "Copy") {
  const btn = h("button", { type: "button", class: "btn btn-small btn-copy", text: label });
  btn.addEventListener("click", async () => {
    const text = getText();
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = h("textarea", { class: "offscreen" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    btn.textContent = "Copied";
    setTimeout(() => { btn.textContent = label; }, 1200);
  });
  return btn;
}

// ------------------------------------------------------------------------------------------- formatting

export function parseTime(iso) {
  return iso ? Date.parse(iso) : NaN;
}

export function formatDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60).toString().padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${(m % 60).toString().padStart(2, "0")}m`;
}

export function formatClock(ms) {
  if (!Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export function formatWhen(ms) {
  if (!Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

/** Whole seconds as stall labels say them: `45 s`, `1 m 12 s`, `1 m`, `2 h 3 m` (under a second: `0.5 s`). */
export function formatSeconds(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 1) return `${Math.max(0, Number(seconds.toFixed(1)))} s`;
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return s % 60 ? `${Math.floor(s / 60)} m ${s % 60} s` : `${s / 60} m`;
  const m = Math.floor(s / 60) % 60;
  return m ? `${Math.floor(s / 3600)} h ${m} m` : `${Math.floor(s / 3600)} h`;
}

// Why a span is stalled (the `reason` of a span.stalled event's `stalled` object, see viewer/live/stall.py;
// otelflow/wire.py does not name these): nothing of it moved for a while, or it runs far past its usual p95.
export const STALL_QUIET = "quiet";
export const STALL_SLOW = "slow";

/**
 * The label of a stalled span at `now` (ms): "quiet for 1 m 12 s" or "slow: 3 m 4 s, over 1 m". It ticks from
 * the stall's `since` (quiet) or the span's start (slow), never showing less than the server measured.
 */
export function stallLabel(stall, span, now) {
  if (stall.reason === STALL_SLOW) {
    const running = Math.max(stall.seconds || 0, span ? (now - parseTime(span.start_time)) / 1000 : 0);
    return `slow: ${formatSeconds(running)}, over ${formatSeconds(stall.limit_s)}`;
  }
  const quiet = Math.max(stall.seconds || 0, (now - parseTime(stall.since)) / 1000 || 0);
  return `quiet for ${formatSeconds(quiet)}`;
}

/** Compares `<epoch>.<seq>` ids of one epoch: negative, 0, positive; null when epochs differ. */
export function compareIds(a, b) {
  if (!a || !b) return null;
  const [ea, sa] = a.split(".");
  const [eb, sb] = b.split(".");
  if (ea !== eb) return null;
  return Number(sa) - Number(sb);
}

// ------------------------------------------------------------------------------------------- API

const TOKEN = new URLSearchParams(location.search).get("token");

/** `path` with the page's `?token=` carried over (for viewers started with a token). */
export function apiUrl(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, v);
  }
  if (TOKEN) url.searchParams.set("token", TOKEN);
  return url;
}

export async function getJSON(path, params = {}) {
  const response = await fetch(apiUrl(path, params), { headers: { Accept: MIME_JSON }, cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch { /* not JSON */ }
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return response.json();
}

async function serverReachable() {
  try {
    const response = await fetch(apiUrl("/healthz"), { cache: "no-store" });
    return response.ok;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------------------------------- live connection

/**
 * A live stream of viewer events with one transport at a time.
 *
 * options: `filters` (query parameters: run, type, ...), `onEvent(envelope)`, `onReset(envelope)`,
 * `lastEventId` (resume point), `badge` (the #conn element).
 * SSE first; after SSE_FAILURES_BEFORE_WS failures in a row while the server itself answers (blocked or
 * broken SSE), or when a stream is opened but stays silent while the caller says data is missing
 * (`suspectBuffering()`), it switches to the WebSocket `/ws` for the rest of the tab's life.
 */
export class LiveConnection {
  constructor({ filters = {}, onEvent, onReset, lastEventId = null, badge = null }) {
    this.filters = filters;
    this.onEvent = onEvent;
    this.onReset = onReset || (() => {});
    this.lastEventId = lastEventId;
    this.badge = badge;
    this.transport = "SSE";
    this.fallbackReason = "";
    this.state = "connecting";
    this.source = null;
    this.ws = null;
    this.attempt = 0;
    this.sseFailures = 0;
    this.timer = null;
    this.pingTimer = null;
    this.openTimer = null;
    this.stopped = false;
    this.received = 0;
    this.lastFrameAt = 0; // performance.now() of the last frame delivered, or of the stream's opening
    if (badge) {
      const retry = badge.querySelector(".conn-retry");
      retry.addEventListener("click", () => this.reconnect());
    }
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.teardown();
  }

  /** Reconnect now (the badge's button), resuming from the last event id. */
  reconnect() {
    this.attempt = 0;
    this.teardown();
    this.connect();
  }

  /** Resume point after the caller re-fetched a snapshot (on `reset`). */
  setLastEventId(id) {
    this.lastEventId = id;
  }

  /** Milliseconds the open stream has delivered nothing (Infinity when not connected). */
  silentMs() {
    return this.state === "connected" ? performance.now() - this.lastFrameAt : Infinity;
  }

  /** The caller found data on the server that the open SSE stream never delivered: a buffering proxy. */
  suspectBuffering() {
    if (this.transport !== "SSE" || this.state !== "connected") return;
    this.switchToWebSocket("SSE stream buffered");
  }

  setState(state, detail = "") {
    this.state = state;
    const badge = this.badge;
    if (!badge) return;
    badge.dataset.state = state;
    badge.dataset.transport = this.transport;
    badge.querySelector(".conn-text").textContent = state;
    const transport = this.transport === "WebSocket" && this.fallbackReason ? "WebSocket (SSE failed)" : this.transport;
    badge.querySelector(".conn-transport").textContent = transport;
    const reason = this.transport === "WebSocket" && this.fallbackReason ? ` (${this.fallbackReason})` : "";
    badge.title = detail || `${state} via ${transport}${reason}`;
    badge.querySelector(".conn-retry").hidden = state === "connected" || state === "connecting";
  }

  teardown() {
    clearTimeout(this.timer);
    clearTimeout(this.openTimer);
    clearInterval(this.pingTimer);
    this.timer = this.openTimer = this.pingTimer = null;
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onerror = ws.onmessage = ws.onopen = null;
      try { ws.close(1000); } catch { /* already closed */ }
    }
  }

  connect() {
    if (this.stopped) return;
    this.setState("connecting");
    if (this.transport === "SSE") this.connectSse();
    else this.connectWs();
  }

  scheduleReconnect(state = "disconnected", detail = "") {
    this.teardown();
    if (this.stopped) return;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt) * (0.5 + Math.random() * 0.5);
    this.attempt = Math.min(this.attempt + 1, 10);
    this.setState(state, `${detail} — retrying in ${(delay / 1000).toFixed(1)} s`.trim());
    this.timer = setTimeout(() => this.connect(), delay);
  }

  switchToWebSocket(reason) {
    this.teardown();
    this.transport = "WebSocket";
    this.fallbackReason = reason;
    this.attempt = 0;
    this.connect();
  }

  deliver(envelope) {
    if (!envelope || !envelope.type) return;
    this.received++;
    this.lastFrameAt = performance.now();
    if (envelope.type === RESET) {
      this.lastEventId = envelope.last_event_id || envelope.id || null;
      this.onReset(envelope);
      return;
    }
    if (envelope.type === SHUTDOWN) return; // the stream ends next; reconnect then
    const order = compareIds(envelope.id, this.lastEventId);
    if (order !== null && order <= 0) return; // already seen: never apply an event twice
    this.lastEventId = envelope.id;
    this.onEvent(envelope);
  }

  connectSse() {
    const url = apiUrl("/api/stream", { ...this.filters, last_event_id: this.lastEventId });
    const source = new EventSource(url);
    this.source = source;
    let opened = false;
    this.openTimer = setTimeout(() => {
      if (!opened && this.source === source) this.onSseFailure(source, "SSE did not open");
    }, SSE_OPEN_TIMEOUT_MS);
    source.onopen = () => {
      opened = true;
      clearTimeout(this.openTimer);
      this.attempt = 0;
      this.sseFailures = 0;
      this.lastFrameAt = performance.now();
      this.setState("connected");
    };
    const handler = (message) => {
      if (this.source !== source) return;
      let envelope;
      try {
        envelope = JSON.parse(message.data);
      } catch {
        return;
      }
      this.deliver(envelope);
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, handler);
    source.onerror = () => {
      if (this.source !== source) return;
      if (opened) {
        // the stream ended (server restart, shutdown, falling behind): resume with our own backoff
        this.scheduleReconnect("disconnected", "stream closed");
      } else {
        this.onSseFailure(source, "SSE failed");
      }
    };
  }

  async onSseFailure(source, detail) {
    if (this.source !== source) return;
    source.close();
    this.source = null;
    // Only a failure of SSE itself counts towards the fallback, not a viewer that is down.
    if (await serverReachable()) {
      this.sseFailures++;
      if (this.sseFailures >= SSE_FAILURES_BEFORE_WS) {
        this.switchToWebSocket(detail);
        return;
      }
      this.scheduleReconnect("failed", detail);
    } else {
      this.scheduleReconnect("disconnected", "viewer unreachable");
    }
  }

  connectWs() {
    const url = apiUrl("/ws", { ...this.filters, last_event_id: this.lastEventId });
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.lastFrameAt = performance.now();
      this.setState("connected");
      this.pingTimer = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
      }, WS_PING_MS);
    };
    ws.onmessage = (message) => {
      let envelope;
      try {
        envelope = JSON.parse(message.data);
      } catch {
        return;
      }
      if (!EVENT_TYPES.includes(envelope.type)) {
        // a control reply (subscribed, unsubscribed, pong, error), not an event of the stream
        if (envelope.message) console.warn("viewer:", envelope.message);
        return;
      }
      this.deliver(envelope);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      if (event.code === 1008) {
        this.teardown();
        this.setState("failed", `refused: ${event.reason || "policy"} — check the token`);
        return;
      }
      if (event.code === 1013) this.attempt = 0; // too slow: resume at once
      this.scheduleReconnect(event.code === 1000 || event.code === 1001 ? "disconnected" : "failed", `closed ${event.code}`);
    };
  }
}

/** Calls `fn` every `ms` while the tab is visible. */
export function every(ms, fn) {
  return setInterval(() => {
    if (!document.hidden) fn();
  }, ms);
}
