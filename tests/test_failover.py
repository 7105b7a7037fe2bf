"""Live streaming to several viewer replicas: a real SDK tracer, real viewers on loopback, one of them dying."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

import otelflow
from otelflow import sinks
from otelflow._log import RateLimitedLog
from otelflow.sinks import LiveExporter, viewer_urls
from tests.test_live_exporter import Serve, free_port
from tests.viewer.conftest import Viewer, wait_for

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def fresh_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own first failover message (the limiter is process-wide and holds keys for 30 s)."""
    monkeypatch.setattr(sinks, "problems", RateLimitedLog())


def run_spans(url: str, run: str, headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """``{span name: status}`` of ``run`` on the viewer at ``url``, or None while it does not know the run."""
    response = httpx.get(f"{url}/api/runs/{run}", headers=headers, timeout=5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return {s["name"]: s["status"] for s in response.json()["spans"]}


def failover_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "otelflow" and "live spans go to" in r.getMessage()]


def test_viewer_urls_takes_one_or_several_urls() -> None:
    assert viewer_urls("http://127.0.0.1:8081") == ("http://127.0.0.1:8081",)
    assert viewer_urls("http://127.0.0.1:8081/, https://viewer.example:8443/otelflow") == (
        "http://127.0.0.1:8081",
        "https://viewer.example:8443/otelflow",
    )
    assert viewer_urls(["http://a:1", " http://b:2 "]) == ("http://a:1", "http://b:2")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://127.0.0.1:8081,,http://127.0.0.1:8082", "an empty item"),
        ("http://127.0.0.1:8081,", "an empty item"),
        ("http://127.0.0.1:8081, ftp://127.0.0.1:8082", "must look like http://127.0.0.1:8080, got 'ftp:"),
        ("http://127.0.0.1:8081,127.0.0.1:8082", "must look like http://127.0.0.1:8080, got '127.0.0.1:8082'"),
        ("http://127.0.0.1:99999", "out of range"),
    ],
)
def test_a_bad_item_in_the_viewer_urls_is_a_clear_error_at_configure_time(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=message) as argument:
        otelflow.configure(tracer_provider=TracerProvider(), otlp=False, live=value)
    assert str(argument.value).startswith("live: ")
    monkeypatch.setenv("OTELFLOW_VIEWER_URL", value)
    with pytest.raises(ValueError, match=message) as env:
        otelflow.configure(tracer_provider=TracerProvider(), otlp=False)
    assert str(env.value).startswith("OTELFLOW_VIEWER_URL: ")


def test_configure_reads_several_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELFLOW_VIEWER_URL", "http://127.0.0.1:8081, http://127.0.0.1:8082/")
    telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp=False)
    try:
        sink = telemetry.sink
        assert isinstance(sink, LiveExporter)
        assert sink.urls == ("http://127.0.0.1:8081", "http://127.0.0.1:8082")
        assert sink.url == "http://127.0.0.1:8081"  # the first one until it fails
    finally:
        telemetry.shutdown()


def test_spans_move_to_the_second_viewer_when_the_first_stops_mid_run(
    make_viewer: Callable[..., Viewer], caplog: pytest.LogCaptureFixture
) -> None:
    first = make_viewer(token=TOKEN)
    second = make_viewer(token=TOKEN)
    # credentials in a URL never reach the logs; spaces around the comma are fine
    first_url = first.url.replace("http://", "http://someone:hunter2@")
    caplog.set_level(logging.WARNING, logger="otelflow")
    telemetry = otelflow.configure(
        tracer_provider=TracerProvider(), otlp=False, live=f"{first_url} , {second.url}", token=TOKEN
    )
    try:
        with otelflow.workflow("replicated", run_id="job-failover"):
            with otelflow.agent("step0"):
                # the run is live on the first viewer; nothing of it has ended yet
                wait_for(
                    lambda: (
                        run_spans(first.url, "job-failover", AUTH)
                        == {"invoke_workflow replicated": "running", "invoke_agent step0": "running"}
                    ),
                    what="the running run on the first viewer",
                )
                assert run_spans(second.url, "job-failover", AUTH) is None  # one replica at a time
                first.stop()  # the first replica goes away for good, mid-run
                with otelflow.tool("lookup"):
                    pass
            for i in (1, 2):
                with otelflow.agent(f"step{i}"):
                    pass
        assert telemetry.force_flush(10_000)

        expected = {
            "invoke_workflow replicated": "ok",
            "invoke_agent step0": "ok",
            "execute_tool lookup": "ok",
            "invoke_agent step1": "ok",
            "invoke_agent step2": "ok",
        }
        wait_for(lambda: run_spans(second.url, "job-failover", AUTH) == expected, what="every span on the second")
        run = httpx.get(f"{second.url}/api/runs/job-failover", headers=AUTH, timeout=5).json()["run"]
        assert run["status"] == "ok"
        sink = telemetry.sink
        assert isinstance(sink, LiveExporter)
        assert sink.url == second.url  # it stays on the replica that works
        assert sink.dropped == 0
    finally:
        telemetry.shutdown()
    (line,) = failover_lines(caplog)  # logged once
    assert f"viewer at {first.url} unreachable" in line
    assert line.endswith(f"live spans go to {second.url} now")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "hunter2" not in logged
    assert TOKEN not in logged


