// The inspector: one span's status, stall, error, input/output (collapsible JSON tree), attributes and events.

import {
  STALL_SLOW, clear, copyButton, formatClock, formatDuration, formatSeconds, h, parseTime, stallLabel, statusLabel,
} from "./common.js";
import { displayName } from "./graph.js";
import { INPUT_VALUE, OUTPUT_VALUE, STATUS_RUNNING, WORKFLOW_GRAPH } from "./wire.js";

const HIDDEN_ATTRS = new Set([INPUT_VALUE, OUTPUT_VALUE]); // shown as blocks of their own
const TREE_OPEN_DEPTH = 2;
const FOLD_CHARS = 600; // longer texts show their start and a "show all" button

/** `text` in a `tag` of class `cls`; past FOLD_CHARS folded, with a button that shows it all (and less again). */
export function foldedText(text, cls, tag = "span") {
  if (text.length <= FOLD_CHARS) return h(tag, { class: cls, text });
  const head = `${text.slice(0, FOLD_CHARS)}…`;
  const more = `show all (${text.length.toLocaleString("en-US")} characters)`;
  const el = h(tag, { class: `${cls} is-folded`, text: head });
  const toggle = h("button", { class: "fold-toggle", type: "button", "aria-expanded": "false", text: more });
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    el.textContent = open ? text : head;
    el.classList.toggle("is-folded", !open);
    toggle.textContent = open ? "show less" : more;
  });
  return h("span", { class: "folded" }, el, toggle);
}

function parseMaybeJSON(value) {
  if (typeof value !== "string") return { ok: true, value };
  const text = value.trim();
  if (!text || !"{[\"".includes(text[0]) && !/^(-?\d|true|false|null)/.test(text)) return { ok: false, value };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false, value };
  }
}

function pretty(value) {
  const parsed = parseMaybeJSON(value);
  return parsed.ok ? JSON.stringify(parsed.value, null, 2) : String(value);
}

/** A collapsible, syntax-coloured tree of a JSON value, built from DOM nodes only. */
export function jsonTree(value, depth = 0, key = null) {
  const keyEl = key === null ? null : h("span", { class: "j-key", text: Array.isArray(key) ? key[0] : `${key}: ` });
  if (value !== null && typeof value === "object") {
    const isArray = Array.isArray(value);
    const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
    const summary = h("summary", {}, keyEl, h("span", { class: "j-brace", text: isArray ? `[${entries.length}]` : `{${entries.length}}` }));
    const details = h("details", { class: "j-node" }, summary);
    if (depth < TREE_OPEN_DEPTH) details.open = true;
    const list = h("div", { class: "j-children" });
    for (const [k, v] of entries) list.append(jsonTree(v, depth + 1, isArray ? [`${k}: `] : k));
    details.append(list);
    return details;
  }
  let cls = "j-str";
  let text = JSON.stringify(value);
  if (typeof value === "number") cls = "j-num";
  else if (typeof value === "boolean") cls = "j-bool";
  else if (value === null) cls = "j-null";
  else if (value === undefined) text = "undefined";
  return h("div", { class: "j-leaf" }, keyEl, foldedText(text, cls));
}

function valueBlock(title, value) {
  const parsed = parseMaybeJSON(value);
  const body = parsed.ok && parsed.value !== null && typeof parsed.value === "object"
    ? h("div", { class: "json-tree" }, jsonTree(parsed.value))
    : foldedText(String(value), "value-text", "pre");
  return section(title, body, copyButton(() => pretty(value)));
}

function section(title, body, ...tools) {
  return h("section", { class: "insp-section" },
    h("header", { class: "insp-head" }, h("h3", { text: title }), ...tools), body);
}

function attrValue(key, value) {
  if (key === WORKFLOW_GRAPH) {
    const parsed = parseMaybeJSON(value);
    if (parsed.ok) return h("div", { class: "json-tree" }, jsonTree(parsed.value, TREE_OPEN_DEPTH));
  }
  if (value !== null && typeof value === "object") return h("div", { class: "json-tree" }, jsonTree(value, 1));
  return foldedText(String(value), typeof value === "string" ? "j-str-plain" : "j-num");
}

/** An attribute key as text with line-break chances after its dots and underscores only (never inside a word). */
export function keyParts(key) {
  const out = [];
  for (const part of String(key).split(/(?<=[._])/)) {
    if (out.length) out.push(h("wbr"));
    out.push(part);
  }
  return out;
}

export class Inspector {
  constructor(el) {
    this.el = el;
    this.spanId = null;
    this.signature = "";
  }

