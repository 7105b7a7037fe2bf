// The run graph: one node per agent/node/tool, laid out left to right by dependency, drawn in SVG with pan/zoom.

import { formatDuration, parseTime, stallLabel, svg } from "./common.js";
import {
  DATA_FLOW_FROM, DATA_FLOW_TO, EVENT_DATA_FLOW, EVENT_RETRY, GEN_AI_AGENT_NAME, GEN_AI_TOOL_NAME, KIND_AGENT, KIND_NODE,
  KIND_TOOL, KIND_WORKFLOW, NODE_ID, OP_EXECUTE_TOOL, OP_INVOKE_AGENT, OP_INVOKE_WORKFLOW, STALLED, STATUS_OK,
  STATUS_RUNNING, WORKFLOW_GRAPH,
} from "./wire.js";

export const PENDING = "pending"; // a planned node that has not run: the pages' own status, not the stream's

const NODE_W = 176;
const NODE_H = 48;
const GAP_X = 60;
const GAP_Y = 22;
const NAME_PREFIXES = [OP_INVOKE_AGENT, OP_EXECUTE_TOOL, OP_INVOKE_WORKFLOW].map((op) => `${op} `); // "<operation> <name>"
const GRAPH_KINDS = new Set([KIND_AGENT, KIND_NODE, KIND_TOOL, KIND_WORKFLOW]);
const PARTICLE_MS = 900;
const META_X = 20;
const STALL_CHARS = 22; // a stall label fits a node at 11px mono (its spinner is hidden); a longer one is squeezed
const STALL_W = NODE_W - META_X - 8;

/** The span that carries the planned graph: the root, else the earliest span with one. */
export function graphOwner(spans, root) {
  if (root && root.attributes && root.attributes[WORKFLOW_GRAPH]) return root;
  let owner = null;
  for (const span of spans.values()) {
    if (span.attributes && span.attributes[WORKFLOW_GRAPH] && (!owner || parseTime(span.start_time) < parseTime(owner.start_time))) owner = span;
  }
  return owner || root;
}

/** The planned graph of the root span, or null. */
export function plannedGraph(root) {
  const raw = root && root.attributes ? root.attributes[WORKFLOW_GRAPH] : null;
  if (!raw) return null;
  try {
    const graph = typeof raw === "string" ? JSON.parse(raw) : raw;
    return graph && Array.isArray(graph.nodes) ? graph : null;
  } catch {
    return null;
  }
}

export function displayName(span) {
  const a = span.attributes || {};
  const named = a[GEN_AI_AGENT_NAME] || a[GEN_AI_TOOL_NAME];
  if (named) return String(named);
  for (const prefix of NAME_PREFIXES) if (span.name.startsWith(prefix)) return span.name.slice(prefix.length);
  return span.name;
}

/** The graph key of a span: its node id when it has one, else its display name. */
export function nodeKey(span) {
  const id = span.attributes && span.attributes[NODE_ID];
  return id ? String(id) : displayName(span);
}

/**
 * Nodes and edges for `spans` (a Map of span id -> span), the planned graph first, then what ran.
 * Node: {key, label, kind, status, spans[], retries, durationMs, startMs}.
 */
