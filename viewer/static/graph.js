// The run graph: one node per agent/node/tool, drawn in SVG with pan/zoom. An agent or flow whose children are graph
// nodes is drawn as a box around them. Layout: ELK's layered algorithm (vendor/elk-worker.min.js, in a Web Worker),
// run only when the set of nodes and edges changes; new nodes get a provisional place until its answer.

import { formatDuration, parseTime, stallLabel, svg } from "./common.js";
import { formatTokens } from "./usage.js";
import {
  DATA_FLOW_FROM, DATA_FLOW_TO, EVENT_DATA_FLOW, EVENT_RETRY, GEN_AI_AGENT_NAME, GEN_AI_TOOL_NAME, KIND_AGENT, KIND_LLM,
  KIND_NODE, KIND_TOOL, KIND_WORKFLOW, NODE_ID, OP_EXECUTE_TOOL, OP_INVOKE_AGENT, OP_INVOKE_WORKFLOW, STALLED, STATUS_ABANDONED,
  STATUS_CANCELLED, STATUS_ERROR, STATUS_OK, STATUS_RUNNING, WORKFLOW_GRAPH,
} from "./wire.js";

export const PENDING = "pending"; // a planned node that has not run: the pages' own status, not the stream's
export const SKIPPED = "skipped"; // a planned node that never ran in a run that has ended: the pages' own status too

const NODE_W = 188;
const NODE_H = 48;
const GAP_X = 60;
const GAP_Y = 22;
const HEAD_H = 50; // the header row of a box drawn around its children (label, meta, spinner)
const PAD = 14;
const NAME_PREFIXES = [OP_INVOKE_AGENT, OP_EXECUTE_TOOL, OP_INVOKE_WORKFLOW].map((op) => `${op} `); // "<operation> <name>"
const GRAPH_KINDS = new Set([KIND_AGENT, KIND_NODE, KIND_TOOL, KIND_WORKFLOW, KIND_LLM]);
const RUN_ENDED_STATUSES = new Set([STATUS_OK, STATUS_ERROR, STATUS_ABANDONED, STATUS_CANCELLED]);
const PARTICLE_MS = 900;
const MIN_SCALE = 0.08; // the view's smallest zoom
const MAX_SPINNERS = 24; // running nodes whose spinners turn; past this many they stand still (see render)
const CALM_TICK_MS = 1000; // past MAX_SPINNERS running nodes, their durations tick once a second (see tick)
const LABEL_X = 20;
const META_X = 20;
const SPINNER_R = 7;
const SPINNER_GAP = 8; // between a label's end and the spinner
const STALL_CHARS = 22; // a stall label fits a node at 11px mono (its spinner is hidden); a longer one is squeezed
const ELK_ROOT = "\u0000graph";
const MAX_THEN = 4;
const ELK_WORKER_URL = new URL("./vendor/elk-worker.min.js", import.meta.url);
const LAYOUT_OPTIONS = {
  "elk.algorithm": "layered",
  "elk.direction": "RIGHT",
  "elk.edgeRouting": "ORTHOGONAL",
  "elk.hierarchyHandling": "INCLUDE_CHILDREN",
  "elk.spacing.nodeNode": "22",
  "elk.layered.spacing.nodeNodeBetweenLayers": "46",
  "elk.spacing.edgeNode": "14",
  "elk.spacing.edgeEdge": "8",
  "elk.layered.spacing.edgeNodeBetweenLayers": "16",
  "elk.spacing.componentComponent": "34",
  "elk.padding": "[top=4,left=4,bottom=4,right=4]",
};
// a large graph (hundreds of nodes) is laid out with less effort spent on crossings: seconds become a fraction of one
// Between two layouts of a growing graph, at least this long, and twice the last one's time: ELK in its worker
// and the repaint of a moved graph compete with the page's frames for the machine (nodes that arrive meanwhile
// get a provisional place below the others).
const LAYOUT_GAP_MS = 1000;
const LARGE_GRAPH = 100;
const LARGE_OPTIONS = {
  "elk.layered.thoroughness": "1",
  "elk.layered.crossingMinimization.greedySwitch.type": "OFF",
  "elk.layered.crossingMinimization.greedySwitchHierarchical.type": "OFF",
};
// a box around its children: room for its own header row, and at least as wide as a node so that its label fits
const BOX_OPTIONS = {
  "elk.padding": `[top=${HEAD_H},left=${PAD},bottom=${PAD},right=${PAD}]`,
  "elk.nodeSize.constraints": "MINIMUM_SIZE",
  "elk.nodeSize.minimum": `(${NODE_W + 2 * PAD}, ${NODE_H + HEAD_H})`,
};

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

/** The model of a model call (the one asked for, else the one that answered), or null for other spans. */
export function modelOf(span) {
  const llm = span.kind === KIND_LLM ? span.llm : null;
  return llm ? llm.request_model || llm.model || null : null;
}

