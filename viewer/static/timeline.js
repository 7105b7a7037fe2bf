// The timeline: a waterfall of the spans nested under their parents, with a time axis, zoom and pan, collapsible
// subtrees, search by name and a live "now" line; stalled spans amber.
// Only the rows in view (plus a margin) are in the DOM: a run of 20,000 spans scrolls like one of 20.

import { formatDuration, h, parseTime, stallLabel } from "./common.js";
import { displayName } from "./graph.js";
import { STALLED, STATUS_CANCELLED, STATUS_ERROR, STATUS_RUNNING } from "./wire.js";

export const ROW_PX = 26; // .tl-row height in style.css
const LABEL_PX = 260; // .tl-row first column (--tl-label in style.css; read from it on resize)
const INDENT_PX = 14;
const TRACK_LEFT_PX = 8; // .tl-track margins in style.css
const TRACK_RIGHT_PX = 14;
const MARGIN_ROWS = 12; // rows kept in the DOM above and below the view
const TICK_PX = 90; // about one axis label per this many pixels
const MIN_SPAN_MS = 1; // the narrowest zoom window
const NOW_STEP_MS = 100; // running bars and the now line move in steps of this (not every frame: less paint)
const quantize = (ms) => Math.floor(ms / NOW_STEP_MS) * NOW_STEP_MS;
const STEPS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000,
  600000, 900000, 1800000, 3600000, 7200000, 14400000, 43200000, 86400000];

const startCache = new WeakMap(); // span object -> its start in ms (spans are replaced, never mutated, on update)
/** A span's start time in ms (parsed once per span object). */
export function startMs(span) {
  let t = startCache.get(span);
  if (t === undefined) {
    t = parseTime(span.start_time);
    startCache.set(span, t);
  }
  return t;
}

const endCache = new WeakMap();
function endMs(span, now) {
  if (!span.end_time) return now;
  let t = endCache.get(span);
  if (t === undefined) {
    t = parseTime(span.end_time);
    endCache.set(span, t);
  }
  return t;
}

/** Spans in tree order (parents first, siblings by start time) with their depth and whether they have children. */
export function treeOrder(spans) {
  const children = new Map();
  const roots = [];
  for (const span of spans.values()) {
    const parent = span.parent_span_id && spans.has(span.parent_span_id) ? span.parent_span_id : null;
    if (parent && parent !== span.span_id) {
      let list = children.get(parent);
      if (!list) children.set(parent, (list = []));
      list.push(span);
    } else {
      roots.push(span);
    }
  }
  // by start (the ISO text breaks ties below a millisecond, which Date.parse drops), then by id
  const cmp = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
  const byStart = (a, b) => startMs(a) - startMs(b) || cmp(a.start_time, b.start_time) || cmp(a.span_id, b.span_id);
  const out = [];
  const stack = roots.sort(byStart).reverse().map((s) => [s, 0]);
  const seen = new Set();
  while (stack.length) {
    const [span, depth] = stack.pop();
    if (seen.has(span.span_id)) continue; // a parent cycle
    seen.add(span.span_id);
    const kids = children.get(span.span_id);
    out.push({ id: span.span_id, depth, kids: kids ? kids.length : 0 });
    if (kids) for (const kid of kids.sort(byStart).reverse()) stack.push([kid, depth + 1]);
  }
  return out;
}

/** Axis labels: `0 s`, `0.5 s`, `1 m 30 s` (`ms` from the start of the run; `step` the tick spacing). */
export function tickLabel(ms, step) {
  if (Math.abs(ms) < 1e-9) return "0 s";
  if (step >= 60000 || ms >= 60000) {
    const totalS = Math.round(ms / 1000);
    const m = Math.floor(totalS / 60);
    const s = totalS % 60;
    if (m >= 60) return `${Math.floor(m / 60)} h${m % 60 ? ` ${m % 60} m` : ""}`;
    return s ? `${m} m ${s} s` : `${m} m`;
  }
  const decimals = step >= 1000 ? 0 : step >= 100 ? 1 : step >= 10 ? 2 : 3;
  return `${Number((ms / 1000).toFixed(decimals))} s`;
}

