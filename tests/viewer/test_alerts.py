"""Stuck work and alerts, end to end: real viewers, real workers (subprocesses where a process boundary matters),
and a real local webhook receiver (http.server on loopback: the stand-in for a chat or paging service)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import otelflow
from otelflow.viewer.alerts import AlertConfigError, parse_rules
from otelflow.wire import ALERT_FIRED, ALERT_RESOLVED, RUN_ENDED, SPAN_ENDED, SPAN_STALLED, SPAN_UNSTALLED
from tests.redis_server import RedisServer
from tests.test_live_exporter import Serve, Worker, free_port
from tests.viewer.conftest import SseClient, Viewer, wait_for

# ------------------------------------------------------------------------------------------------
# a webhook receiver
# ------------------------------------------------------------------------------------------------


class Receiver:
    """A local HTTP server that records JSON bodies; it can fail the first ``fail`` requests (500) and hold
    every request until :meth:`release` (``hold=True``)."""

    def __init__(self, *, fail: int = 0, hold: bool = False) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.requests = 0
        self.fail = fail
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.requests += 1
                receiver.gate.wait(30)
                if receiver.requests <= receiver.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.put(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def release(self) -> None:
        self.gate.set()

    def next(self, timeout: float = 15.0) -> dict[str, Any]:
        return self.bodies.get(timeout=timeout)

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def rules(text: str) -> Any:
    return parse_rules(textwrap.dedent(text))


# ------------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------------

GATED = textwrap.dedent(
    """
    import sys, otelflow
    url, workflow, fail = sys.argv[1], sys.argv[2], sys.argv[3] == "fail"
    t = otelflow.configure(service_name="alert-worker", live=url)
    try:
        with otelflow.workflow(workflow, run_id=f"job-{workflow}") as run:
            with otelflow.agent("waiter") as step:
                print("waiting", flush=True)
                while (line := sys.stdin.readline().strip()) == "move":
                    step.log("info", "moved on")
                    print("moved", flush=True)
                if fail:
                    raise ValueError("the payment provider said no")
    except ValueError:
        pass
    t.force_flush(10_000)
    print("done", flush=True)
    """
)


class Gated(Worker):
    """A worker process in an agent span that waits for stdin: ``move`` logs a line (the span moves), anything
    else ends it (closed like the live-exporter tests' workers)."""

    def __init__(self, url: str, workflow: str, *, fail: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", GATED, url, workflow, "fail" if fail else "ok"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def say(self, word: str) -> None:
        self.stdin.write(word + "\n")
        self.stdin.flush()

    def finish(self) -> str:
        self.say("end")
        return super().finish()


@pytest.fixture
def workers() -> Iterator[Callable[..., Gated]]:
    started: list[Gated] = []

    def start(url: str, workflow: str, *, fail: bool = False) -> Gated:
        worker = Gated(url, workflow, fail=fail)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def in_process(viewer: Viewer) -> Any:
    """otelflow configured in this process, streaming live to ``viewer`` (shut down by the caller)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "alerts-test"}))
    return otelflow.configure(tracer_provider=provider, live=viewer.url, otlp=False)


def of_type(sse: SseClient, type_: str, name: str | None = None) -> dict[str, Any]:
    def match(e: dict[str, Any]) -> bool:
        if e.get("event") != type_:
            return False
        return (
            name is None
            or e["data"].get("span", {}).get("name") == name
            or e["data"].get("alert", {}).get("rule") == name
        )

    return sse.read_until(match)


def alerts(viewer_url: str, status: str = "open") -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{viewer_url}/api/alerts", params={"status": status}, timeout=5).json()
    return answer


# ------------------------------------------------------------------------------------------------
# stalled spans
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_quiet_span_is_flagged_within_its_limit_and_cleared_when_it_moves(
    make_viewer: Callable[..., Viewer], receiver: Receiver, workers: Callable[..., Gated]
) -> None:
    config = rules(
        f"""
        [[rule]]
        name = "agent stuck"
        when = "stalled"
        quiet_s = 1
        kind = ["agent", "tool"]

        [[action]]
        webhook = "{receiver.url}"
        """
    )
    viewer = make_viewer(alerts=config, stall_after_s=None)
    with SseClient(f"{viewer.url}/api/stream", read_timeout=30) as sse:
        worker = workers(viewer.url, "stuck")
        worker.expect("waiting")
        of_type(sse, "span.started", "invoke_agent waiter")
        quiet_from = time.monotonic()
        stalled = of_type(sse, SPAN_STALLED, "invoke_agent waiter")
        assert time.monotonic() - quiet_from <= 1 + 2  # within quiet_s + 2 s
        assert stalled["data"]["stalled"]["reason"] == "quiet"
        assert stalled["data"]["stalled"]["rule"] == "agent stuck"
        fired = of_type(sse, ALERT_FIRED, "agent stuck")["data"]["alert"]
        assert fired["span_name"] == "invoke_agent waiter"
        assert fired["workflow"] == "stuck"
        assert "quiet for" in fired["message"]
        run = httpx.get(f"{viewer.url}/api/runs/job-stuck", timeout=5).json()
        assert run["run"]["stalled_count"] == 1
        assert next(iter(run["stalled"].values()))["reason"] == "quiet"
        assert [r["otelflow_run_id"] for r in httpx.get(f"{viewer.url}/api/runs?status=stalled").json()["runs"]] == [
            "job-stuck"
        ]
        assert httpx.get(f"{viewer.url}/api/now", timeout=5).json()["open_alerts"] == 1
        hook = receiver.next()
        assert hook["alert"]["status"] == "open"
        assert hook["alert"]["id"] == fired["id"]

        worker.say("move")  # progress: the span moves again
        worker.expect("moved")
        of_type(sse, SPAN_UNSTALLED, "invoke_agent waiter")
        resolved = of_type(sse, ALERT_RESOLVED, "agent stuck")["data"]["alert"]
        assert resolved["id"] == fired["id"]
        assert receiver.next()["alert"]["status"] == "resolved"
        assert httpx.get(f"{viewer.url}/api/runs/job-stuck", timeout=5).json()["run"]["stalled_count"] == 0
        assert alerts(viewer.url)["alerts"] == []
        assert [a["id"] for a in alerts(viewer.url, "resolved")["alerts"]] == [fired["id"]]
        worker.finish()
        of_type(sse, RUN_ENDED)


def test_a_span_far_past_the_p95_of_its_name_is_flagged_slow(make_viewer: Callable[..., Viewer]) -> None:
    config = rules(
        """
        [[rule]]
        name = "slow tool"
        when = "stalled"
        slow_factor = 3
        kind = "tool"
        """
    )
    viewer = make_viewer(alerts=config, stall_after_s=None, durations_every_s=0.2)
    telemetry = in_process(viewer)
    try:
        with otelflow.workflow("fetcher"):
            for _ in range(20):
                with otelflow.tool("fetch"):
                    time.sleep(0.01)
        assert telemetry.force_flush(10_000)
        policy = viewer.hub.state.stall  # its p95_ms is replaced whole on each refresh
        known = wait_for(
            lambda: (d := policy.p95_ms.get(("tool", "execute_tool fetch"))) is not None and d[0] == 20 and d,
            what="the p95 of 20 fetches",
        )
        with SseClient(f"{viewer.url}/api/stream", read_timeout=30) as sse:
            flagged = threading.Event()
            reader = threading.Thread(
                target=lambda: (of_type(sse, SPAN_STALLED, "execute_tool fetch"), flagged.set()), daemon=True
            )
            reader.start()
            with otelflow.workflow("fetcher"), otelflow.tool("fetch") as step:
                # busy, never quiet: progress every 20 ms, until it has run past 3 x its p95
                while not flagged.wait(0.02):
                    step.progress(50.0, "still fetching")
            reader.join(5)
            assert telemetry.force_flush(10_000)
            stall = next(e for e in sse.events if e["event"] == SPAN_STALLED)["data"]["stalled"]
            assert stall["reason"] == "slow"
            assert stall["limit_s"] == pytest.approx(3 * known[1] / 1000, abs=0.001)
            ended = sse.read_until(
                lambda e: e["event"] == SPAN_ENDED and e["data"]["span"]["name"] == "execute_tool fetch"
            )
        order = [
            e["event"]
            for e in sse.events
            if e["data"].get("span", {}).get("span_id") == ended["data"]["span"]["span_id"]
        ]
        assert order.index(SPAN_UNSTALLED) < order.index(SPAN_ENDED)  # cleared before it ends
        assert alerts(viewer.url)["open"] == 0
        assert [a["rule"] for a in alerts(viewer.url, "resolved")["alerts"]] == ["slow tool"]
    finally:
        telemetry.shutdown()


def test_without_a_rules_file_a_span_quiet_for_the_default_is_stalled_but_nothing_alerts(
    make_viewer: Callable[..., Viewer],
) -> None:
    viewer = make_viewer(stall_after_s=1.0)  # `otelflow serve --stall-after 1`; the default is 300
    telemetry = in_process(viewer)
    release = threading.Event()
    try:
        with SseClient(f"{viewer.url}/api/stream?status=stalled", read_timeout=30) as sse:
            thread = threading.Thread(target=_blocked_workflow, args=("quiet-one", release), daemon=True)
            thread.start()
            stalled = sse.read_until(lambda e: e["event"] == SPAN_STALLED)
            # the agent is the stuck one; its workflow, waiting on it, is not flagged
            assert stalled["data"]["span"]["name"] == "invoke_agent blocked"
            assert stalled["data"]["stalled"]["rule"] == "default"
            release.set()
            thread.join(10)
            sse.read_until(lambda e: e["event"] == RUN_ENDED)
        changes = [(e["event"], e["data"]["span"]["span_id"]) for e in sse.events if e["event"].startswith("span.")]
        assert changes == [
            (SPAN_STALLED, stalled["data"]["span"]["span_id"]),
            (SPAN_UNSTALLED, stalled["data"]["span"]["span_id"]),
        ]
        # the filtered stream carried stalls and their runs only, no ordinary span events
        assert {e["event"] for e in sse.events} <= {SPAN_STALLED, SPAN_UNSTALLED, "run.updated", "run.ended"}
        assert alerts(viewer.url) == {**alerts(viewer.url), "alerts": [], "open": 0, "rules": []}
    finally:
        release.set()
        telemetry.shutdown()


def _blocked_workflow(name: str, release: threading.Event) -> None:
    with otelflow.workflow(name), otelflow.agent("blocked"):
        release.wait(30)


# ------------------------------------------------------------------------------------------------
# runs: failed, slow, error rate
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failed_run_fires_exactly_one_webhook(
    make_viewer: Callable[..., Viewer], receiver: Receiver, workers: Callable[..., Gated]
) -> None:
    slack = Receiver()
    try:
        config = rules(
            f"""
            [[rule]]
            name = "payments failed"
            when = "run_failed"
            workflow = "payments"

            [[action]]
            webhook = "{receiver.url}"

            [[action]]
            webhook = "{slack.url}"
            format = "slack"
            """
        )
        viewer = make_viewer(alerts=config, stall_after_s=None)
        worker = workers(viewer.url, "payments", fail=True)
        worker.expect("waiting")
        worker.finish()
        other = workers(viewer.url, "reports", fail=True)  # another workflow: the rule does not watch it
        other.expect("waiting")
        other.finish()
        hook = receiver.next()["alert"]
        assert hook["rule"] == "payments failed"
        assert hook["workflow"] == "payments"
        assert "ended error" in hook["message"]
        assert slack.next()["text"].startswith(":rotating_light: *payments failed* fired:")
        wait_for(lambda: httpx.get(f"{viewer.url}/api/runs/job-reports", timeout=5).json()["run"]["status"] == "error")
        delivery = wait_for(
            lambda: (d := alerts(viewer.url)["delivery"])["sent"] == 2 and d, what="both webhooks delivered"
        )
        assert delivery["failed_attempts"] == 0
        assert receiver.requests == 1
        assert slack.requests == 1
        assert alerts(viewer.url)["stats"]["fired"] == 1
        # a later successful run of the workflow resolves it
        ok = workers(viewer.url, "payments")
        ok.expect("waiting")
        ok.finish()
        assert receiver.next()["alert"]["status"] == "resolved"
    finally:
        slack.close()


@pytest.mark.slow
def test_a_webhook_that_is_down_or_slow_delays_nothing_and_is_retried(
    make_viewer: Callable[..., Viewer], workers: Callable[..., Gated]
) -> None:
    stuck = Receiver(hold=True)  # answers nothing until released
    flaky = Receiver(fail=2)  # 500, 500, then 204
    try:
        config = rules(
            f"""
            [[rule]]
            name = "any failure"
            when = "run_failed"

            [[action]]
            webhook = "{stuck.url}"
            timeout_s = 30

            [[action]]
            webhook = "{flaky.url}"
            """
        )
        viewer = make_viewer(alerts=config, stall_after_s=None)
        failing = workers(viewer.url, "flaky-job", fail=True)
        failing.expect("waiting")
        failing.finish()
        wait_for(lambda: stuck.requests == 1, what="the stuck receiver to be called")
        # the stuck receiver holds its delivery: ingestion, streams and the API go on
        with SseClient(f"{viewer.url}/api/stream", read_timeout=30) as sse:
            later = workers(viewer.url, "later")
            later.expect("waiting")
            later.finish()
            sse.read_until(lambda e: e["event"] == RUN_ENDED and e["data"]["run"]["otelflow_run_id"] == "job-later")
        assert httpx.get(f"{viewer.url}/healthz", timeout=5).json()["status"] == "ok"
        # the flaky receiver got its alert on the third attempt (backoff 1 s, then 2 s)
        assert flaky.next()["alert"]["rule"] == "any failure"
        assert flaky.requests == 3
        delivery = alerts(viewer.url)["delivery"]
        assert delivery["retried"] == 2
        assert delivery["last_error"] == "HTTP 500"
        assert stuck.bodies.empty()
        stuck.release()
        assert stuck.next()["alert"]["rule"] == "any failure"
    finally:
        stuck.close()
        flaky.close()


def test_a_run_past_its_limit_alerts_while_it_runs_and_resolves_when_it_ends(
    make_viewer: Callable[..., Viewer],
) -> None:
    config = rules(
        """
        [[rule]]
        name = "nightly too long"
        when = "run_slow"
        over_s = 0.5
        workflow = "nightly"
        """
    )
    viewer = make_viewer(alerts=config, stall_after_s=None)
    telemetry = in_process(viewer)
    release = threading.Event()
    try:
        with SseClient(f"{viewer.url}/api/stream?type=alert", read_timeout=30) as sse:
            thread = threading.Thread(target=_blocked_workflow, args=("nightly", release), daemon=True)
            thread.start()
            fired = sse.read_until(lambda e: e["event"] == ALERT_FIRED)["data"]["alert"]
            assert fired["when"] == "run_slow"
            assert fired["details"]["limit_s"] == 0.5
            release.set()
            thread.join(10)
            resolved = sse.read_until(lambda e: e["event"] == ALERT_RESOLVED)["data"]["alert"]
            assert resolved["id"] == fired["id"]
            assert resolved["resolution"] == "the run ended"
    finally:
        release.set()
        telemetry.shutdown()


def test_an_error_rate_over_its_threshold_alerts_and_resolves_when_it_falls(make_viewer: Callable[..., Viewer]) -> None:
    config = rules(
        """
        [[rule]]
        name = "ingest errors"
        when = "error_rate"
        per = "workflow"
        threshold = 0.5
        min_count = 3
        window_s = 600
        """
    )
    viewer = make_viewer(alerts=config, stall_after_s=None)
    telemetry = in_process(viewer)

    def run(fail: bool) -> None:
        try:
            with otelflow.workflow("ingest"):
                if fail:
                    raise RuntimeError("bad row")
        except RuntimeError:
            pass
        assert telemetry.force_flush(10_000)

    try:
        with SseClient(f"{viewer.url}/api/stream?type=alert", read_timeout=30) as sse:
            for fail in (True, False, True):  # 2 of 3 failed: 67% >= 50%
                run(fail)
            fired = sse.read_until(lambda e: e["event"] == ALERT_FIRED)["data"]["alert"]
            assert fired["details"] == {"failures": 2, "count": 3, "rate": 0.6667, "group": "ingest"}
            for fail in (False, False):  # 2 of 5: 40%
                run(fail)
            resolved = sse.read_until(lambda e: e["event"] == ALERT_RESOLVED)["data"]["alert"]
            assert resolved["id"] == fired["id"]
        assert [e["event"] for e in sse.events] == [ALERT_FIRED, ALERT_RESOLVED]  # once, not once per failure
    finally:
        telemetry.shutdown()


# ------------------------------------------------------------------------------------------------
# a restart, a bad file, a cluster
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_open_alerts_survive_a_restart(tmp_path: Path, receiver: Receiver, workers: Callable[..., Gated]) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(
        f'[[rule]]\nname = "agent stuck"\nwhen = "stalled"\nquiet_s = 1\n\n[[action]]\nwebhook = "{receiver.url}"\n'
    )
    serve = Serve(free_port(), tmp_path / "viewer.db", "--alerts", str(path)).start()
    try:
        worker = workers(serve.url, "restartable")
        worker.expect("waiting")
        fired = receiver.next()["alert"]
        assert fired["status"] == "open"
        wait_for(lambda: alerts(serve.url)["open"] == 1, what="the alert")
        assert serve.proc is not None
        serve.proc.terminate()  # a restart, not a crash: the alert was stored when it fired
        serve.proc.wait(15)
        assert serve.proc.stdout is not None
        serve.proc.stdout.close()
        serve.start()
        kept = alerts(serve.url)["alerts"]
        assert [(a["id"], a["status"]) for a in kept] == [(fired["id"], "open")]
        # the span is stalled again after the restart: the same subject does not fire twice
        wait_for(lambda: httpx.get(f"{serve.url}/api/now", timeout=5).json()["stalled"] == 1, what="stalled again")
        worker.say("move")  # reaches the restarted viewer once the worker's exporter is back from its backoff
        worker.expect("moved")
        resolved = receiver.next()["alert"]
        assert (resolved["id"], resolved["status"]) == (fired["id"], "resolved")
        worker.finish()
        assert alerts(serve.url)["stats"]["fired"] == 0  # this process fired nothing new
    finally:
        serve.kill()


@pytest.mark.parametrize(
    ("text", "where", "field"),
    [
        ('[[rule]]\nname = "x"\nwhen = "stalled"\nquiet_s = "soon"\n', ":4:", "quiet_s"),
        ('[[rule]]\nname = "x"\nwhen = "stuck"\n', ":3:", "when"),
        ('[[rule]]\nname = "a"\nwhen = "run_failed"\n\n[[rule]]\nwhen = "run_failed"\nkind = 3\n', ":5:", "name"),
        ('[[rule]]\nname = "x"\nwhen = "run_failed"\nquiet_s = 3\n', ":4:", "quiet_s"),
        ('[[action]]\nwebhook = "ftp://x"\n', ":2:", "webhook"),
        ('[[rule]]\nname = "x"\nwhen = "error_rate"\nthreshold = 1.5\n', ":4:", "threshold"),
    ],
)
def test_a_bad_rules_file_names_its_line_and_field(text: str, where: str, field: str) -> None:
    with pytest.raises(AlertConfigError) as info:
        parse_rules(text, "alerts.toml")
    message = str(info.value)
    assert message.startswith(f"alerts.toml{where}")
    assert f"field {field!r}" in message


def test_serve_refuses_a_bad_rules_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "alerts.toml"
    bad.write_text('[[rule]]\nname = "x"\nwhen = "stalled"\nquiet_s = -1\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[[rule]\n")
    for path, expect in ((bad, ":4: rule 'x': field 'quiet_s' must be a number > 0"), (broken, "not valid TOML")):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "otelflow.cli",
                "serve",
                "--port",
                "0",
                "--db",
                str(tmp_path / "v.db"),
                "--alerts",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expect in lines[0]
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_alert_fires_once_for_a_cluster_of_replicas(
    tmp_path: Path, receiver: Receiver, workers: Callable[..., Gated]
) -> None:
    rules_file = tmp_path / "alerts.toml"
    rules_file.write_text(
        f'[[rule]]\nname = "any failure"\nwhen = "run_failed"\n\n[[action]]\nwebhook = "{receiver.url}"\n'
    )
    redis = RedisServer().start()
    broker = redis.url
    replicas = [
        Serve(free_port(), tmp_path / f"r{i}.db", "--alerts", str(rules_file), "--broker", broker).start()
        for i in (1, 2)
    ]
    try:
        urls = ",".join(r.url for r in replicas)
        worker = workers(urls, "payments", fail=True)
        worker.expect("waiting")
        worker.finish()
        receiver.next()
        wait_for(lambda: all(alerts(r.url)["stats"]["fired"] + alerts(r.url)["open"] >= 1 for r in replicas))
        assert receiver.requests == 1
    finally:
        for r in replicas:
            r.kill()
        redis.close()


def test_an_open_alert_of_a_rule_taken_out_of_the_file_is_resolved_at_start(
    make_viewer: Callable[..., Viewer], new_db: Callable[[], str]
) -> None:
    db = new_db()
    first = make_viewer(db=db, alerts=rules('[[rule]]\nname = "old"\nwhen = "run_slow"\nover_s = 0.2\n'))
    telemetry = in_process(first)
    release = threading.Event()
    thread = threading.Thread(target=_blocked_workflow, args=("long", release), daemon=True)
    try:
        thread.start()
        fired = wait_for(lambda: alerts(first.url)["alerts"], what="the alert")[0]
        first.stop()
    finally:
        release.set()
        thread.join(10)
        telemetry.shutdown()
    second = make_viewer(db=db, alerts=rules('[[rule]]\nname = "new"\nwhen = "run_failed"\n'))
    assert alerts(second.url)["alerts"] == []
    stored = wait_for(lambda: alerts(second.url, "resolved")["alerts"], what="the resolved alert")
    assert [(a["id"], a["resolution"]) for a in stored] == [(fired["id"], "its rule is no longer in the rules file")]


def test_an_alert_resolved_by_hand_stays_resolved_while_its_span_stays_stuck(
    make_viewer: Callable[..., Viewer],
) -> None:
    viewer = make_viewer(alerts=rules('[[rule]]\nname = "stuck"\nwhen = "stalled"\nquiet_s = 1\n'), stall_after_s=None)
    telemetry = in_process(viewer)
    release = threading.Event()
    thread = threading.Thread(target=_blocked_workflow, args=("held", release), daemon=True)
    try:
        thread.start()
        fired = wait_for(lambda: alerts(viewer.url)["alerts"], what="the alert")[0]
        done = httpx.post(f"{viewer.url}/api/alerts/{fired['id']}/resolve", timeout=5).json()["alert"]
        assert (done["status"], done["resolution"]) == ("resolved", "resolved by hand")
        ticks = alerts(viewer.url)["stats"]["ticks"]
        wait_for(lambda: alerts(viewer.url)["stats"]["ticks"] >= ticks + 2, what="two more checks")
        assert httpx.get(f"{viewer.url}/api/now", timeout=5).json()["stalled"] == 1  # still stuck
        assert alerts(viewer.url)["stats"]["fired"] == 1  # but not alerted again
        assert httpx.post(f"{viewer.url}/api/alerts/{fired['id']}/resolve", timeout=5).status_code == 404
    finally:
        release.set()
        thread.join(10)
        telemetry.shutdown()