export function displayName(span) {
  const model = modelOf(span);
  if (model) return String(model);
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

function endMs(span) {
  if (span.end_time) return parseTime(span.end_time);
  return span.duration_ms !== null && span.duration_ms !== undefined ? parseTime(span.start_time) + span.duration_ms : null;
}

/**
 * Nodes and edges for `spans` (a Map of span id -> span), the planned graph first, then what ran.
 * Node: {key, label, kind, status, spans[], retries, durationMs, startMs, endMs, parent}: `parent` is the key of the
 * node drawn around it (its planned container, else the node of its spans' parent spans), or null.
 * Edge: {key, from, to, kind}: kind "flow" (planned or a data flow), "contains" (a parent span's node to a child's
 * that is drawn elsewhere) or "then" (without a planned graph: a sibling that started after this one ended).
 * Once the run has ended, planned nodes that never ran are SKIPPED instead of PENDING.
 */
export function buildGraph(spans, root, owner = root) {
  // a model call is a node of its caller's: the calls of one model by one agent are one node (×N), in its box
  const keyOf = (span) => {
    if (span.kind !== KIND_LLM) return nodeKey(span);
    const parent = span.parent_span_id ? spans.get(span.parent_span_id) : null;
    return parent ? `${nodeKey(parent)} › ${displayName(span)}` : displayName(span);
  };
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
  const plannedParent = new Map();
  if (planned) {
    for (const n of planned.nodes) {
      const key = String(n.id);
      nodes.set(key, { key, label: String(n.name || n.id), kind: n.kind || KIND_NODE, status: PENDING, spans: [], retries: 0, planned: true, parent: null });
      if (n.parent !== undefined && n.parent !== null && String(n.parent) !== String(planned.id)) plannedParent.set(key, String(n.parent));
    }
  }
  const candidates = [...spans.values()].filter((s) => !skip.has(s.span_id));
  const typed = candidates.filter((s) => GRAPH_KINDS.has(s.kind));
  const members = typed.length ? typed : candidates;
  for (const span of members.sort((a, b) => parseTime(a.start_time) - parseTime(b.start_time))) {
    const key = keyOf(span);
    if (planned && key === rootKey && !nodes.has(key)) continue;
    let node = nodes.get(key);
    if (!node) {
      node = { key, label: displayName(span), kind: span.kind, status: PENDING, spans: [], retries: 0, planned: false, parent: null };
      nodes.set(key, node);
    }
    node.spans.push(span);
  }
  const ended = Boolean(root && RUN_ENDED_STATUSES.has(root.status));
  for (const node of nodes.values()) {
    const latest = node.spans[node.spans.length - 1];
    if (!latest) {
      if (ended) node.status = SKIPPED;
      continue;
    }
    const running = node.spans.some((s) => s.status === STATUS_RUNNING);
    node.status = running ? STATUS_RUNNING : latest.status;
    node.retries = node.spans.reduce((n, s) => n + (s.events || []).filter((e) => e.name === EVENT_RETRY).length, 0);
    node.startMs = parseTime(node.spans[0].start_time);
    node.endMs = running ? null : Math.max(...node.spans.map((s) => endMs(s) ?? -Infinity));
    if (node.endMs === -Infinity) node.endMs = null;
    node.durationMs = latest.duration_ms;
    node.latest = latest;
    if (node.kind === KIND_LLM) node.tokens = tokensOf(node.spans);
  }
  // who is drawn inside whom: the planned container, else the node of its spans' parent spans
  const keyOfSpan = new Map();
  for (const node of nodes.values()) for (const s of node.spans) keyOfSpan.set(s.span_id, node.key);
  const isAncestor = (maybe, key) => {
    for (let k = maybe, n = 0; k && n < 64; k = nodes.get(k).parent, n++) if (k === key) return true;
    return false;
  };
  for (const node of nodes.values()) {
    let parent = plannedParent.get(node.key);
    if (!parent && node.spans.length) {
      // drawn inside the node its spans' parents belong to, when they all agree (a tool named alike in two agents
      // is one node of its own, with an edge from each)
      const parents = new Set(node.spans.map((s) => (s.parent_span_id ? keyOfSpan.get(s.parent_span_id) : undefined)));
      if (parents.size === 1) parent = [...parents][0];
    }
    if (parent && parent !== node.key && nodes.has(parent) && !isAncestor(parent, node.key)) node.parent = parent;
  }
  if (planned) for (const e of planned.edges || []) addEdge(String(e.from), String(e.to));
  // what ran: a parent span's node to a child's drawn elsewhere, and data flow events
  for (const span of spans.values()) {
    const childKey = keyOfSpan.get(span.span_id);
    const parentKey = span.parent_span_id ? keyOfSpan.get(span.parent_span_id) : null;
    if (childKey && parentKey && !isAncestor(nodes.get(childKey).parent, parentKey)) addEdge(parentKey, childKey, "contains");
    for (const ev of span.events || []) {
      if (ev.name !== EVENT_DATA_FLOW) continue;
      const a = ev.attributes || {};
      addEdge(String(a[DATA_FLOW_FROM] || ""), String(a[DATA_FLOW_TO] || ""));
    }
  }
  if (!planned) addSequence(nodes, addEdge);
  return { nodes, edges };
}

/** Tokens in and out of model calls, summed over those that report them; null when none does. */
function tokensOf(calls) {
  let input = null;
  let output = null;
  for (const span of calls) {
    const llm = span.llm;
    if (!llm) continue;
    if (Number.isFinite(llm.input_tokens)) input = (input || 0) + llm.input_tokens;
    if (Number.isFinite(llm.output_tokens)) output = (output || 0) + llm.output_tokens;
  }
  return input === null && output === null ? null : { input, output };
}

/**
 * "then" edges between siblings (nodes with the same parent): B follows A when B started after A ended and no
 * sibling ran wholly in between (A ended, C started and ended, then B started). When more than MAX_THEN siblings
 * lead to B that way, only the last of them to end does.
 */
function addSequence(nodes, addEdge) {
  const groups = new Map();
  for (const node of nodes.values()) {
    if (node.startMs === undefined) continue;
    const list = groups.get(node.parent);
    if (list) list.push(node);
    else groups.set(node.parent, [node]);
  }
  for (const list of groups.values()) {
    if (list.length < 2) continue;
    const done = list.filter((n) => n.endMs !== null).sort((a, b) => a.endMs - b.endMs);
    if (!done.length) continue;
    const latestStart = []; // latestStart[i]: the latest start among done[0..i]
    done.forEach((n, i) => latestStart.push(Math.max(n.startMs, i ? latestStart[i - 1] : -Infinity)));
    for (const next of list) {
      let hi = -1; // the last of `done` that ended before `next` started
      for (let lo = 0, top = done.length - 1; lo <= top;) {
        const mid = (lo + top) >> 1;
        if (done[mid].endMs <= next.startMs) { hi = mid; lo = mid + 1; } else top = mid - 1;
      }
      if (hi < 0) continue;
      const bound = latestStart[hi];
      let first = hi;
      while (first > 0 && done[first - 1].endMs > bound) first--;
      // after a wide parallel batch, only the one that ended last leads on (not a web of edges between two batches)
      if (hi - first >= MAX_THEN) first = hi;
      for (let i = first; i <= hi; i++) if (done[i] !== next) addEdge(done[i].key, next.key, "then");
    }
  }
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

/**
 * The first, provisional placement (and the fallback without Web Workers): a column per node by longest path from
 * the sources (cycles broken by DFS), rows ordered by barycenter, every node a leaf.
 */
export function quickLayout(graph) {
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

/** The ELK worker, shared by the page's graph views: `layout(graph)` resolves to the laid-out graph. */
class ElkWorker {
  constructor() {
    this.worker = new Worker(ELK_WORKER_URL);
    this.calls = new Map();
    this.next = 0;
    this.worker.onmessage = (e) => {
      const call = this.calls.get(e.data.id);
      if (!call) return;
      this.calls.delete(e.data.id);
      if (e.data.error) call.reject(new Error(String(e.data.error.message || e.data.error)));
      else call.resolve(e.data.data);
    };
    this.worker.onerror = (e) => {
      e.preventDefault();
      this.failed = true;
      for (const call of this.calls.values()) call.reject(new Error("the layout worker failed"));
      this.calls.clear();
    };
    this.call({ cmd: "register", algorithms: ["layered"] }).catch(() => {});
    // a first small layout while the page loads its run, so that the first real one runs on compiled code
    const leaf = (id) => ({ id, width: NODE_W, height: NODE_H });
    const box = { id: "b", layoutOptions: BOX_OPTIONS, children: [leaf("c"), leaf("d")] };
    const warmUp = { id: ELK_ROOT, layoutOptions: LAYOUT_OPTIONS, children: [leaf("a"), box], edges: [] };
    for (const [id, from, to] of [["1", "a", "b"], ["2", "c", "d"], ["3", "d", "b"]]) warmUp.edges.push({ id, sources: [from], targets: [to] });
    this.layout(warmUp).catch(() => {});
  }

  call(message) {
    if (this.failed) return Promise.reject(new Error("the layout worker failed"));
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id });
    });
  }

  layout(graph) {
    return this.call({ cmd: "layout", graph, layoutOptions: {}, options: {} });
  }
}

