// The header of every page: how many runs are running now ("· N stalled" when some have stalled work) and a bell
// with the number of open alerts, whose panel lists them and says when webhook delivery fails.
//
// Loaded from /api/now and /api/alerts at page load. A page whose stream carries every run.* and alert.* event
// (the runs page) keeps it live from those events (`follow({ complete: true })`); any other page polls /api/now
// (one small request) every POLL_MS, and re-reads /api/alerts only when the number of open alerts changed. A page
// with a narrower stream (the run page: its own run) polls and also reacts to its events at once. While the panel
// is open, every page re-reads /api/alerts every POLL_MS (webhook delivery changes without any event).

import { apiUrl, clear, every, formatWhen, getJSON, h } from "./common.js";
import { ALERT_FIRED, ALERT_RESOLVED, RUN_ENDED, RUN_STARTED, RUN_UPDATED, STALLED, STATUS_RUNNING } from "./wire.js";

const POLL_MS = 2500;
const SETTLE_MS = 150; // events of one burst make one request

const $ = (id) => document.getElementById(id);

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** A page link that keeps the page's `?token=` (as the runs page links its runs). */
function pageHref(path, params = {}) {
  const url = apiUrl(path, params);
  return url.pathname + url.search;
}

class NowHeader {
  constructor() {
    this.el = {
      now: $("now"), running: $("now-running"), stalled: $("now-stalled"), bell: $("bell"), count: $("bell-count"),
      panel: $("alerts-panel"), list: $("alerts-list"), empty: $("alerts-empty"), delivery: $("alerts-delivery"),
    };
    this.running = null;
    this.stalledRuns = null;
    this.openCount = 0;
    this.alerts = new Map(); // alert id -> open alert
    this.delivery = null;
    this.stalledSeen = new Map(); // trace id -> whether the stream last said it had stalled spans
    this.complete = false; // the page's stream carries every run.* and alert.* event
    this.pending = { now: null, alerts: null };
    this.requests = { now: 0, alerts: 0 }; // only the newest answer of each is shown
    this.started = false;
  }