@pytest.mark.slow
def test_spans_in_flight_at_a_replica_that_hangs_then_dies_reach_the_next(
    tmp_path: Path, make_viewer: Callable[..., Viewer], caplog: pytest.LogCaptureFixture
) -> None:
    hung = Serve(free_port(), tmp_path / "hung.db").start()  # a real `otelflow serve` in its own process
    second = make_viewer()
    caplog.set_level(logging.WARNING, logger="otelflow")
    exporter = LiveExporter([hung.url, second.url], timeout_s=0.5, heartbeat_s=60)
    telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp=False, live=exporter)
    try:
        with otelflow.workflow("hung", run_id="job-hung"):
            with otelflow.agent("step0"):
                wait_for(lambda: run_spans(hung.url, "job-hung") is not None, what="the run on the first viewer")
                assert hung.proc is not None
                hung.proc.send_signal(signal.SIGSTOP)  # it still accepts connections, and never answers
                # this batch goes to the frozen replica: the post is in flight when it dies
                with otelflow.tool("in-flight"):
                    pass
                assert telemetry.force_flush(10_000)  # it timed out there and went to the second
                hung.kill()
            with otelflow.agent("step1"):
                pass
        assert telemetry.force_flush(10_000)
        expected = {
            "invoke_workflow hung": "ok",
            "invoke_agent step0": "ok",
            "execute_tool in-flight": "ok",
            "invoke_agent step1": "ok",
        }
        wait_for(lambda: run_spans(second.url, "job-hung") == expected, what="every span on the second viewer")
        assert exporter.dropped == 0
        assert exporter.failovers == 1
    finally:
        telemetry.shutdown()
        hung.kill()
    (line,) = failover_lines(caplog)
    assert f"viewer at {hung.url} unreachable (timed out)" in line


def test_a_4xx_answer_is_not_a_reason_to_fail_over(
    make_viewer: Callable[..., Viewer], caplog: pytest.LogCaptureFixture
) -> None:
    # The first replica wants a token the worker does not have: every replica would say the same, so the
    # worker must not take it elsewhere (here the second happens to need no token, which would hide the mistake).
    first = make_viewer(token=TOKEN)
    second = make_viewer()
    caplog.set_level(logging.WARNING, logger="otelflow")
    telemetry = otelflow.configure(
        tracer_provider=TracerProvider(), otlp=False, live=[first.url, second.url], token="wrong-token"
    )
    try:
        with otelflow.workflow("refused", run_id="job-refused"), otelflow.agent("step0"):
            pass
        assert telemetry.force_flush(10_000)  # handled: refused for good, not pending
        sink = telemetry.sink
        assert isinstance(sink, LiveExporter)
        assert sink.url == first.url
        assert sink.failovers == 0
    finally:
        telemetry.shutdown()
    assert httpx.get(f"{second.url}/api/runs", timeout=5).json()["runs"] == []
    assert run_spans(first.url, "job-refused", AUTH) is None
    assert not failover_lines(caplog)
    assert any(f"viewer at {first.url} refused live spans: HTTP 401" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_worker_starts_on_a_live_replica_and_stays_there_when_the_dead_one_comes_up(
    tmp_path: Path, make_viewer: Callable[..., Viewer], caplog: pytest.LogCaptureFixture
) -> None:
    late = Serve(free_port(), tmp_path / "late.db")  # first in the list, not started yet
    second = make_viewer()
    caplog.set_level(logging.WARNING, logger="otelflow")
    exporter = LiveExporter(f"{late.url},{second.url}", heartbeat_s=60)
    telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp=False, live=exporter)
    try:
        with otelflow.workflow("early", run_id="job-early"):
            pass
        assert telemetry.force_flush(10_000)
        assert run_spans(second.url, "job-early") == {"invoke_workflow early": "ok"}
        late.start()  # the first replica comes up: the worker does not go back to it
        with otelflow.workflow("later", run_id="job-later"):
            pass
        assert telemetry.force_flush(10_000)
        assert run_spans(second.url, "job-later") == {"invoke_workflow later": "ok"}
        assert httpx.get(f"{late.url}/api/runs", timeout=5).json()["runs"] == []
        assert exporter.url == second.url
    finally:
        telemetry.shutdown()
        late.kill()
    (line,) = failover_lines(caplog)
    assert f"viewer at {late.url} unreachable" in line


@pytest.mark.slow
def test_with_every_replica_down_the_worker_backs_off_and_delivers_when_one_returns(
    tmp_path: Path,
) -> None:
    first, second = Serve(free_port(), tmp_path / "a.db"), Serve(free_port(), tmp_path / "b.db")
    exporter = LiveExporter([first.url, second.url], heartbeat_s=60, max_backoff_s=0.5)
    telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp=False, live=exporter)
    try:
        with otelflow.workflow("patient", run_id="job-patient"):
            pass
        wait_for(lambda: exporter.failures >= 2, what="two failed rounds")
        assert telemetry.force_flush(1_000) is False  # nobody to deliver to
        second.start()  # the second replica in the list comes up: the worker finds it in its next round
        wait_for(lambda: run_spans(second.url, "job-patient") == {"invoke_workflow patient": "ok"}, timeout=15)
        assert exporter.url == second.url
    finally:
        telemetry.shutdown()
        second.kill()