let sharedWorker = null;
function elkWorker() {
  if (sharedWorker === null) {
    try {
      sharedWorker = typeof Worker === "function" ? new ElkWorker() : false;
    } catch {
      sharedWorker = false;
    }
  }
  return sharedWorker && !sharedWorker.failed ? sharedWorker : null;
}

/** The ELK input for `graph`: nodes nested in their parents (in the graph's order), all edges at the top. */
export function elkGraph(graph) {
  const options = graph.nodes.size > LARGE_GRAPH ? { ...LAYOUT_OPTIONS, ...LARGE_OPTIONS } : LAYOUT_OPTIONS;
  const top = { id: ELK_ROOT, layoutOptions: options, children: [], edges: [] };
  const elkNodes = new Map();
  for (const node of graph.nodes.values()) elkNodes.set(node.key, { id: node.key, width: NODE_W, height: NODE_H });
  for (const node of graph.nodes.values()) {
    const parent = node.parent ? elkNodes.get(node.parent) : null;
    if (parent) {
      if (!parent.children) {
        parent.children = [];
        parent.layoutOptions = BOX_OPTIONS;
      }
      parent.children.push(elkNodes.get(node.key));
    } else {
      top.children.push(elkNodes.get(node.key));
    }
  }
  for (const edge of graph.edges.values()) top.edges.push({ id: edge.key, sources: [edge.from], targets: [edge.to] });
  return top;
}