/** 12345 -> "12,345" (toLocaleString costs a first call of tens of milliseconds). */
function thousands(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

export class TimelineView {
  /**
   * `container` the scrolling element, `rowsEl` the rows' canvas in it, `axisEl` the sticky axis (its
   * `.tl-ticks` holds the labels), `bodyEl` the non-scrolling frame of the now line `nowEl`, `scaleEl` the
   * header's "N spans · X s", `resetEl` the button back to the whole run; `onSelect(spanId)`.
   */
  constructor({ container, rowsEl, nowEl, scaleEl, axisEl, ticksEl, resetEl, onSelect }) {
    Object.assign(this, { container, rowsEl, nowEl, scaleEl, axisEl, ticksEl, resetEl, onSelect });
    this.rows = new Map(); // span id -> row element (only rows in view)
    this.spare = [];
    this.order = []; // every span in tree order: {id, depth, kids}
    this.running = []; // ids of the running spans
    this.items = []; // what is shown: order minus filtered-out spans and collapsed subtrees
    this.index = new Map(); // span id -> its position in items
    this.collapsed = new Set();
    this.spans = new Map();
    this.stalled = new Map();
    this.selected = null;
    this.visible = () => true;
    this.matches = new Set(); // span ids the search finds
    this.query = "";
    this.full = { start: 0, end: 1 }; // the run's time range
    this.zoom = null; // {start, end} while zoomed or panned, else null (the whole run)
    this.fixed = null; // a range the caller fixes (replay: the whole recorded run)
    this.live = false;
    this.replaying = false;
    this.now = Date.now();
    this.scrollTop = 0;
    this.viewHeight = 400;
    this.width = 800;
    this.dirty = true;
    this.structureDirty = true;
    this.itemsDirty = true;
    this.onRequest = () => {};
    this.onTick = () => this.onRequest(); // a frame for the clock: the page may pace these
    this.ticksKey = "";
    this.labelPx = LABEL_PX;
    container.addEventListener("scroll", () => {
      this.scrollTop = container.scrollTop;
      this.request();
    }, { passive: true });
    new ResizeObserver((entries) => {
      for (const entry of entries) {
        this.width = entry.contentRect.width;
        this.viewHeight = entry.contentRect.height;
      }
      // after layout: reading the label column's width costs nothing here
      this.labelPx = parseFloat(getComputedStyle(container).getPropertyValue("--tl-label")) || LABEL_PX;
      this.ticksKey = "";
      this.request();
    }).observe(container);
    this.installZoomPan();
    if (resetEl) resetEl.addEventListener("click", () => this.resetZoom());
  }

  /** Asks the page for a frame (the page owns the animation-frame loop). */
  request() {
    this.dirty = true;
    this.onRequest();
  }

  // ------------------------------------------------------------------------------------------- data

  /**
   * New data for the next draw. `structure`: spans were added or re-parented (the tree order is rebuilt);
   * otherwise only the spans in `changed` (ids) differ. `visible(span)` applies the page's filters.
   */
  update({ spans, visible, now, live, stalled, structure = false, filtersChanged = false, fixedRange = null }) {
    this.spans = spans;
    this.stalled = stalled;
    this.now = quantize(now);
    this.live = live;
    this.fixed = fixedRange;
    if (structure) this.structureDirty = true;
    if (structure || filtersChanged) this.itemsDirty = true;
    this.visible = visible;
    this.dirty = true;
  }

  /** Filters that depend on what changes in a span (its status) make every update re-filter. */
  refilter() {
    this.itemsDirty = true;
    this.dirty = true;
  }

  rebuildItems() {
    if (this.structureDirty) {
      this.order = treeOrder(this.spans);
      this.structureDirty = false;
    }
    const items = [];
    let skipDepth = Infinity;
    let start = Infinity;
    let end = -Infinity;
    let shown = 0;
    const counts = new Map();
    const running = [];
    for (const item of this.order) {
      const span = this.spans.get(item.id);
      if (!span) continue;
      const s = startMs(span);
      if (s < start) start = s;
      const e = endMs(span, s);
      if (e > end) end = e;
      if (span.status === STATUS_RUNNING) running.push(item.id);
      if (!this.visible(span)) continue;
      shown++;
      counts.set(span.status, (counts.get(span.status) || 0) + 1);
      if (item.depth > skipDepth) continue;
      skipDepth = this.collapsed.has(item.id) ? item.depth : Infinity;
      items.push(item);
    }
    this.items = items;
    this.running = running; // rebuilt on every change of a span (the page re-filters then)
    this.shownCount = shown;
    this.statusCounts = counts;
    this.index = new Map(items.map((item, i) => [item.id, i]));
    this.dataRange = Number.isFinite(start) ? { start, end: Math.max(end, start) } : null;
    this.itemsDirty = false;
    this.refreshMatches();
  }

  /** The run's range: the caller's fixed one, else the spans' (live: up to now and a little past it). */
  computeFull() {
    if (this.fixed) return { ...this.fixed };
    const r = this.dataRange;
    if (!r) return { start: this.now, end: this.now + 1000 };
    let end = r.end;
    for (const id of this.runningIds()) {
      const span = this.spans.get(id);
      if (span) end = Math.max(end, this.now);
    }
    if (this.live) {
      // the end runs ahead of now and moves on only when now catches up with it: the axis and the bars of
      // ended spans stay put between those steps
      const reach = Math.max(end, this.now);
      if (!this.liveEnd || this.liveEnd.start !== r.start || reach > this.liveEnd.end - 0.02 * (this.liveEnd.end - r.start)) {
        this.liveEnd = { start: r.start, end: reach + Math.max(400, 0.15 * (reach - r.start)) };
      }
      end = this.liveEnd.end;
    } else {
      this.liveEnd = null;
    }
    return { start: r.start, end: Math.max(end, r.start + 1) };
  }

  runningIds() {
    return this.running || [];
  }

  // ------------------------------------------------------------------------------------------- drawing

  /** Draws what changed: the rows in view, the axis, the header and the now line. Writes only, no layout reads. */
  draw() {
    if (this.itemsDirty || this.structureDirty) this.rebuildItems();
    const full = this.computeFull();
    // a live run grows past the window: keep the end fixed unless the user moved it
    this.full = full;
    const view = this.viewRange();
    this.rowsEl.style.height = `${this.items.length * ROW_PX + 8}px`;
    const first = Math.max(0, Math.floor(this.scrollTop / ROW_PX) - MARGIN_ROWS);
    const last = Math.min(this.items.length, Math.ceil((this.scrollTop + this.viewHeight) / ROW_PX) + MARGIN_ROWS);
    const wanted = new Set();
    for (let i = first; i < last; i++) wanted.add(this.items[i].id);
    for (const [id, row] of this.rows) {
      if (!wanted.has(id)) {
        this.rows.delete(id);
        if (row.contains(document.activeElement)) continue; // keep the focused row until it scrolls back
        row.remove();
        this.spare.push(row);
      }
    }
    let previous = null;
    for (let i = first; i < last; i++) {
      const item = this.items[i];
      const span = this.spans.get(item.id);
      let row = this.rows.get(item.id);
      if (!row) {
        row = this.spare.pop() || this.createRow();
        row.dataset.spanId = item.id;
        row.cache = null;
        this.rows.set(item.id, row);
      }
      this.updateRow(row, span, item, i, view);
      const expected = previous ? previous.nextSibling : this.rowsEl.firstChild;
      if (expected !== row) this.rowsEl.insertBefore(row, expected);
      previous = row;
    }
    for (const row of this.rowsEl.querySelectorAll(".tl-row")) {
      if (!this.rows.has(row.dataset.spanId) && !row.contains(document.activeElement)) row.remove();
    }
    this.drawAxis(view);
    this.drawHeader();
    this.drawNow(view);
    if (this.resetEl) this.resetEl.hidden = !this.zoom;
    this.dirty = false;
  }

  /** The window the track shows: the zoomed one, else the whole run. */
  viewRange() {
    return this.zoom ? this.zoom : this.full;
  }

  createRow() {
    const toggle = h("button", { type: "button", class: "tl-toggle", tabindex: -1, "aria-label": "Collapse" });
    const row = h("div", { class: "tl-row", role: "button", tabindex: 0 },
      h("div", { class: "tl-label" },
        toggle, h("span", { class: "tl-kind" }), h("span", { class: "tl-name" }), h("span", { class: "tl-stall", hidden: true })),
      h("div", { class: "tl-track" }, h("div", { class: "tl-bar" }, h("span", { class: "tl-dur" }))));
    toggle.addEventListener("click", (e) => {
      e.stopPropagation();
      this.toggle(row.dataset.spanId);
    });
    row.addEventListener("click", () => {
      if (this.dragged) return;
      this.onSelect(row.dataset.spanId);
    });
    row.addEventListener("keydown", (e) => this.onKey(e, row));
    return row;
  }

  onKey(e, row) {
    const id = row.dataset.spanId;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      this.onSelect(id);
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const i = this.index.get(id);
      const next = i === undefined ? undefined : this.items[i + (e.key === "ArrowDown" ? 1 : -1)];
      if (next) this.focusRow(next.id);
    } else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      const item = this.items[this.index.get(id)];
      if (item && item.kids && this.collapsed.has(id) === (e.key === "ArrowRight")) {
        e.preventDefault();
        this.toggle(id);
      }
    }
  }

  /** Scrolls the row of `spanId` into view, draws and focuses it. */
  focusRow(spanId) {
    this.reveal(spanId);
    this.draw();
    const row = this.rows.get(spanId);
    if (row) row.focus({ preventScroll: true });
  }

  /** Scrolls so that the row of `spanId` is in view (expanding collapsed ancestors). */
  reveal(spanId) {
    let span = this.spans.get(spanId);
    let opened = false;
    while (span && span.parent_span_id) {
      if (this.collapsed.delete(span.parent_span_id)) opened = true;
      span = this.spans.get(span.parent_span_id);
    }
    if (opened || this.itemsDirty) this.rebuildItems();
    const i = this.index.get(spanId);
    if (i === undefined) return;
    const top = i * ROW_PX;
    const axis = ROW_PX; // the sticky axis covers the first row's height
    if (top < this.scrollTop + axis) this.scrollTop = Math.max(0, top - axis);
    else if (top + ROW_PX > this.scrollTop + this.viewHeight) this.scrollTop = top + ROW_PX - this.viewHeight + 4;
    this.container.scrollTop = this.scrollTop;
  }

  toggle(spanId) {
    if (!this.collapsed.delete(spanId)) this.collapsed.add(spanId);
    this.itemsDirty = true;
    this.request();
  }

  updateRow(row, span, item, i, view) {
    const stall = span.status === STATUS_RUNNING ? this.stalled.get(span.span_id) : null;
    const running = span.status === STATUS_RUNNING;
    const key = `${i}|${item.depth}|${item.kids}|${this.collapsed.has(item.id)}|${span.span_id === this.selected}|${this.matches.has(item.id)}`;
    const cache = row.cache;
    const viewKey = `${view.start}|${view.end}`;
    const sameData = cache && cache.span === span && cache.key === key && cache.view === viewKey
      && (!(running || stall) || cache.now === this.now);
    if (sameData) return;
    if (!cache || cache.key !== key) {
      row.style.transform = `translateY(${i * ROW_PX}px)`;
      row.classList.toggle("selected", span.span_id === this.selected);
      row.classList.toggle("tl-match", this.matches.has(item.id));
      const label = row.firstChild;
      label.style.paddingLeft = `${4 + item.depth * INDENT_PX}px`;
      const toggle = label.firstChild;
      const closed = this.collapsed.has(item.id);
      toggle.hidden = !item.kids;
      toggle.textContent = closed ? "▸" : "▾";
      toggle.setAttribute("aria-label", closed ? `Expand (${item.kids})` : "Collapse");
      if (item.kids) row.setAttribute("aria-expanded", String(!closed));
      else row.removeAttribute("aria-expanded");
    }
    if (!cache || cache.span !== span) {
      row.dataset.status = span.status;
      const [, kind, name] = row.firstChild.children;
      kind.textContent = span.kind;
      kind.dataset.kind = span.kind;
      name.textContent = displayName(span);
    }
    this.place(row, span, view);
    this.showStall(row, span, stall);
    row.cache = { span, key, view: viewKey, now: this.now };
  }

  /** The amber mark and its label ("quiet for 12 s") on the row of a stalled running span; cleared otherwise. */
  showStall(row, span, stall) {
    const text = stall ? stallLabel(stall, span, this.now) : "";
    const label = row.firstChild.lastChild;
    label.hidden = !stall;
    label.textContent = text;
    row.classList.toggle(STALLED, Boolean(stall)); // .stalled in style.css
    row.dataset.stalled = stall ? stall.reason : "";
    row.title = `${span.name} — ${span.status}${text ? `, ${text}` : ""}`;
  }

  place(row, span, view) {
    const total = view.end - view.start;
    const s = startMs(span);
    const e = endMs(span, this.now);
    const bar = row.lastChild.firstChild;
    const left = ((s - view.start) / total) * 100;
    const right = ((Math.max(e, s) - view.start) / total) * 100;
    const a = Math.max(0, Math.min(100, left));
    const b = Math.max(a, Math.min(100, right));
    bar.hidden = right < 0 || left > 100;
    bar.style.left = `${a.toFixed(3)}%`;
    bar.style.width = `${Math.max(0.25, b - a).toFixed(3)}%`;
    bar.firstChild.textContent = formatDuration(span.end_time ? span.duration_ms : this.now - s);
    bar.classList.toggle("tl-bar-narrow", b - a < 12);
  }

  /** Track geometry from the last measured width (ResizeObserver): its left edge and width in px. */
  track() {
    const left = this.labelPx + TRACK_LEFT_PX;
    return { left, width: Math.max(1, this.width - left - TRACK_RIGHT_PX) };
  }

  drawAxis(view) {
    const { width } = this.track();
    const span = view.end - view.start;
    const origin = this.fixed ? this.fixed.start : this.full.start;
    const want = Math.max(2, Math.floor(width / TICK_PX));
    const step = STEPS_MS.find((s) => span / s <= want) || STEPS_MS[STEPS_MS.length - 1];
    const first = Math.ceil((view.start - origin) / step) * step;
    const key = `${view.start}|${view.end}|${width}|${origin}`;
    if (key === this.ticksKey) return;
    this.ticksKey = key;
    const labels = [];
    for (let t = first; origin + t <= view.end + 1e-6 && labels.length < 200; t += step) {
      const f = (origin + t - view.start) / span;
      const tick = h("span", { class: "tl-tick", text: tickLabel(t, step) });
      tick.style.left = `${(f * 100).toFixed(3)}%`;
      tick.classList.toggle("tl-tick-end", f > 0.94); // the last label stays inside the track
      labels.push(tick);
    }
    this.ticksEl.replaceChildren(...labels);
    this.ticksEl.dataset.step = String(step);
  }

  drawHeader() {
    const count = this.shownCount || 0;
    if (!count) {
      if (this.scaleEl.textContent) this.scaleEl.textContent = "";
      return;
    }
    const r = this.dataRange;
    const reach = this.fixed ? Math.min(this.now, this.fixed.end) : this.live ? Math.max(r.end, this.now) : this.runEnd(r);
    const parts = [`${thousands(count)} span${count === 1 ? "" : "s"}`, formatDuration(reach - (this.fixed ? this.fixed.start : r.start))];
    const failed = this.statusCounts.get(STATUS_ERROR) || 0;
    const cancelled = this.statusCounts.get(STATUS_CANCELLED) || 0;
    if (failed) parts.push(`${failed} failed`);
    if (cancelled) parts.push(`${cancelled} cancelled`);
    if (this.query) parts.push(`${this.matches.size} found`);
    const text = parts.join(" · ");
    if (this.scaleEl.textContent !== text) this.scaleEl.textContent = text;
  }

  /** The end of a finished run's range: its latest end (a running span, cut off, reaches now). */
  runEnd(r) {
    let end = r.end;
    for (const id of this.runningIds()) if (this.spans.has(id)) end = Math.max(end, this.now);
    return end;
  }

  drawNow(view) {
    const show = this.live || this.replaying;
    this.nowEl.hidden = !show;
    if (!show) return;
    const f = (this.now - view.start) / (view.end - view.start);
    const { left, width } = this.track();
    const inView = f >= 0 && f <= 1;
    this.nowEl.style.visibility = inView ? "" : "hidden";
    this.nowEl.style.left = `${(left + width * Math.max(0, Math.min(1, f))).toFixed(1)}px`;
    // near the right edge the label goes to the line's left, so that it is never cut off
    this.nowEl.classList.toggle("tl-now-end", f > 0.85);
    const label = this.replaying ? "replay" : "now";
    if (this.nowEl.firstChild && this.nowEl.firstChild.textContent !== label) this.nowEl.firstChild.textContent = label;
  }

  /** Moves the now line and stretches running bars (called on a timer). */
  tick(now) {
    this.now = quantize(now);
    this.dirty = true;
    this.onTick();
  }

  select(spanId) {
    this.selected = spanId;
    for (const [id, row] of this.rows) row.classList.toggle("selected", id === spanId);
    this.request();
  }

  // ------------------------------------------------------------------------------------------- search

  /** Marks the rows whose shown name contains `query` (case-insensitive); returns how many. */
  search(query) {
    this.query = query.trim().toLowerCase();
    this.current = -1;
    this.refreshMatches();
    this.request();
    return this.matches.size;
  }

  refreshMatches() {
    this.matches = new Set();
    if (!this.query) return;
    for (const item of this.order) {
      const span = this.spans.get(item.id);
      if (span && this.visible(span) && displayName(span).toLowerCase().includes(this.query)) this.matches.add(item.id);
    }
  }

  /** Scrolls to the next (or previous) match in tree order, opening collapsed parents; returns its span id. */
  nextMatch(back = false) {
    if (!this.matches.size) return null;
    const ids = this.order.filter((item) => this.matches.has(item.id)).map((item) => item.id);
    this.current = ((this.current ?? -1) + (back ? -1 : 1) + ids.length) % ids.length;
    const id = ids[this.current];
    this.reveal(id);
    this.request();
    return id;
  }

  // ------------------------------------------------------------------------------------------- zoom and pan

  installZoomPan() {
    const fraction = (clientX) => {
      const rect = this.axisEl.getBoundingClientRect();
      const { left, width } = this.track();
      return Math.max(0, Math.min(1, (clientX - rect.left - left) / width));
    };
    this.container.addEventListener("wheel", (e) => {
      const onAxis = this.axisEl.contains(e.target);
      const onTrack = e.target.closest && e.target.closest(".tl-track, .tl-axis");
      if (!onTrack) return;
      if (e.ctrlKey || e.metaKey || onAxis) {
        e.preventDefault();
        this.zoomAt(Math.exp(e.deltaY * 0.002), fraction(e.clientX));
      } else if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
        e.preventDefault();
        this.panBy((e.shiftKey ? e.deltaY : e.deltaX) / this.track().width);
      }
    }, { passive: false });
    let drag = null;
    this.container.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || !(e.target.closest && e.target.closest(".tl-track, .tl-axis"))) return;
      drag = { x: e.clientX, moved: false };
      this.dragged = false;
    });
    window.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x;
      if (!drag.moved && Math.abs(dx) < 4) return;
      drag.moved = true;
      this.dragged = true;
      this.container.classList.add("tl-panning");
      drag.x = e.clientX;
      this.panBy(-dx / this.track().width);
    });
    window.addEventListener("pointerup", () => {
      if (!drag) return;
      drag = null;
      this.container.classList.remove("tl-panning");
      setTimeout(() => { this.dragged = false; }, 0); // the click that ends a drag selects nothing
    });
  }

  /** Zooms by `factor` (> 1 out, < 1 in) around the point at `f` (0..1) of the track. */
  zoomAt(factor, f = 0.5) {
    const view = this.viewRange();
    const span = view.end - view.start;
    const full = this.full;
    const next = Math.max(MIN_SPAN_MS, Math.min(full.end - full.start, span * factor));
    const at = view.start + f * span;
    this.setZoom(at - f * next, at - f * next + next);
  }

  /** Pans by `f` of the shown window (positive: later). */
  panBy(f) {
    const view = this.viewRange();
    const span = view.end - view.start;
    this.setZoom(view.start + f * span, view.end + f * span);
  }

  setZoom(start, end) {
    const full = this.full;
    const span = end - start;
    if (span >= full.end - full.start - 1e-6) {
      this.zoom = null;
    } else {
      const s = Math.max(full.start, Math.min(start, full.end - span));
      this.zoom = { start: s, end: s + span };
    }
    this.request();
  }

  resetZoom() {
    this.zoom = null;
    this.request();
  }
}
