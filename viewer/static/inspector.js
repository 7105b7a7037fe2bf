// The inspector: one span's status, stall, error, input/output (collapsible JSON tree), attributes and events; for a
// model call its model, tokens and cost, the answer growing live while it streams and the conversation; for other
// spans the totals of the model calls below them.

import {
  STALL_SLOW, clear, copyButton, formatClock, formatDuration, formatSeconds, h, parseTime, stallLabel, statusLabel,
} from "./common.js";
import { displayName } from "./graph.js";
import { costTitle, formatCost, formatExact, formatTokens, tokensTitle } from "./usage.js";
import {
  INPUT_VALUE, KIND_LLM, LLM_OUTPUT_CUT, LLM_OUTPUT_PARTIAL, OUTPUT_VALUE, STATUS_RUNNING, WORKFLOW_GRAPH,
} from "./wire.js";

// shown as blocks of their own (the answer so far of a streaming model call: as the live answer)
const HIDDEN_ATTRS = new Set([INPUT_VALUE, OUTPUT_VALUE, LLM_OUTPUT_PARTIAL, LLM_OUTPUT_CUT]);
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

/** "… 1,234 characters cut" for a text of which `cut` characters were left out, else null. */
function cutNote(cut) {
  return cut > 0 ? h("div", { class: "llm-cut muted", text: `… ${formatExact(cut)} character${cut === 1 ? "" : "s"} cut` }) : null;
}

/** Tokens in → out as a fact: `812 → 95` (exact counts in the tooltip), "–" when neither is known. */
function tokensText(input, output) {
  const known = (n) => n !== null && n !== undefined && Number.isFinite(n);
  if (!known(input) && !known(output)) return "–";
  return `${formatTokens(input)} → ${formatTokens(output)}`;
}

/** A call's estimated cost (`~$0.00018`); "no price" when its tokens are known but its model is not in the table. */
function costText(llm) {
  if (Number.isFinite(llm.cost_usd)) return formatCost(llm.cost_usd, llm.cost_estimate !== false);
  return Number.isFinite(llm.input_tokens) || Number.isFinite(llm.output_tokens) ? "no price" : "–";
}

function fact(label, value, attrs = {}) {
  return h("div", {}, h("dt", { text: label }), h("dd", { class: "num", ...attrs }, value));
}

/** One message of a conversation: its role, its text (folded when long), its tool calls and what it answers. */
function messageItem(message) {
  const role = String(message.role || "unknown");
  const calls = Array.isArray(message.tool_calls) ? message.tool_calls : [];
  const content = message.content === null || message.content === undefined ? "" : String(message.content);
  return h("li", { class: "msg", "data-role": role },
    h("div", { class: "msg-head" },
      h("span", { class: "msg-role", text: role }),
      message.tool_call_id ? h("span", { class: "msg-ref muted", text: `result of ${message.tool_call_id}` }) : null),
    content ? foldedText(content, "msg-content", "pre") : null,
    cutNote(message.cut),
    calls.length ? h("ul", { class: "msg-calls" }, calls.map((call) => h("li", { class: "msg-call" },
      h("span", { class: "msg-call-name", text: `${call.name || "?"}(` }),
      foldedText(String(call.arguments ?? ""), "msg-call-args"),
      h("span", { class: "msg-call-name", text: ")" }),
      call.id ? h("span", { class: "msg-ref muted", text: ` ${call.id}` }) : null))) : null);
}

/** The final answer of a model call: the text of its output messages. */
function answerOf(llm) {
  return (llm.output_messages || []).map((m) => (m.content === null || m.content === undefined ? "" : String(m.content))).join("\n");
}

export class Inspector {
  constructor(el) {
    this.el = el;
    this.spanId = null;
    this.signature = "";
  }