export function buildGraph(spans, root, owner = root) {
  const planned = plannedGraph(owner);
  const nodes = new Map();
  const edges = new Map();
  const addEdge = (from, to, kind = "flow") => {
    if (!from || !to || from === to || !nodes.has(from) || !nodes.has(to)) return;
    const key = `${from}\u0000${to}`;
    if (!edges.has(key)) edges.set(key, { key, from, to, kind });
  };
  const rootKey = owner ? nodeKey(owner) : null;
  const skip = new Set([root && root.span_id, owner && owner.span_id]);
  if (planned) {
    for (const n of planned.nodes) {
      const key = String(n.id);
      nodes.set(key, { key, label: String(n.name || n.id), kind: n.kind || KIND_NODE, status: PENDING, spans: [], retries: 0, planned: true });
    }
  }
  const candidates = [...spans.values()].filter((s) => !skip.has(s.span_id));
  const typed = candidates.filter((s) => GRAPH_KINDS.has(s.kind));
  const members = typed.length ? typed : candidates;
  for (const span of members.sort((a, b) => parseTime(a.start_time) - parseTime(b.start_time))) {
    const key = nodeKey(span);
    if (planned && key === rootKey && !nodes.has(key)) continue;
    let node = nodes.get(key);
    if (!node) {
      node = { key, label: displayName(span), kind: span.kind, status: PENDING, spans: [], retries: 0, planned: false };
      nodes.set(key, node);
    }
    node.spans.push(span);
  }
  for (const node of nodes.values()) {
    const latest = node.spans[node.spans.length - 1];
    if (!latest) continue;
    node.status = node.spans.some((s) => s.status === STATUS_RUNNING) ? STATUS_RUNNING : latest.status;
    node.retries = node.spans.reduce((n, s) => n + (s.events || []).filter((e) => e.name === EVENT_RETRY).length, 0);
    node.startMs = parseTime(node.spans[0].start_time);
    node.durationMs = latest.duration_ms;
    node.latest = latest;
  }
  if (planned) {
    for (const e of planned.edges || []) addEdge(String(e.from), String(e.to));
    // a container (nested flow, parallel) leads to its members that nothing else leads to
    const incoming = new Set([...edges.values()].map((e) => e.to));
    for (const n of planned.nodes) {
      if (n.parent && n.parent !== planned.id && !incoming.has(String(n.id))) addEdge(String(n.parent), String(n.id), "contains");
    }
  }
  // what ran: parent/child between graph nodes, and data flow events
  const keyOfSpan = new Map();
  for (const node of nodes.values()) for (const s of node.spans) keyOfSpan.set(s.span_id, node.key);
  for (const span of spans.values()) {
    const childKey = keyOfSpan.get(span.span_id);
    const parentKey = span.parent_span_id ? keyOfSpan.get(span.parent_span_id) : null;
    if (childKey && parentKey) addEdge(parentKey, childKey, "contains");
    for (const ev of span.events || []) {
      if (ev.name !== EVENT_DATA_FLOW) continue;
      const a = ev.attributes || {};
      addEdge(String(a[DATA_FLOW_FROM] || ""), String(a[DATA_FLOW_TO] || ""));
    }
  }
  return { nodes, edges };
}

/**
 * Marks the nodes of `graph` that have a stalled running span (`stalled`: span id -> its `stalled` object):
 * `node.stall` and `node.stallSpan` (the latest such span), else null. Returns `graph`.
 */
export function markStalls(graph, stalled) {
  for (const node of graph.nodes.values()) {
    node.stall = null;
    node.stallSpan = null;
    if (!stalled.size) continue;
    for (const span of node.spans) {
      const stall = span.status === STATUS_RUNNING ? stalled.get(span.span_id) : null;
      if (stall) {
        node.stall = stall;
        node.stallSpan = span;
      }
    }
  }
  return graph;
}

/** Column per node by longest path from the sources (cycles broken by DFS), rows ordered by barycenter. */
export function layout(graph) {
  const { nodes, edges } = graph;
  const out = new Map();
  const succ = new Map();
  for (const key of nodes.keys()) succ.set(key, []);
  for (const e of edges.values()) succ.get(e.from).push(e.to);
  // drop back edges so the rest is a DAG
  const state = new Map();
  const dag = new Map([...nodes.keys()].map((k) => [k, []]));
  const order = [...nodes.keys()];
  for (const start of order) {
    if (state.has(start)) continue;
    const stack = [[start, 0]];
    state.set(start, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const list = succ.get(top[0]);
      if (top[1] < list.length) {
        const next = list[top[1]++];
        if (!state.has(next)) {
          dag.get(top[0]).push(next);
          state.set(next, 1);
          stack.push([next, 0]);
        } else if (state.get(next) === 2) {
          dag.get(top[0]).push(next);
        }
      } else {
        state.set(top[0], 2);
        stack.pop();
      }
    }
  }
  const indeg = new Map([...nodes.keys()].map((k) => [k, 0]));
  for (const list of dag.values()) for (const to of list) indeg.set(to, indeg.get(to) + 1);
  const col = new Map([...nodes.keys()].map((k) => [k, 0]));
  const queue = order.filter((k) => indeg.get(k) === 0);
  for (let i = 0; i < queue.length; i++) {
    const k = queue[i];
    for (const to of dag.get(k)) {
      col.set(to, Math.max(col.get(to), col.get(k) + 1));
      indeg.set(to, indeg.get(to) - 1);
      if (indeg.get(to) === 0) queue.push(to);
    }
  }
  const columns = [];
  for (const k of order) {
    const c = col.get(k);
    (columns[c] ||= []).push(k);
  }
  // a very tall column is folded into several, so 200 independent nodes stay usable
  const maxRows = Math.max(8, Math.ceil(Math.sqrt(nodes.size) * 1.6));
  const folded = [];
  for (const column of columns) {
    if (!column) continue;
    for (let i = 0; i < column.length; i += maxRows) folded.push(column.slice(i, i + maxRows));
  }
  const rowOf = new Map();
  const preds = new Map([...nodes.keys()].map((k) => [k, []]));
  for (const [from, list] of dag) for (const to of list) preds.get(to).push(from);
  folded.forEach((column, ci) => {
    if (ci > 0) {
      const bary = (k) => {
        const p = preds.get(k).filter((x) => rowOf.has(x));
        return p.length ? p.reduce((s, x) => s + rowOf.get(x), 0) / p.length : Infinity;
      };
      column.sort((a, b) => bary(a) - bary(b));
    }
    column.forEach((k, ri) => rowOf.set(k, ri));
  });
  const tallest = Math.max(1, ...folded.map((c) => c.length));
  folded.forEach((column, ci) => {
    const offset = ((tallest - column.length) * (NODE_H + GAP_Y)) / 2;
    column.forEach((k, ri) => out.set(k, { x: ci * (NODE_W + GAP_X), y: offset + ri * (NODE_H + GAP_Y) }));
  });
  return { positions: out, width: folded.length * (NODE_W + GAP_X) - GAP_X, height: tallest * (NODE_H + GAP_Y) - GAP_Y };
}