/** Absolute boxes of the nodes and polylines of the edges of an ELK result. */
function readElk(result) {
  const boxes = new Map();
  const origin = new Map([[ELK_ROOT, { x: result.x || 0, y: result.y || 0 }]]);
  const paths = new Map();
  const edgesOf = [];
  const walk = (elkNode, ox, oy) => {
    for (const child of elkNode.children || []) {
      const x = ox + child.x;
      const y = oy + child.y;
      boxes.set(child.id, { x, y, w: child.width, h: child.height });
      origin.set(child.id, { x, y });
      walk(child, x, y);
    }
    if (elkNode.edges) edgesOf.push(...elkNode.edges);
  };
  walk(result, result.x || 0, result.y || 0);
  for (const edge of edgesOf) {
    const o = origin.get(edge.container || ELK_ROOT) || { x: 0, y: 0 };
    const points = [];
    for (const s of edge.sections || []) {
      for (const p of [s.startPoint, ...(s.bendPoints || []), s.endPoint]) points.push({ x: p.x + o.x, y: p.y + o.y });
    }
    if (points.length >= 2) paths.set(edge.id, points);
  }
  return { boxes, paths };
}

/**
 * Lays out `graph` (from buildGraph) in the ELK worker: resolves to {boxes: key -> {x, y, w, h}, paths: edge key ->
 * points}, in the graph's coordinates, or rejects when there is no worker.
 */
export function elkLayout(graph) {
  const worker = elkWorker();
  return worker ? worker.layout(elkGraph(graph)).then(readElk) : Promise.reject(new Error("no layout worker"));
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[sorted.length >> 1] : 0;
}

function polyline(points) {
  return points.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
}

let textContext = null;
const textWidths = new Map();
/** Takes the labels' font from `el` (a label in the page), for textWidth. */
function measureLabelsLike(el) {
  textContext = document.createElement("canvas").getContext("2d");
  const style = getComputedStyle(el);
  textContext.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
  textWidths.clear();
}

/** Width in px of `text` in the labels' font (a canvas measures it; cached). */
function textWidth(text, el) {
  if (!textContext) measureLabelsLike(el);
  let w = textWidths.get(text);
  if (w === undefined) {
    w = textContext.measureText(text).width;
    if (textWidths.size > 5000) textWidths.clear();
    textWidths.set(text, w);
  }
  return w;
}

/** `text`, or its longest start that fits `max` px with an ellipsis. */
function fitText(text, max, el) {
  if (textWidth(text, el) <= max) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (textWidth(`${text.slice(0, mid)}…`, el) <= max) lo = mid;
    else hi = mid - 1;
  }
  return `${text.slice(0, lo)}…`;
}

