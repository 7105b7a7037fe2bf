// The stats page: per agent/node/tool name, count, p50/p95 duration and error rate, with a small bar chart.

import { clear, formatDuration, getJSON, h } from "./common.js";
import { displayName } from "./graph.js";

const tbody = document.querySelector("#stats tbody");
const since = document.getElementById("stats-since");

async function load() {
  let data;
  try {
    data = await getJSON(`/api/stats?since=${encodeURIComponent(since.value)}`);
  } catch (err) {
    clear(tbody);
    tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: `Could not load stats: ${err.message}` })));
    return;
  }
  const stats = data.stats.slice().sort((a, b) => b.count - a.count || a.name.localeCompare(b.name));
  const max = Math.max(1e-9, ...stats.map((s) => s.p95_ms || 0));
  clear(tbody);
  for (const s of stats) {
    const p50 = h("div", { class: "bar bar-p50" });
    const p95 = h("div", { class: "bar bar-p95" });
    p50.style.width = `${(100 * (s.p50_ms || 0)) / max}%`;
    p95.style.width = `${(100 * (s.p95_ms || 0)) / max}%`;
    const rate = s.error_rate || 0;
    tbody.append(h("tr", { "data-name": s.name },
      h("td", { class: "col-name", text: displayName({ name: s.name, attributes: {} }), title: s.name }),
      h("td", {}, h("span", { class: "kind-tag", "data-kind": s.kind, text: s.kind })),
      h("td", { class: "num", text: String(s.count) }),
      h("td", { class: "num", text: formatDuration(s.p50_ms) }),
      h("td", { class: "num", text: formatDuration(s.p95_ms) }),
      h("td", { class: `num${rate > 0 ? " has-errors" : ""}`, text: `${(100 * rate).toFixed(rate > 0 && rate < 0.1 ? 1 : 0)}%` }),
      h("td", { class: "col-chart" }, h("div", { class: "bars", role: "img", "aria-label": `p50 ${formatDuration(s.p50_ms)}, p95 ${formatDuration(s.p95_ms)}` }, p95, p50))));
  }
  document.getElementById("stats-empty").hidden = stats.length > 0;
}

document.getElementById("stats-refresh").addEventListener("click", load);
since.addEventListener("change", load);
load();
