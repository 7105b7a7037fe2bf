// The timeline: a waterfall of every span, nested under its parent, with a live "now" line; stalled spans amber.

import { formatDuration, h, parseTime, stallLabel } from "./common.js";
import { displayName } from "./graph.js";
import { STALLED, STATUS_RUNNING } from "./wire.js";

const LABEL_PX = 260;
const INDENT_PX = 14;
const TRACK_LEFT_PX = 8; // .tl-track margins in style.css
const TRACK_RIGHT_PX = 14;

/** Spans in tree order (parents first, siblings by start time) with their depth. */
export function treeOrder(spans) {
  const children = new Map();
  const roots = [];
  for (const span of spans.values()) {
    const parent = span.parent_span_id && spans.has(span.parent_span_id) ? span.parent_span_id : null;
    if (parent && parent !== span.span_id) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(span);
    } else {
      roots.push(span);
    }
  }
  const byStart = (a, b) => parseTime(a.start_time) - parseTime(b.start_time) || a.span_id.localeCompare(b.span_id);
  const out = [];
  const stack = roots.sort(byStart).reverse().map((s) => [s, 0]);
  while (stack.length) {
    const [span, depth] = stack.pop();
    out.push({ span, depth });
    const kids = (children.get(span.span_id) || []).sort(byStart).reverse();
    for (const kid of kids) stack.push([kid, depth + 1]);
  }
  return out;
}

export class TimelineView {
  constructor({ container, rowsEl, nowEl, scaleEl, onSelect }) {
    Object.assign(this, { container, rowsEl, nowEl, scaleEl, onSelect });
    this.rows = new Map();
    this.range = { start: 0, end: 1 };
    this.items = [];
    this.selected = null;
    this.stalled = new Map();
  }

  /**
   * `spans` Map; `visible(span)` applies filters; `now` ms; `live` whether the run is still running; `stalled`
   * span id -> its `stalled` object.
   */
  render(spans, visible, now, live, stalled = new Map()) {
    const items = treeOrder(spans);
    this.items = items;
    this.stalled = stalled;
    let start = Infinity;
    let end = -Infinity;
    for (const { span } of items) {
      const s = parseTime(span.start_time);
      const e = span.end_time ? parseTime(span.end_time) : now;
      if (s < start) start = s;
      if (e > end) end = e;
    }
    if (!Number.isFinite(start)) {
      start = now;
      end = now + 1;
    }
    const shownEnd = live ? Math.max(end, now) : end;
    if (live) end = Math.max(end, now) + Math.max(400, 0.08 * (Math.max(end, now) - start));
    this.range = { start, end: Math.max(end, start + 1) };
    this.live = live;
    this.scaleEl.textContent = items.length ? `${items.length} spans · ${formatDuration(shownEnd - start)}` : "";
    const seen = new Set();
    let previous = null;
    for (const { span, depth } of items) {
      seen.add(span.span_id);
      let row = this.rows.get(span.span_id);
      if (!row) {
        row = this.createRow(span);
        this.rows.set(span.span_id, row);
      }
      this.updateRow(row, span, depth, now);
      row.hidden = !visible(span);
      const expected = previous ? previous.nextSibling : this.rowsEl.firstChild;
      if (expected !== row) this.rowsEl.insertBefore(row, expected);
      previous = row;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    this.tick(now, spans);
  }

  createRow(span) {
    const row = h("div", { class: "tl-row", role: "button", tabindex: 0, "data-span-id": span.span_id },
      h("div", { class: "tl-label" },
        h("span", { class: "tl-kind" }), h("span", { class: "tl-name" }), h("span", { class: "tl-stall", hidden: true })),
      h("div", { class: "tl-track" }, h("div", { class: "tl-bar" }, h("span", { class: "tl-dur" }))));
    const select = () => this.onSelect(row.dataset.spanId);
    row.addEventListener("click", select);
    row.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        select();
      } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        let next = e.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
        while (next && next.hidden) next = e.key === "ArrowDown" ? next.nextElementSibling : next.previousElementSibling;
        if (next) next.focus();
      }
    });
    return row;
  }

  updateRow(row, span, depth, now) {
    row.dataset.status = span.status;
    row.classList.toggle("selected", span.span_id === this.selected);
    const label = row.firstChild;
    label.style.paddingLeft = `${10 + depth * INDENT_PX}px`;
    const [kind, name] = label.children;
    kind.textContent = span.kind;
    kind.dataset.kind = span.kind;
    name.textContent = displayName(span);
    this.place(row, span, now);
    this.showStall(row, span, now);
  }

  /** The amber mark and its label ("quiet for 12 s") on the row of a stalled running span; cleared otherwise. */
  showStall(row, span, now) {
    const stall = span.status === STATUS_RUNNING ? this.stalled.get(span.span_id) : null;
    const text = stall ? stallLabel(stall, span, now) : "";
    const label = row.firstChild.lastChild;
    label.hidden = !stall;
    label.textContent = text;
    row.classList.toggle(STALLED, Boolean(stall)); // .stalled in style.css
    row.dataset.stalled = stall ? stall.reason : "";
    row.title = `${span.name} — ${span.status}${text ? `, ${text}` : ""}`;
  }

  place(row, span, now) {
    const { start, end } = this.range;
    const s = parseTime(span.start_time);
    const e = span.end_time ? parseTime(span.end_time) : now;
    const total = end - start;
    const bar = row.lastChild.firstChild;
    const left = ((s - start) / total) * 100;
    const width = Math.max(0.25, ((Math.max(e, s) - s) / total) * 100);
    bar.style.left = `${Math.max(0, Math.min(100, left)).toFixed(3)}%`;
    bar.style.width = `${Math.min(100 - Math.max(0, left), width).toFixed(3)}%`;
    bar.firstChild.textContent = formatDuration(span.end_time ? span.duration_ms : now - s);
    bar.classList.toggle("tl-bar-narrow", width < 12);
  }

  /** Moves the now line and stretches running bars. */
  tick(now, spans) {
    const { start, end } = this.range;
    if (this.live) {
      if (now > end) this.range.end = now + Math.max(400, 0.08 * (now - start));
      for (const { span } of this.items) {
        if (span.status !== STATUS_RUNNING || !spans.has(span.span_id)) continue;
        const row = this.rows.get(span.span_id);
        this.place(row, span, now);
        if (this.stalled.has(span.span_id)) this.showStall(row, span, now);
      }
    }
    const f = (Math.min(now, this.range.end) - start) / (this.range.end - start);
    this.nowEl.hidden = !this.live && !this.replaying;
    this.nowEl.style.left = `calc(${LABEL_PX + TRACK_LEFT_PX}px + (100% - ${LABEL_PX + TRACK_LEFT_PX + TRACK_RIGHT_PX}px) * ${Math.max(0, Math.min(1, f)).toFixed(4)})`;
  }

  select(spanId) {
    this.selected = spanId;
    for (const [id, row] of this.rows) row.classList.toggle("selected", id === spanId);
  }
}