  /**
   * Shows `span` (or a hint when null), its `stall` (null: not stalled) and, for a span that is not a model call,
   * `llmTotals` (the totals of the model calls below it, or null); re-renders only when they changed. The answer
   * of a streaming model call is updated in place.
   */
  show(span, now, stall = null, llmTotals = null) {
    const stalled = stall ? `${stall.reason}|${stall.since}|${stall.rule}` : "";
    const totals = llmTotals ? `${llmTotals.calls}|${llmTotals.input_tokens}|${llmTotals.output_tokens}|${llmTotals.cost_usd}` : "";
    const signature = span ? `${span.span_id}|${span.status}|${span.end_time}|${(span.events || []).length}|${Object.keys(span.attributes || {}).length}|${stalled}|${totals}` : "";
    this.spanId = span ? span.span_id : null;
    if (signature === this.signature) {
      this.showPartial(span);
      this.tick(span, now, stall);
      return;
    }
    this.stallEl = null;
    this.partialEl = null;
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
    const llm = span.kind === KIND_LLM ? span.llm : null;
    if (llm) this.el.append(...this.llmSections(span, llm));
    else if (llmTotals && llmTotals.calls) this.el.append(this.totalsSection(llmTotals));
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
    const conversation = llm ? this.conversationSection(llm) : null; // a model call's input and output, as messages
    if (conversation) this.el.append(conversation);
    else {
      if (INPUT_VALUE in attrs) this.el.append(valueBlock("Input", attrs[INPUT_VALUE]));
      if (OUTPUT_VALUE in attrs) this.el.append(valueBlock("Output", attrs[OUTPUT_VALUE]));
    }
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

  /** A model call's facts (model, provider, tokens, cost, first token, finish reasons, problems) and its answer. */
  llmSections(span, llm) {
    const problems = Array.isArray(llm.problems) ? llm.problems : [];
    const ttft = llm.time_to_first_token_ms;
    const model = llm.model || llm.request_model || "–";
    const facts = h("dl", { class: "insp-facts llm-facts" },
      fact("Model", model, { title: llm.request_model && llm.request_model !== llm.model ? `asked for ${llm.request_model}` : null }),
      fact("Provider", llm.provider || "–"),
      fact("Tokens in → out", tokensText(llm.input_tokens, llm.output_tokens),
        { title: `${formatExact(llm.input_tokens)} input → ${formatExact(llm.output_tokens)} output tokens` }),
      fact("Cost", costText(llm),
        { title: costTitle(llm.cost_usd, 0), "data-llm": "cost" }),
      fact("First token", Number.isFinite(ttft) ? formatDuration(ttft) : "–"),
      fact("Finish", (llm.finish_reasons || []).join(", ") || "–"));
    const out = [section(llm.operation ? `Model call · ${llm.operation}` : "Model call", h("div", {},
      facts,
      problems.length ? h("ul", { class: "llm-problems" }, problems.map((p) => h("li", { text: String(p) }))) : null))];
    // the answer: growing while the call streams, then the final one
    this.partialEl = null;
    this.partialShown = null;
    if (span.status === STATUS_RUNNING) {
      this.partialText = h("pre", { class: "llm-answer-text" });
      this.partialCut = h("div", { class: "llm-cut muted" });
      this.partialEl = h("div", { class: "llm-answer", "data-live": "true" }, h("div", { class: "llm-answer-scroll" }, this.partialText), this.partialCut);
      out.push(section("Answer (streaming)", this.partialEl));
      this.showPartial(span);
    } else {
      const answer = answerOf(llm);
      if (answer) out.push(section("Answer", h("div", { class: "llm-answer", "data-live": "false" }, foldedText(answer, "llm-answer-text", "pre")), copyButton(() => answer)));
    }
    return out;
  }

  /** The answer so far of a streaming call, written in place when it grew (no re-render of the rest). */
  showPartial(span) {
    if (!this.partialEl || !span || !span.llm) return;
    const text = span.llm.partial_output || "";
    const cut = span.llm.partial_cut || 0;
    const key = `${text.length}|${cut}`;
    if (this.partialShown === key) return;
    this.partialShown = key;
    this.partialText.textContent = text || "…";
    this.partialCut.textContent = cut > 0 ? `… ${formatExact(cut)} character${cut === 1 ? "" : "s"} cut` : "";
    this.partialCut.hidden = !(cut > 0);
  }

  /** The conversation: system instructions, then the input messages, then the answer's messages (null: none). */
  conversationSection(llm) {
    const input = Array.isArray(llm.input_messages) ? llm.input_messages : [];
    const output = Array.isArray(llm.output_messages) ? llm.output_messages : [];
    const list = h("ol", { class: "msg-list" });
    if (llm.system_instructions) list.append(messageItem({ role: "system", content: llm.system_instructions }));
    for (const m of input) list.append(messageItem(m));
    for (const m of output) {
      const item = messageItem(m);
      item.classList.add("msg-output");
      list.append(item);
    }
    const more = (n, side) => (n > 0 ? h("li", { class: "muted", text: `… ${formatExact(n)} more ${side} messages not kept` }) : null);
    for (const note of [more(llm.input_messages_cut, "input"), more(llm.output_messages_cut, "output")]) if (note) list.append(note);
    const count = list.querySelectorAll(".msg").length;
    return count ? section(`Conversation (${count})`, list) : null;
  }

  /** What the model calls below a span used: calls, tokens and the estimated cost. */
  totalsSection(t) {
    const calls = `${formatExact(t.calls)} call${t.calls === 1 ? "" : "s"}`;
    return section("Model calls below", h("dl", { class: "insp-facts llm-totals" },
      fact("Calls", calls),
      fact("Tokens in → out", tokensText(t.input_tokens, t.output_tokens), { title: tokensTitle(t.input_tokens, t.output_tokens, t.calls) }),
      fact("Cost", formatCost(t.cost_usd, t.cost_estimate !== false), { title: costTitle(t.cost_usd, t.unpriced_calls), "data-llm": "cost" })));
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