/** Draws and updates the graph; keeps SVG elements per node and edge between renders. */
export class GraphView {
  constructor({ svgEl, viewEl, nodesEl, edgesEl, particlesEl, wrapEl, emptyEl, onSelect }) {
    Object.assign(this, { svgEl, viewEl, nodesEl, edgesEl, particlesEl, wrapEl, emptyEl, onSelect });
    this.boxesEl = svg("g", { class: "graph-boxes" }); // boxes drawn around their children, under the edges
    viewEl.insertBefore(this.boxesEl, edgesEl);
    this.nodeEls = new Map();
    this.edgeEls = new Map();
    this.signature = "";
    this.positions = new Map(); // key -> {x, y, w, h}
    this.paths = new Map(); // edge key -> points, from the last layout
    this.size = { width: 0, height: 0 };
    this.bounds = { x: 0, y: 0, width: 0, height: 0 };
    this.view = { x: 20, y: 20, k: 1 };
    this.userMoved = false;
    this.selectedKey = null;
    this.graph = { nodes: new Map(), edges: new Map() };
    this.queuedParticles = [];
    this.layoutBusy = false;
    this.layoutCount = 0;
    this.nextLayoutAt = 0;
    this.layoutTimer = null;
    this.calm = false;
    this.tickedAt = -Infinity;
    this.elk = elkWorker(); // started now, so that it is ready when the first spans arrive
    this.svgEl.dataset.layout = this.elk ? "pending" : "fallback";
    this.installPanZoom();
    this.wrapSize();
    // the labels' font, read while the page is small (reading it later would make the browser style every node)
    const probe = svg("text", { class: "gnode-label", visibility: "hidden" });
    this.nodesEl.append(probe);
    measureLabelsLike(probe);
    probe.remove();
  }
  installPanZoom() {
    const wrap = this.wrapEl;
    const select = (e) => {
      const g = e.target.closest(".gnode");
      const current = g ? this.graph.nodes.get(g.dataset.nodeId) : null;
      if (current && current.latest) this.onSelect(current.latest.span_id);
      return Boolean(g);
    };
    this.viewEl.addEventListener("click", select);
    this.viewEl.addEventListener("keydown", (e) => {
      if ((e.key === "Enter" || e.key === " ") && e.target.closest(".gnode")) {
        e.preventDefault();
        select(e);
      }
    });
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

  /** The graph area's size, kept by a ResizeObserver so that drawing never has to wait for a page layout. */
  wrapSize() {
    if (!this.wrapRect) {
      const rect = this.wrapEl.getBoundingClientRect();
      this.wrapRect = { width: rect.width, height: rect.height };
      if (typeof ResizeObserver === "function" && !this.resizeObserver) {
        this.resizeObserver = new ResizeObserver((entries) => {
          const box = entries[entries.length - 1].contentRect;
          this.wrapRect = { width: box.width, height: box.height };
          if (!this.userMoved) this.fit();
        });
        this.resizeObserver.observe(this.wrapEl);
      }
    }
    return this.wrapRect;
  }

  zoomBy(factor) {
    const rect = this.wrapSize();
    this.zoomAt(factor, rect.width / 2, rect.height / 2);
  }

  zoomAt(factor, cx, cy) {
    const k = Math.min(3, Math.max(MIN_SCALE, this.view.k * factor));
    const f = k / this.view.k;
    this.view.x = cx - (cx - this.view.x) * f;
    this.view.y = cy - (cy - this.view.y) * f;
    this.view.k = k;
    this.userMoved = true;
    this.applyView();
  }

  /**
   * Show the whole graph, centred. While following a growing run (`keep`), the view stays as it is as long as it
   * still shows the whole graph at no less than 80% of the fitting scale, and a new fit leaves a tenth for growth:
   * every change of the view's transform makes the browser paint and raster the whole graph again, which under a
   * busy run took most of the main thread.
   */
  fit(keep = false) {
    const rect = this.wrapSize();
    const { x, y, width, height } = this.bounds;
    if (!width || !rect.width) return;
    const pad = 22;
    const k = Math.max(MIN_SCALE, Math.min(1.25, (rect.width - 2 * pad) / width, (rect.height - 2 * pad) / height));
    if (keep && this.fitted) {
      const v = this.view;
      // already at the smallest scale, a graph too big to show whole would only be moved about as it grows
      if (v.k <= MIN_SCALE && k <= MIN_SCALE) return;
      const left = x * v.k + v.x, top = y * v.k + v.y;
      const shown = left >= 0 && top >= 0 && left + width * v.k <= rect.width && top + height * v.k <= rect.height;
      if (shown && v.k >= 0.8 * k) return;
    }
    this.view.k = keep && this.fitted ? Math.max(MIN_SCALE, 0.9 * k) : k;
    this.fitted = true;
    this.view.x = (rect.width - width * this.view.k) / 2 - x * this.view.k;
    this.view.y = (rect.height - height * this.view.k) / 2 - y * this.view.k;
    this.userMoved = false;
    this.applyView();
  }

  applyView() {
    this.viewEl.setAttribute("transform", `translate(${this.view.x.toFixed(1)} ${this.view.y.toFixed(1)}) scale(${this.view.k.toFixed(4)})`);
  }

  /** Re-draw for `graph` (from buildGraph); `visible(node)` decides which nodes are dimmed by filters. */
  render(graph, visible, now) {
    this.graph = graph;
    const signature = [...graph.nodes.values()].map((n) => `${n.key}\u0003${n.parent || ""}`).join("\u0001") + "\u0002" + [...graph.edges.keys()].join("\u0001");
    if (signature !== this.signature) {
      const t0 = performance.now();
      this.signature = signature;
      this.placeNew(graph);
      this.rebuild(graph);
      this.requestLayout();
      if (!this.userMoved) this.fit(true);
      performance.measure("graph-rebuild", { start: t0 }); // new nodes or edges: drawn, layout asked for
    }
    this.emptyEl.hidden = graph.nodes.size > 0;
    let running = 0;
    for (const node of graph.nodes.values()) {
      this.updateNode(node, visible(node), now);
      if (node.status === STATUS_RUNNING) running++;
    }
    // Past MAX_SPINNERS running nodes their spinners stand still (the boxes stay blue): each turning spinner is an
    // animation the browser sorts into layers on every frame, which under a busy run took a tenth of its time.
    const calm = running > MAX_SPINNERS;
    if (this.calm !== calm) this.svgEl.classList.toggle("calm", calm);
    this.calm = calm;
    for (const edge of graph.edges.values()) {
      const el = this.edgeEls.get(edge.key);
      const from = graph.nodes.get(edge.from);
      const to = graph.nodes.get(edge.to);
      el.classList.toggle("active", from.status === STATUS_OK && to.status !== PENDING && to.status !== SKIPPED);
      el.classList.toggle("dim", !(visible(from) && visible(to)));
    }
    // particles wait for the render that draws their edge (a data_flow event may be what creates it)
    const queued = this.queuedParticles;
    this.queuedParticles = [];
    for (const [from, to] of queued) this.launchParticle(from, to);
  }

  /** Provisional places for nodes the last layout did not place: all of them at first, else a row below. */
  placeNew(graph) {
    const fresh = [...graph.nodes.keys()].filter((k) => !this.positions.has(k));
    if (!fresh.length) return;
    if (!this.positions.size) {
      const { positions } = quickLayout(graph);
      for (const [key, p] of positions) this.positions.set(key, { x: p.x, y: p.y, w: NODE_W, h: NODE_H });
    } else {
      const { x, y, width, height } = this.bounds;
      const columns = Math.max(1, Math.floor((width + GAP_X) / (NODE_W + GAP_X)));
      fresh.forEach((key, i) => {
        const row = Math.floor(i / columns);
        const col = i % columns;
        this.positions.set(key, { x: x + col * (NODE_W + GAP_X), y: y + height + GAP_Y * 2 + row * (NODE_H + GAP_Y), w: NODE_W, h: NODE_H });
      });
    }
    this.updateBounds();
  }

  updateBounds() {
    let x0 = Infinity;
    let y0 = Infinity;
    let x1 = -Infinity;
    let y1 = -Infinity;
    for (const key of this.graph.nodes.keys()) {
      const p = this.positions.get(key);
      if (!p) continue;
      x0 = Math.min(x0, p.x);
      y0 = Math.min(y0, p.y);
      x1 = Math.max(x1, p.x + p.w);
      y1 = Math.max(y1, p.y + p.h);
    }
    this.bounds = x0 === Infinity ? { x: 0, y: 0, width: 0, height: 0 } : { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
    this.size = { width: this.bounds.width, height: this.bounds.height };
  }

  /** Asks the worker for a layout of the current graph; one at a time, the latest graph next. */
  requestLayout() {
    if (!this.elk || this.layoutBusy || this.layoutTimer) return;
    const wait = this.nextLayoutAt - performance.now();
    if (wait > 0) {
      this.svgEl.dataset.layout = "pending";
      this.layoutTimer = setTimeout(() => {
        this.layoutTimer = null;
        this.requestLayout();
      }, wait);
      return;
    }
    const graph = this.graph;
    const signature = this.signature;
    this.layoutBusy = true;
    this.svgEl.dataset.layout = "pending";
    const started = performance.now();
    const input = elkGraph(graph);
    performance.measure("graph-layout-input", { start: started });
    this.elk.layout(input).then(
      (result) => {
        this.layoutBusy = false;
        const took = performance.now() - started;
        this.nextLayoutAt = performance.now() + Math.max(LAYOUT_GAP_MS, (graph.nodes.size > LARGE_GRAPH ? 4 : 2) * took);
        this.svgEl.dataset.layoutMs = String(Math.round(took));
        this.applyLayout(readElk(result), signature);
        if (this.signature !== signature) this.requestLayout();
      },
      (error) => {
        this.layoutBusy = false;
        console.warn("graph layout failed, keeping the simple layout:", error);
        this.elk = null;
        this.positions = new Map();
        this.placeNew(this.graph);
        this.rebuild(this.graph);
        this.svgEl.dataset.layout = "fallback";
      },
    );
  }

  /**
   * Takes a layout: shifted so that the nodes already on screen stay where they were (by the median of the moves
   * of those that kept their size), so a growing run does not jump; then the elements are moved and resized.
   */
  applyLayout({ boxes, paths }, signature) {
    const t0 = performance.now();
    const dx = [];
    const dy = [];
    for (const sameSize of [true, false]) { // a box that grew is no landmark, unless nothing else is
      for (const [key, box] of boxes) {
        const old = this.positions.get(key);
        if (old && this.placed && this.placed.has(key) && (!sameSize || (old.w === box.w && old.h === box.h))) {
          dx.push(old.x - box.x);
          dy.push(old.y - box.y);
        }
      }
      if (dx.length) break;
    }
    const sx = median(dx);
    const sy = median(dy);
    this.placed = new Set();
    for (const [key, box] of boxes) {
      this.positions.set(key, { x: box.x + sx, y: box.y + sy, w: box.w, h: box.h });
      this.placed.add(key);
    }
    this.paths = new Map();
    for (const [key, points] of paths) this.paths.set(key, points.map((p) => ({ x: p.x + sx, y: p.y + sy })));
    this.layoutCount++;
    this.updateBounds();
    this.rebuild(this.graph);
    if (!this.userMoved) this.fit(true);
    this.svgEl.dataset.layoutCount = String(this.layoutCount);
    this.svgEl.dataset.layout = signature === this.signature ? "done" : "pending";
    this.svgEl.dataset.applyMs = String(Math.round(performance.now() - t0));
    performance.measure("graph-layout-apply", { start: t0 });
  }

  rebuild(graph) {
    for (const [key, el] of this.nodeEls) if (!graph.nodes.has(key)) { el.remove(); this.nodeEls.delete(key); }
    for (const [key, el] of this.edgeEls) if (!graph.edges.has(key)) { el.remove(); this.edgeEls.delete(key); }
    for (const key of this.positions.keys()) if (!graph.nodes.has(key)) this.positions.delete(key);
    const boxes = new Set();
    if (this.elk) for (const node of graph.nodes.values()) if (node.parent) boxes.add(node.parent);
    for (const edge of graph.edges.values()) {
      let el = this.edgeEls.get(edge.key);
      if (!el) {
        el = svg("path", { class: `gedge gedge-${edge.kind}`, "marker-end": "url(#arrow)", "data-from": edge.from, "data-to": edge.to });
        this.edgeEls.set(edge.key, el);
        this.edgesEl.append(el);
      }
      const points = this.placed && this.placed.has(edge.from) && this.placed.has(edge.to) ? this.paths.get(edge.key) : null;
      const d = points ? polyline(points) : edgePath(this.positions.get(edge.from), this.positions.get(edge.to));
      if (el.drawnD !== d) { // an unchanged path is left alone: setting it again repaints it
        el.drawnD = d;
        el.setAttribute("d", d);
      }
    }
    const depth = (node) => {
      let d = 0;
      for (let k = node.parent; k && d < 64; k = graph.nodes.get(k).parent) d++;
      return d;
    };
    const boxNodes = [];
    for (const node of graph.nodes.values()) {
      let el = this.nodeEls.get(node.key);
      if (!el) {
        el = this.createNode(node);
        this.nodeEls.set(node.key, el);
      }
      const isBox = boxes.has(node.key);
      const layer = isBox ? this.boxesEl : this.nodesEl;
      if (el.parentNode !== layer) layer.append(el);
      if (isBox) boxNodes.push([depth(node), el]);
      this.placeNode(node, el, this.positions.get(node.key), isBox, graph);
    }
    boxNodes.sort((a, b) => a[0] - b[0]);
    // outer boxes first; moved only when the order changed (moving an element repaints it)
    const inOrder = boxNodes.length === this.boxesEl.childElementCount
      && boxNodes.every(([, el], i) => this.boxesEl.children[i] === el);
    if (!inOrder) for (const [, el] of boxNodes) this.boxesEl.append(el);
  }

  /** Moves a node's element; when its size changed, resizes it. */
  placeNode(node, g, p, isBox, graph) {
    const w = isBox ? p.w : NODE_W;
    const h = isBox ? p.h : NODE_H;
    const r = g.refs;
    const at = `${p.x} ${p.y}`;
    if (r.at !== at) {
      r.at = at;
      g.setAttribute("transform", `translate(${at})`);
    }
    const owner = node.parent ? graph.nodes.get(node.parent) : null;
    r.owner = owner ? owner.label : "";
    if (r.width === w && r.height === h && r.isBox === isBox) return;
    Object.assign(r, { width: w, height: h, isBox });
    g.classList.toggle("box", isBox);
    g.dataset.box = isBox ? "1" : "";
    r.rect.setAttribute("width", w);
    r.rect.setAttribute("height", h);
    r.stripe.setAttribute("height", (isBox ? NODE_H : h) - 16);
    r.spinner.setAttribute("cx", w - 18);
    if (r.badge) r.badge.setAttribute("transform", `translate(${w - 6} -6)`);
    r.labelFitted = null; // updateNode cuts the label to the room it has
  }

  createNode(node) {
    const g = svg("g", { class: "gnode", tabindex: 0, role: "button", "data-node-id": node.key });
    const title = svg("title", {});
    title.textContent = node.key;
    const rect = svg("rect", { class: "gnode-box", width: NODE_W, height: NODE_H, rx: 9 });
    const stripe = svg("rect", { class: "gnode-stripe", width: 4, height: NODE_H - 16, x: 7, y: 8, rx: 2 });
    const label = svg("text", { class: "gnode-label", x: LABEL_X, y: 20 });
    const meta = svg("text", { class: "gnode-meta", x: META_X, y: 37 });
    const spinner = svg("circle", { class: "gnode-spinner", cx: NODE_W - 18, cy: NODE_H / 2, r: SPINNER_R });
    g.append(title, rect, stripe, label, meta, spinner);
    g.refs = { title, rect, stripe, label, meta, spinner, badge: null, badgeText: null, owner: "", width: 0 };
    return g;
  }

  /** The retry badge of a node, made the first time it has retries. */
  badgeOf(g) {
    if (!g.refs.badge) {
      const badge = svg("g", { class: "gnode-badge", transform: `translate(${Number(g.refs.rect.getAttribute("width")) - 6} -6)` });
      badge.append(svg("circle", { r: 10 }));
      const badgeText = svg("text", { class: "gnode-badge-text", "text-anchor": "middle", y: 4 });
      badge.append(badgeText);
      g.append(badge);
      Object.assign(g.refs, { badge, badgeText });
    }
    return g.refs;
  }

  updateNode(node, visible, now) {
    const g = this.nodeEls.get(node.key);
    if (!g) return;
    const r = g.refs;
    const stall = node.status === STATUS_RUNNING && node.stall ? stallLabel(node.stall, node.stallSpan, now) : "";
    const cls = `gnode st-${node.status} kind-${node.kind}${r.isBox ? " box" : ""}${stall ? ` ${STALLED}` : ""}${visible ? "" : " dim"}${node.latest && node.latest.span_id === this.selectedSpanId ? " selected" : ""}`;
    const owner = r.owner ? ` in ${r.owner}` : "";
    const runs = node.spans.length > 1 ? ` · ×${node.spans.length}` : "";
    let meta = node.kind;
    if (stall) meta = stall;
    else if (node.status === STATUS_RUNNING && node.latest) meta = `${node.kind} · ${formatDuration(now - parseTime(node.latest.start_time))}`;
    else if (node.latest && node.durationMs !== null && node.durationMs !== undefined) meta = `${node.kind} · ${formatDuration(node.durationMs)}`;
    else if (node.status === PENDING || node.status === SKIPPED) meta = `${node.kind} · ${node.status}`;
    const tokens = node.tokens && !stall ? ` · ${formatTokens(node.tokens.input)}→${formatTokens(node.tokens.output)} tok` : "";
    const text = stall ? meta : meta + tokens + runs;
    // the label ends before the spinner while there is one, else before the box's edge
    const room = node.status === STATUS_RUNNING && !stall ? r.width - LABEL_X - 18 - SPINNER_R - SPINNER_GAP : r.width - LABEL_X - 12;
    if (r.labelFitted !== room) {
      r.labelFitted = room;
      r.label.textContent = fitText(node.label, room, r.label);
    }
    const state = `${cls}\u0001${owner}\u0001${text}\u0001${node.retries}\u0001${r.width}`;
    if (r.state === state) return; // most nodes of a large run: nothing to write
    r.state = state;
    g.dataset.status = node.status;
    g.dataset.kind = node.kind;
    g.dataset.stalled = stall ? node.stall.reason : "";
    g.setAttribute("class", cls);
    g.setAttribute("aria-label", `${node.label}${owner}: ${node.status}${stall ? `, ${stall}` : ""}`);
    r.meta.textContent = text;
    if ((stall || node.kind === KIND_LLM) && text.length > STALL_CHARS) { // squeezed into the node's width
      r.meta.setAttribute("textLength", r.width - META_X - 8);
      r.meta.setAttribute("lengthAdjust", "spacingAndGlyphs");
    } else {
      r.meta.removeAttribute("textLength");
    }
    r.title.textContent = `${node.label} (${node.key})${owner} — ${node.status}${stall ? `, ${stall}` : ""}`;
    if (node.retries || r.badge) {
      const { badge, badgeText } = this.badgeOf(g);
      badge.setAttribute("class", node.retries ? "gnode-badge" : "gnode-badge hidden");
      badgeText.textContent = node.retries ? `↻${node.retries}` : "";
    }
    g.dataset.retries = String(node.retries);
  }

  /**
   * Updates the running nodes' durations only (called on a timer). Past MAX_SPINNERS running nodes, at most once a
   * second: each update repaints the graph.
   */
  tick(now) {
    if (this.calm && now - this.tickedAt < CALM_TICK_MS) return;
    this.tickedAt = now;
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