  start() {
    if (this.started || !this.el.bell) return;
    this.started = true;
    this.el.running.href = pageHref("/", { status: STATUS_RUNNING });
    this.el.stalled.href = pageHref("/", { status: STALLED });
    this.el.bell.addEventListener("click", () => this.toggle());
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !this.el.panel.hidden) {
        this.toggle(false);
        this.el.bell.focus();
      }
    });
    document.addEventListener("click", (e) => {
      if (!this.el.panel.hidden && !e.target.closest("#alerts-panel, #bell")) this.toggle(false);
    });
    this.refresh();
    every(POLL_MS, () => this.poll());
  }

  /** The page has a stream: `complete` when it carries every run.* and alert.* event (no polling needed). */
  follow({ complete }) {
    if (!complete || this.complete) return;
    this.complete = true;
    this.refresh(); // read after the point the stream starts from: no change falls between the two
  }

  /** Re-read both (page load, a `reset` of the page's stream). */
  refresh() {
    this.fetchNow();
    this.fetchAlerts();
  }

  poll() {
    if (!this.complete) this.fetchNow();
    if (!this.el.panel.hidden) this.fetchAlerts();
  }

  /** An event of the page's stream. */
  onEvent(envelope) {
    const type = envelope.type;
    if (type === ALERT_FIRED || type === ALERT_RESOLVED) {
      const alert = envelope.alert;
      if (alert && alert.id) {
        if (type === ALERT_FIRED && !this.alerts.has(alert.id)) {
          this.alerts.set(alert.id, alert);
          this.openCount++;
        } else if (type === ALERT_RESOLVED && this.alerts.delete(alert.id)) {
          this.openCount = Math.max(0, this.openCount - 1);
        }
        this.render();
      }
      this.soon("alerts");
      this.soon("now");
    } else if (type === RUN_STARTED || type === RUN_ENDED || type === RUN_UPDATED) {
      const run = envelope.run;
      if (!run) return;
      const stalled = (run.stalled_count || 0) > 0;
      const changed = (this.stalledSeen.get(run.trace_id) || false) !== stalled;
      if (type === RUN_ENDED) this.stalledSeen.delete(run.trace_id);
      else this.stalledSeen.set(run.trace_id, stalled);
      if (type !== RUN_UPDATED || changed) this.soon("now");
    }
  }

  soon(what) {
    if (this.pending[what] !== null) return;
    this.pending[what] = setTimeout(() => {
      this.pending[what] = null;
      if (what === "now") this.fetchNow();
      else this.fetchAlerts();
    }, SETTLE_MS);
  }

  async fetchNow() {
    const request = ++this.requests.now;
    let data;
    try {
      data = await getJSON("/api/now");
    } catch {
      return; // the connection badge (or the next poll) tells of outages
    }
    if (request !== this.requests.now) return;
    this.running = data.running;
    this.stalledRuns = data.stalled;
    const alertsChanged = data.open_alerts !== this.openCount;
    this.render();
    if (alertsChanged) this.soon("alerts");
  }

  async fetchAlerts() {
    const request = ++this.requests.alerts;
    let data;
    try {
      data = await getJSON("/api/alerts");
    } catch {
      return;
    }
    if (request !== this.requests.alerts) return;
    this.alerts = new Map(data.alerts.map((a) => [a.id, a]));
    this.openCount = data.open;
    this.delivery = data.delivery || null;
    this.render();
  }

  toggle(open = this.el.panel.hidden) {
    this.el.panel.hidden = !open;
    this.el.bell.setAttribute("aria-expanded", String(open));
    if (open) this.fetchAlerts();
  }

  render() {
    const { now, running, stalled, bell, count } = this.el;
    if (this.running !== null) {
      now.hidden = false;
      now.dataset.running = String(this.running);
      now.dataset.stalled = String(this.stalledRuns || 0);
      running.textContent = `${this.running} running`;
      stalled.textContent = `· ${this.stalledRuns} stalled`;
      stalled.hidden = !(this.stalledRuns > 0);
    }
    const open = this.openCount;
    count.textContent = String(open);
    bell.dataset.count = String(open);
    bell.setAttribute("aria-label", `${plural(open, "open alert")}: show them`);
    bell.title = plural(open, "open alert");
    this.renderPanel();
  }

  renderPanel() {
    const { list, empty, delivery } = this.el;
    clear(list);
    const alerts = [...this.alerts.values()].sort((a, b) => (b.fired_ns || 0) - (a.fired_ns || 0));
    for (const alert of alerts) {
      const run = alert.run_id
        ? h("a", { class: "alert-run", href: pageHref(`/runs/${encodeURIComponent(alert.run_id)}`) },
          `Open run ${alert.otelflow_run_id || alert.workflow || `${alert.run_id.slice(0, 12)}…`}`)
        : null;
      list.append(h("li", { class: "alert", "data-alert-id": alert.id, "data-rule": alert.rule },
        h("div", { class: "alert-head" },
          h("span", { class: "alert-rule", text: alert.rule }),
          h("time", { class: "alert-time", datetime: alert.fired_at || "", text: formatWhen(alert.fired_ns / 1e6) })),
        h("div", { class: "alert-message", text: alert.message || "" }),
        run));
    }
    empty.hidden = alerts.length > 0 || this.openCount > 0;
    const d = this.delivery;
    const failing = d && ((d.failed_attempts || 0) > 0 || (d.given_up || 0) > 0);
    delivery.hidden = !failing;
    if (failing) {
      const parts = [`${plural(d.failed_attempts || 0, "failed attempt")}`];
      if (d.given_up) parts.push(`${d.given_up} given up`);
      // last_error_time is epoch seconds (time.time()); an ISO time is read too
      const t = d.last_error_time;
      const when = t ? ` (${formatWhen(typeof t === "number" ? t * 1000 : Date.parse(t))})` : "";
      const error = d.last_error ? ` · last error: ${d.last_error}${when}` : "";
      delivery.textContent = `Webhook delivery: ${parts.join(", ")}${error}`;
    }
  }
}

export const header = new NowHeader();
header.start();