  /** Shows `span` (or a hint when null) and its `stall` (null: not stalled); re-renders only when they changed. */
  show(span, now, stall = null) {
    const stalled = stall ? `${stall.reason}|${stall.since}|${stall.rule}` : "";
    const signature = span ? `${span.span_id}|${span.status}|${span.end_time}|${(span.events || []).length}|${Object.keys(span.attributes || {}).length}|${stalled}` : "";
    this.spanId = span ? span.span_id : null;
    if (signature === this.signature) {
      this.tick(span, now, stall);
      return;
    }
    this.stallEl = null;
    this.signature = signature;
    clear(this.el);
    if (!span) {
      this.el.append(h("p", { class: "muted", text: "Select a node or a timeline row to inspect its span." }));
      return;
    }
    const attrs = span.attributes || {};
    this.durationEl = h("dd", { class: "num" });
    this.el.append(
      h("div", { class: "insp-title" },
        h("span", { class: "kind-tag", "data-kind": span.kind, text: span.kind }),
        h("h3", { class: "insp-name", text: displayName(span) }),
        h("span", { class: "chip", "data-status": span.status, text: statusLabel(span.status) })),
      h("dl", { class: "insp-facts" },
        h("div", {}, h("dt", { text: "Span" }), h("dd", {}, h("code", { text: span.name }))),
        h("div", {}, h("dt", { text: "Span id" }), h("dd", {}, h("code", { text: span.span_id }), copyButton(() => span.span_id))),
        h("div", {}, h("dt", { text: "Started" }), h("dd", { class: "num", text: formatClock(parseTime(span.start_time)) })),
        h("div", {}, h("dt", { text: "Duration" }), this.durationEl),
        h("div", {}, h("dt", { text: "Service" }), h("dd", { text: span.service || "–" }))),
    );
    if (stall) this.el.append(this.stallSection(stall));
    this.tick(span, now, stall);
    if (span.error) {
      const err = span.error;
      const stack = err.stack ? foldedText(err.stack, "stack", "pre") : null;
      this.el.append(section("Error",
        h("div", { class: "insp-error" },
          err.type ? h("div", { class: "err-type", text: err.type }) : null,
          h("div", { class: "err-message", text: err.message || "" }),
          stack),
        copyButton(() => [err.type, err.message, err.stack].filter(Boolean).join("\n"))));
    }
    if (INPUT_VALUE in attrs) this.el.append(valueBlock("Input", attrs[INPUT_VALUE]));
    if (OUTPUT_VALUE in attrs) this.el.append(valueBlock("Output", attrs[OUTPUT_VALUE]));
    const table = h("table", { class: "attr-table" });
    for (const key of Object.keys(attrs).sort()) {
      if (HIDDEN_ATTRS.has(key)) continue;
      table.append(h("tr", {}, h("th", { scope: "row", title: key }, ...keyParts(key)), h("td", {}, attrValue(key, attrs[key]))));
    }
    this.el.append(section("Attributes", table, copyButton(() => JSON.stringify(attrs, null, 2))));
    const events = span.events || [];
    const list = h("ol", { class: "event-list" });
    for (const ev of events) {
      const attrEntries = Object.entries(ev.attributes || {});
      list.append(h("li", { class: "event-item", "data-event": ev.name },
        h("div", { class: "event-head" },
          h("span", { class: "event-time num", text: formatClock(parseTime(ev.time)) }),
          h("span", { class: "event-name", text: ev.name })),
        attrEntries.length ? h("div", { class: "json-tree" }, jsonTree(ev.attributes, 1)) : null));
    }
    this.el.append(section(`Events (${events.length})`, events.length ? list : h("p", { class: "muted", text: "No events." })));
  }

  /** Why the span is stalled: its label (kept ticking), since when it is quiet or what its usual time is, the rule. */
  stallSection(stall) {
    this.stallEl = h("div", { class: "insp-stall-label" });
    const why = stall.reason === STALL_SLOW
      ? `It runs far past its usual time${stall.p95_ms ? ` (p95 ${formatDuration(stall.p95_ms)})` : ""}: rule “${stall.rule}” allows ${formatSeconds(stall.limit_s)}.`
      : `Nothing of it has moved since ${formatClock(parseTime(stall.since))}: rule “${stall.rule}” allows ${formatSeconds(stall.limit_s)} of quiet.`;
    return section("Stalled", h("div", { class: "insp-stall", "data-reason": stall.reason },
      this.stallEl, h("div", { class: "insp-stall-why", text: why })));
  }

  tick(span, now, stall = null) {
    if (stall && this.stallEl) this.stallEl.textContent = stallLabel(stall, span, now);
    if (!span || !this.durationEl) return;
    const ms = span.end_time ? span.duration_ms : now - parseTime(span.start_time);
    this.durationEl.textContent = span.status === STATUS_RUNNING ? `${formatDuration(ms)} (running)` : formatDuration(ms);
  }
}
