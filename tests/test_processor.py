"""LiveSpanProcessor: order, isolation from failures, bounded queue, sampling, lifecycle, fork."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

import otelflow
from otelflow import InProcessSink, LiveSpanProcessor, SpanRecord
from tests.conftest import wait_for


class Collector:
    def __init__(self) -> None:
        self.records: list[SpanRecord] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Sequence[SpanRecord]) -> None:
        with self.lock:
            self.records.extend(batch)


class BlockingSink(InProcessSink):
    """A sink whose export waits until released: a viewer that has stopped reading."""

    inline = False  # it blocks, so the processor must only call it from its worker thread

    def __init__(self) -> None:
        super().__init__()
        self.active = True  # listening, however slowly
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, records: Sequence[SpanRecord]) -> None:
        self.entered.set()
        self.release.wait(30)
        super().export(records)


def live_provider(sink: otelflow.Sink, **kwargs: int) -> tuple[TracerProvider, LiveSpanProcessor]:
    provider = TracerProvider()
    processor = LiveSpanProcessor(sink, **kwargs)
    provider.add_span_processor(processor)
    return provider, processor


def test_records_of_each_span_arrive_in_order_across_threads() -> None:
    sink = InProcessSink()
    got = Collector()
    sink.subscribe(got)
    provider = TracerProvider()
    otelflow.configure(tracer_provider=provider, otlp=False, live=sink)

    def work(worker: int) -> None:
        for i in range(50):
            with otelflow.agent(f"agent-{worker}") as handle:
                handle.progress(completed=1, total=2)
                with otelflow.tool("t"):
                    pass
                handle.log("info", f"step {i}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = otelflow.config.current()
    assert state is not None
    assert state.live_processor is not None
    assert state.live_processor.force_flush(10_000)
    phases: dict[str, list[str]] = defaultdict(list)
    for rec in got.records:
        phases[rec.span_id].append(rec.phase)
    assert len(phases) == 8 * 50 * 2
    for seq in phases.values():
        assert seq[0] == "start"
        assert seq[-1] == "end"
        assert set(seq[1:-1]) <= {"update"}
    agent_updates = [p for p in phases.values() if len(p) == 4]
    assert len(agent_updates) == 8 * 50  # start, progress update, log update, end
    assert state.live_processor.dropped == 0
    state.shutdown()


def test_a_failing_sink_never_reaches_the_workflow(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(InProcessSink):
        def __init__(self) -> None:
            super().__init__()
            self.active = True

        def export(self, records: Sequence[SpanRecord]) -> None:
            raise OSError("viewer exploded")

    provider, processor = live_provider(Broken())
    tracer = provider.get_tracer("t")
    with caplog.at_level(logging.WARNING, logger="otelflow"):
        for _ in range(200):
            with tracer.start_as_current_span("work"):
                pass
        assert processor.force_flush(5000)
    failures = [r for r in caplog.records if "live sink failed" in r.getMessage()]
    assert len(failures) == 1  # rate-limited: one line, not one per batch
    processor.shutdown()


def test_a_failing_subscriber_does_not_starve_the_others(caplog: pytest.LogCaptureFixture) -> None:
    sink = InProcessSink()

    def broken(batch: Sequence[SpanRecord]) -> None:
        raise RuntimeError("bad subscriber")

    good = Collector()
    sink.subscribe(broken)
    sink.subscribe(good)
    provider, processor = live_provider(sink)
    with caplog.at_level(logging.WARNING, logger="otelflow"):
        with provider.get_tracer("t").start_as_current_span("one"):
            pass
        assert processor.force_flush(5000)
    assert [r.phase for r in good.records] == ["start", "end"]
    processor.shutdown()


def test_full_queue_drops_and_counts_without_blocking() -> None:
    sink = BlockingSink()
    got = Collector()
    sink.subscribe(got)
    provider, processor = live_provider(sink, max_queue_size=10, max_batch_size=1)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("first"):
        pass
    assert sink.entered.wait(5)  # the worker is now stuck in export: nothing more leaves the queue
    for _ in range(100):
        with tracer.start_as_current_span("burst"):
            pass  # never blocks although the sink does
    assert processor.dropped > 0
    sink.release.set()
    assert processor.force_flush(10_000)
    assert processor.delivered + processor.dropped == 2 + 200
    assert len(got.records) == processor.delivered
    processor.shutdown()


def test_only_sampled_spans_are_streamed() -> None:
    class RecordOnly(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
        ) -> SamplingResult:
            decision = Decision.RECORD_AND_SAMPLE if name == "keep" else Decision.RECORD_ONLY
            return SamplingResult(decision)

        def get_description(self) -> str:
            return "record-only-unless-keep"

    sink = InProcessSink()
    got = Collector()
    sink.subscribe(got)
    provider = TracerProvider(sampler=RecordOnly())
    processor = LiveSpanProcessor(sink)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("drop") as span:
        assert span.is_recording()
        otelflow.processor.notify_update(span)
    with tracer.start_as_current_span("keep"):
        pass
    assert processor.force_flush(5000)
    assert [(r.name, r.phase) for r in got.records] == [("keep", "start"), ("keep", "end")]
    processor.shutdown()


def test_flush_and_shutdown_are_bounded_and_idempotent() -> None:
    sink = BlockingSink()
    provider, processor = live_provider(sink)
    with provider.get_tracer("t").start_as_current_span("stuck"):
        pass
    assert sink.entered.wait(5)
    started = time.monotonic()
    assert processor.force_flush(timeout_millis=100) is False
    processor.shutdown(timeout_millis=100)
    processor.shutdown(timeout_millis=100)
    assert time.monotonic() - started < 5  # a stuck sink cannot hold shutdown hostage
    sink.release.set()
    assert processor.force_flush(5000) is True  # after shutdown: true once the worker has finished
    with provider.get_tracer("t").start_as_current_span("after shutdown"):
        pass  # no error, nothing streamed


def test_update_streams_a_running_snapshot_with_the_new_event() -> None:
    sink = InProcessSink()
    got = Collector()
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    seen_update = threading.Event()

    def on_batch(batch: Sequence[SpanRecord]) -> None:
        if any(r.phase == "update" for r in batch):
            seen_update.set()

    sink.subscribe(on_batch)
    otelflow.configure(tracer_provider=provider, otlp=False, live=False)
    with otelflow.node("long") as handle:
        handle.progress(25, "a quarter")
        assert seen_update.wait(5)  # the update arrives while the span is still running
        upd = next(r for r in got.records if r.phase == "update")
        assert upd.status == "running"
        assert upd.end_time_ns is None
        assert [e.name for e in upd.events] == ["otelflow.progress"]
    processor.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_child_process_after_fork_streams_its_own_spans() -> None:
    sink = InProcessSink()
    got = Collector()
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("before fork"):
        pass
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its worker thread was re-created; it must stream its own spans
        code = 1
        try:
            with tracer.start_as_current_span("in child"):
                pass
            ok = processor.force_flush(5000)
            names = [r.name for r in got.records if r.name == "in child"]
            os.write(write_fd, f"{ok} {len(names)}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_fd, 100).decode()
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True 2"
    with tracer.start_as_current_span("parent after fork"):
        pass
    assert processor.force_flush(5000)
    wait_for(lambda: any(r.name == "parent after fork" and r.phase == "end" for r in got.records))
    assert not any(r.name == "in child" for r in got.records)
    processor.shutdown()


def test_an_in_process_sink_nobody_listens_to_costs_no_records() -> None:
    sink = InProcessSink()
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("unheard"):
        pass
    assert processor.force_flush(5000)
    assert processor.delivered == 0  # nothing was queued, nothing converted
    got = Collector()
    unsubscribe = sink.subscribe(got)
    with tracer.start_as_current_span("heard"):
        pass
    long_span = tracer.start_span("started before the next subscriber")
    assert processor.force_flush(5000)
    unsubscribe()
    assert [(r.name, r.phase) for r in got.records] == [
        ("heard", "start"),
        ("heard", "end"),
        ("started before the next subscriber", "start"),
    ]
    late = Collector()
    sink.subscribe(late)
    long_span.end()
    assert processor.force_flush(5000)
    assert [(r.name, r.phase) for r in late.records] == [("started before the next subscriber", "end")]
    processor.shutdown()


class ThreadRecorder(Collector):
    """Also notes which thread delivered each batch; ``burn_s``: uses that much CPU time per batch first."""

    def __init__(self, burn_s: float = 0.0) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.burn_s = burn_s
        self.walls: list[float] = []  # wall time of each call, seconds

    def __call__(self, batch: Sequence[SpanRecord]) -> None:
        began = time.perf_counter()
        if self.burn_s:
            burn(self.burn_s)
        with self.lock:
            self.threads.append(threading.get_ident())
            self.walls.append(time.perf_counter() - began)
        super().__call__(batch)


def burn(cpu_s: float) -> None:
    """Keep this thread busy until it has used ``cpu_s`` of CPU time (a real busy loop)."""
    until = time.thread_time() + cpu_s
    while time.thread_time() < until:
        pass


def test_a_short_span_reaches_an_in_process_subscriber_before_its_with_block_is_left() -> None:
    sink = InProcessSink()
    got = ThreadRecorder()
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("workflow") as parent:
        for i in range(3):
            with tracer.start_as_current_span(f"tool-{i}"):
                pass
            # no flush, no waiting: on_end delivered it on this thread
            assert [(r.name, r.phase) for r in got.records[-2:]] == [(f"tool-{i}", "start"), (f"tool-{i}", "end")]
    assert processor.force_flush(5000)
    names = [(r.name, r.phase) for r in got.records]
    # the parent's start, queued before its children, still comes first
    assert names[0] == ("workflow", "start")
    assert names[-1] == ("workflow", "end")
    assert threading.get_ident() in got.threads
    ends = {r.name: r for r in got.records if r.phase == "end"}
    assert ends["tool-0"].parent_span_id == format(parent.get_span_context().span_id, "016x")
    assert ends["tool-0"].status == "ok"
    assert ends["tool-0"].end_time_ns is not None
    processor.shutdown()


def test_a_slow_subscriber_is_moved_off_the_application_thread_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = InProcessSink()
    got = ThreadRecorder(burn_s=0.03)  # a subscriber that breaks the promise to be quick: 30 ms of CPU each
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    me = threading.get_ident()
    names: list[str] = []
    with caplog.at_level(logging.WARNING, logger="otelflow"):
        # One span at a time, each delivered before the next starts. The first slow delivery made on this
        # thread has its CPU time watched from then on; the next three are strikes. The worker may make some
        # deliveries instead, which are not.
        while processor.inline_delivery:
            assert len(names) < 100, "inline delivery was never turned off"
            names.append(f"s{len(names)}")
            with tracer.start_as_current_span(names[-1]):
                pass
            wait_for(lambda: len(got.records) == 2 * len(names), what="the span's records")
    assert "delivering from the worker thread" in caplog.text
    on_this_thread = got.threads.count(me)
    assert on_this_thread == 4
    for _ in range(5):
        names.append(f"s{len(names)}")
        with tracer.start_as_current_span(names[-1]):
            pass
    assert processor.force_flush(10_000)
    assert got.threads.count(me) == on_this_thread  # from now on the worker thread waits for it
    assert [(r.name, r.phase) for r in got.records] == [(n, p) for n in names for p in ("start", "end")]
    processor.shutdown()


class BusyThreads:
    """Threads running a busy loop in Python, contending with the test for the CPU and the interpreter lock."""

    def __init__(self, count: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._spin, daemon=True) for _ in range(count)]

    def _spin(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1

    def __enter__(self) -> BusyThreads:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_contention_alone_never_turns_inline_delivery_off() -> None:
    # Each delivery uses 12 ms of CPU, within the 20 ms limit. Three busy threads take the interpreter lock
    # from the delivering thread at every switch interval (5 ms), so it holds the lock for at most 5 ms at a
    # time and waits at least one interval in between: every delivery takes over 20 ms by the clock.
    sink = InProcessSink()
    got = ThreadRecorder(burn_s=0.012)
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    me = threading.get_ident()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        with BusyThreads(3):
            for i in range(8):
                with tracer.start_as_current_span(f"s{i}"):
                    pass
    finally:
        sys.setswitchinterval(interval)
    with got.lock:
        slow_here = [w for thread, w in zip(got.threads, got.walls, strict=True) if thread == me and w > 0.02]
    assert len(slow_here) >= 3, f"deliveries on this thread were not slow by the clock: {got.walls}"
    assert processor.inline_delivery
    assert got.threads[-1] == me  # still delivering from on_end
    assert processor.force_flush(5000)
    assert [(r.name, r.phase) for r in got.records] == [(f"s{i}", p) for i in range(8) for p in ("start", "end")]
    processor.shutdown()


def test_a_subscriber_that_blocks_keeps_inline_delivery() -> None:
    """Blocked time is not told apart from waiting for a CPU (see LiveSpanProcessor): only CPU time counts."""

    class Sleeper(ThreadRecorder):
        def __call__(self, batch: Sequence[SpanRecord]) -> None:
            time.sleep(0.03)
            super().__call__(batch)

    sink = InProcessSink()
    got = Sleeper()
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    for i in range(6):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert processor.inline_delivery
    assert got.threads[-1] == threading.get_ident()
    processor.shutdown()


def test_a_child_ending_delivers_queued_records_first_and_its_own_end_after_its_updates() -> None:
    sink = InProcessSink()
    got = ThreadRecorder()
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    for _ in range(3):
        with tracer.start_as_current_span("parent"):
            with tracer.start_as_current_span("child") as child:
                child.add_event("otelflow.log", {"otelflow.log.message": "one"})
                processor.update(child)
                child.set_attribute("k", 1)
                processor.update(child)
            with tracer.start_as_current_span("sibling"):
                pass
    assert processor.force_flush(5000)
    once = [
        ("parent", "start"),
        ("child", "start"),
        ("child", "update"),
        ("child", "update"),
        ("child", "end"),
        ("sibling", "start"),
        ("sibling", "end"),
        ("parent", "end"),
    ]
    assert [(r.name, r.phase) for r in got.records] == once * 3
    updates = [r for r in got.records if r.phase == "update"]
    assert [len(r.events) for r in updates[:2]] == [1, 1]
    assert updates[1].attributes.get("k") == 1
    assert got.records[1].parent_span_id == got.records[0].span_id
    processor.shutdown()


def test_queued_records_do_not_keep_ended_spans_alive() -> None:
    import gc
    import weakref

    sink = BlockingSink()  # its worker is stuck, so records stay queued
    got = Collector()
    sink.subscribe(got)
    provider, processor = live_provider(sink)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("first"):
        pass
    assert sink.entered.wait(5)
    span = tracer.start_span("queued", attributes={"k": "v"})
    span.add_event("otelflow.log", {"otelflow.log.message": "hi"})
    span.end()
    ref = weakref.ref(span)
    del span
    gc.collect()
    assert ref() is None  # the queue holds what the record needs, not the SDK span
    sink.release.set()
    assert processor.force_flush(10_000)
    end = next(r for r in got.records if r.name == "queued" and r.phase == "end")
    assert end.attributes == {"k": "v"}
    assert [(e.name, dict(e.attributes)) for e in end.events] == [("otelflow.log", {"otelflow.log.message": "hi"})]
    processor.shutdown()


def test_inline_delivery_can_be_turned_off() -> None:
    sink = InProcessSink()
    got = ThreadRecorder()
    sink.subscribe(got)
    provider, processor = live_provider(sink, inline_limit=0)
    tracer = provider.get_tracer("t")
    for i in range(5):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert processor.force_flush(5000)
    assert [(r.name, r.phase) for r in got.records] == [(f"s{i}", p) for i in range(5) for p in ("start", "end")]
    assert threading.get_ident() not in got.threads  # only the worker thread delivered
    processor.shutdown()