function edgePath(a, b) {
  const x1 = a.x + NODE_W;
  const y1 = a.y + NODE_H / 2;
  const x2 = b.x;
  const y2 = b.y + NODE_H / 2;
  if (x2 > x1) {
    const dx = Math.max(30, (x2 - x1) / 2);
    return `M ${x1} ${y1} C ${x1 + dx} ${y1}, ${x2 - dx} ${y2}, ${x2} ${y2}`;
  }
  // backwards (a loop): go around below
  const low = Math.max(a.y, b.y) + NODE_H + 26;
  return `M ${x1} ${y1} C ${x1 + 60} ${low}, ${x2 - 60} ${low}, ${x2} ${y2}`;
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Draws and updates the graph; keeps SVG elements per node and edge between renders. */
export class GraphView {
  constructor({ svgEl, viewEl, nodesEl, edgesEl, particlesEl, wrapEl, emptyEl, onSelect }) {
    Object.assign(this, { svgEl, viewEl, nodesEl, edgesEl, particlesEl, wrapEl, emptyEl, onSelect });
    this.nodeEls = new Map();
    this.edgeEls = new Map();
    this.signature = "";
    this.positions = new Map();
    this.size = { width: 0, height: 0 };
    this.view = { x: 20, y: 20, k: 1 };
    this.userMoved = false;
    this.selectedKey = null;
    this.graph = { nodes: new Map(), edges: new Map() };
    this.queuedParticles = [];
    this.installPanZoom();
  }

  installPanZoom() {
    const wrap = this.wrapEl;
    let drag = null;
    wrap.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || e.target.closest(".gnode")) return;
      drag = { x: e.clientX, y: e.clientY, vx: this.view.x, vy: this.view.y };
      wrap.setPointerCapture(e.pointerId);
      wrap.classList.add("dragging");
    });
    wrap.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.view.x = drag.vx + e.clientX - drag.x;
      this.view.y = drag.vy + e.clientY - drag.y;
      this.userMoved = true;
      this.applyView();
    });
    const end = () => {
      drag = null;
      wrap.classList.remove("dragging");
    };
    wrap.addEventListener("pointerup", end);
    wrap.addEventListener("pointercancel", end);
    wrap.addEventListener("wheel", (e) => {
      e.preventDefault();
      const rect = wrap.getBoundingClientRect();
      this.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
    }, { passive: false });
    wrap.addEventListener("keydown", (e) => {
      const step = 40;
      const keys = {
        "+": () => this.zoomBy(1.2), "=": () => this.zoomBy(1.2), "-": () => this.zoomBy(1 / 1.2), "0": () => this.fit(),
        ArrowLeft: () => this.panBy(step, 0), ArrowRight: () => this.panBy(-step, 0),
        ArrowUp: () => this.panBy(0, step), ArrowDown: () => this.panBy(0, -step),
      };
      if (keys[e.key] && !e.target.closest(".gnode")) {
        e.preventDefault();
        keys[e.key]();
      }
    });
  }

  panBy(dx, dy) {
    this.view.x += dx;
    this.view.y += dy;
    this.userMoved = true;
    this.applyView();
  }

  zoomBy(factor) {
    const rect = this.wrapEl.getBoundingClientRect();
    this.zoomAt(factor, rect.width / 2, rect.height / 2);
  }

  zoomAt(factor, cx, cy) {
    const k = Math.min(3, Math.max(0.08, this.view.k * factor));
    const f = k / this.view.k;
    this.view.x = cx - (cx - this.view.x) * f;
    this.view.y = cy - (cy - this.view.y) * f;
    this.view.k = k;
    this.userMoved = true;
    this.applyView();
  }

  fit() {
    const rect = this.wrapEl.getBoundingClientRect();
    const { width, height } = this.size;
    if (!width || !rect.width) return;
    const pad = 22;
    const k = Math.min(1.25, (rect.width - 2 * pad) / width, (rect.height - 2 * pad) / height);
    this.view.k = Math.max(0.08, k);
    this.view.x = (rect.width - width * this.view.k) / 2;
    this.view.y = (rect.height - height * this.view.k) / 2;
    this.userMoved = false;
    this.applyView();
  }

  applyView() {
    this.viewEl.setAttribute("transform", `translate(${this.view.x.toFixed(1)} ${this.view.y.toFixed(1)}) scale(${this.view.k.toFixed(4)})`);
  }

  /** Re-draw for `graph` (from buildGraph); `visible(node)` decides which nodes are dimmed by filters. */
  render(graph, visible, now) {
    this.graph = graph;
    const signature = [...graph.nodes.keys()].join("\u0001") + "\u0002" + [...graph.edges.keys()].join("\u0001");
    if (signature !== this.signature) {
      this.signature = signature;
      const { positions, width, height } = layout(graph);
      this.positions = positions;
      this.size = { width, height };
      this.rebuild(graph);
      if (!this.userMoved) this.fit();
    }
    this.emptyEl.hidden = graph.nodes.size > 0;
    for (const node of graph.nodes.values()) this.updateNode(node, visible(node), now);
    for (const edge of graph.edges.values()) {
      const el = this.edgeEls.get(edge.key);
      const from = graph.nodes.get(edge.from);
      const to = graph.nodes.get(edge.to);
      el.classList.toggle("active", from.status === STATUS_OK && to.status !== PENDING);
      el.classList.toggle("dim", !(visible(from) && visible(to)));
    }
    // particles wait for the render that draws their edge (a data_flow event may be what creates it)
    const queued = this.queuedParticles;
    this.queuedParticles = [];
    for (const [from, to] of queued) this.launchParticle(from, to);
  }

  rebuild(graph) {
    for (const [key, el] of this.nodeEls) if (!graph.nodes.has(key)) { el.remove(); this.nodeEls.delete(key); }
    for (const [key, el] of this.edgeEls) if (!graph.edges.has(key)) { el.remove(); this.edgeEls.delete(key); }
    for (const edge of graph.edges.values()) {
      let el = this.edgeEls.get(edge.key);
      if (!el) {
        el = svg("path", { class: `gedge gedge-${edge.kind}`, "marker-end": "url(#arrow)", "data-from": edge.from, "data-to": edge.to });
        this.edgeEls.set(edge.key, el);
        this.edgesEl.append(el);
      }
      el.setAttribute("d", edgePath(this.positions.get(edge.from), this.positions.get(edge.to)));
    }
    for (const node of graph.nodes.values()) {
      let el = this.nodeEls.get(node.key);
      if (!el) {
        el = this.createNode(node);
        this.nodeEls.set(node.key, el);
        this.nodesEl.append(el);
      }
      const p = this.positions.get(node.key);
      el.setAttribute("transform", `translate(${p.x} ${p.y})`);
    }
  }

  createNode(node) {
    const g = svg("g", { class: "gnode", tabindex: 0, role: "button", "data-node-id": node.key });
    const title = svg("title", {});
    title.textContent = node.key;
    const rect = svg("rect", { class: "gnode-box", width: NODE_W, height: NODE_H, rx: 9 });
    const stripe = svg("rect", { class: "gnode-stripe", width: 4, height: NODE_H - 16, x: 7, y: 8, rx: 2 });
    const label = svg("text", { class: "gnode-label", x: 20, y: 20 });
    label.textContent = truncate(node.label, 21);
    const meta = svg("text", { class: "gnode-meta", x: META_X, y: 37 });
    const spinner = svg("circle", { class: "gnode-spinner", cx: NODE_W - 18, cy: NODE_H / 2, r: 7 });
    const badge = svg("g", { class: "gnode-badge", transform: `translate(${NODE_W - 6} -6)` });
    badge.append(svg("circle", { r: 10 }));
    const badgeText = svg("text", { class: "gnode-badge-text", "text-anchor": "middle", y: 4 });
    badge.append(badgeText);
    g.append(title, rect, stripe, label, meta, spinner, badge);
    const select = () => {
      const current = this.graph.nodes.get(node.key);
      if (current && current.latest) this.onSelect(current.latest.span_id);
    };
    g.addEventListener("click", select);
    g.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        select();
      }
    });
    g.refs = { title, meta, badge, badgeText };
    return g;
  }

  updateNode(node, visible, now) {
    const g = this.nodeEls.get(node.key);
    if (!g) return;
    const stall = node.status === STATUS_RUNNING && node.stall ? stallLabel(node.stall, node.stallSpan, now) : "";
    g.dataset.status = node.status;
    g.dataset.kind = node.kind;
    g.dataset.stalled = stall ? node.stall.reason : "";
    g.setAttribute("class", `gnode st-${node.status} kind-${node.kind}${stall ? ` ${STALLED}` : ""}${visible ? "" : " dim"}${node.latest && node.latest.span_id === this.selectedSpanId ? " selected" : ""}`);
    g.setAttribute("aria-label", `${node.label}: ${node.status}${stall ? `, ${stall}` : ""}`);
    const runs = node.spans.length > 1 ? ` · ×${node.spans.length}` : "";
    let meta = node.kind;
    if (stall) meta = stall;
    else if (node.status === STATUS_RUNNING && node.latest) meta = `${node.kind} · ${formatDuration(now - parseTime(node.latest.start_time))}`;
    else if (node.latest && node.durationMs !== null && node.durationMs !== undefined) meta = `${node.kind} · ${formatDuration(node.durationMs)}`;
    else if (node.status === PENDING) meta = `${node.kind} · pending`;
    const text = stall ? meta : meta + runs;
    g.refs.meta.textContent = text;
    if (stall && text.length > STALL_CHARS) {
      g.refs.meta.setAttribute("textLength", STALL_W);
      g.refs.meta.setAttribute("lengthAdjust", "spacingAndGlyphs");
    } else {
      g.refs.meta.removeAttribute("textLength");
    }
    g.refs.title.textContent = `${node.label} (${node.key}) — ${node.status}${stall ? `, ${stall}` : ""}`;
    g.refs.badge.setAttribute("class", node.retries ? "gnode-badge" : "gnode-badge hidden");
    g.refs.badgeText.textContent = node.retries ? `↻${node.retries}` : "";
    g.dataset.retries = String(node.retries);
  }

  /** Updates the running nodes' durations only (called on a timer). */
  tick(now) {
    for (const node of this.graph.nodes.values()) {
      if (node.status === STATUS_RUNNING) this.updateNode(node, !this.nodeEls.get(node.key)?.classList.contains("dim"), now);
    }
  }

  select(spanId) {
    this.selectedSpanId = spanId;
    for (const node of this.graph.nodes.values()) {
      const g = this.nodeEls.get(node.key);
      if (g) g.classList.toggle("selected", Boolean(node.latest && node.latest.span_id === spanId));
    }
  }

  /** A dot travelling along the edge from -> to (one per data_flow event), launched by the next render. */
  particle(from, to) {
    if (this.queuedParticles.length < 60) this.queuedParticles.push([from, to]);
  }

  launchParticle(from, to) {
    const el = this.edgeEls.get(`${from}\u0000${to}`);
    if (!el || this.particlesEl.childElementCount > 60) return;
    const dot = svg("circle", { class: "particle", r: 5, "data-from": from, "data-to": to });
    const length = el.getTotalLength();
    const started = performance.now();
    const step = (t) => {
      const f = Math.max(0, Math.min(1, (t - started) / PARTICLE_MS));
      const eased = f < 0.5 ? 2 * f * f : 1 - (-2 * f + 2) ** 2 / 2;
      const p = el.getPointAtLength(eased * length);
      dot.setAttribute("cx", p.x.toFixed(1));
      dot.setAttribute("cy", p.y.toFixed(1));
      if (f < 1) requestAnimationFrame(step);
      else dot.remove();
    };
    step(started); // placed on the edge's start before it is first drawn
    this.particlesEl.append(dot);
  }
}
