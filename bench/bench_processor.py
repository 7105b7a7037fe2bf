"""Per-span cost of the LiveSpanProcessor against the bare SDK, measured in one run.

Spans are rich (3 attributes, 2 events each) and come in two shapes: ``nested``, traces of a root span with 9
children (what a workflow looks like), and ``flat``, one span per trace. Each repeat measures every variant
once, interleaved with the baseline (an SDK TracerProvider with no processor) of the same shape, and the
medians of the repeats are compared:

- caller CPU: the whole CPU time of the calling thread while it streams to an in-process subscriber, which
  also counts what the processor costs the caller indirectly (the worker thread, the interpreter lock, the
  garbage collector) — target <= 1.10x on nested traces; and the same for a sink nobody subscribed to, where
  the processor skips spans;
- hook cost: CPU time the calling thread spends inside the processor's on_start and on_end, timed around
  each call (minus the timer's own cost, measured around a no-op processor), added to the baseline;
- delivery (flat): wall time from the first span until an in-process subscriber has received every start
  and end record — target <= 1.5x. Records arrive deferred (formatted when first read), so the same is also
  measured with a subscriber that reads every record in full (``to_dict()``);
- embedded viewer (nested): the viewer of ``otelflow demo`` / ``otelflow run`` (``EmbeddedViewer`` with an
  in-memory history, its hub subscribed to the in-process sink) consuming every record: the calling thread's
  CPU — target <= 1.3x; the calling thread's wall time while it makes the spans — target <= 1.5x; and the
  wall time until the hub has published every record;
- remote viewer (nested, ``--only remote``): the live processor streaming through the ``LiveExporter`` to an
  ``otelflow serve`` in another process, as workers pointed at ``OTELFLOW_VIEWER_URL`` do: the calling thread's
  CPU and wall time while it makes the spans (the exporter's thread encodes under the same interpreter lock),
  and the wall time until the viewer has taken every span (``force_flush``). No target.

Run: ``python bench/bench_processor.py [--spans 20000] [--repeats 7] [--only nested,flat,viewer,remote]``.
Prints ratios, not a verdict.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common  # pins this checkout's otelflow
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from otelflow import InProcessSink, LiveSpanProcessor, SpanRecord

ATTRS = {"otelflow.kind": "node", "otelflow.node.id": "n1", "app.items": 3}
CHILDREN = 9  # a nested trace: a root and this many children

Maker = Callable[[TracerProvider, int], None]


def _rich(span: Any) -> None:
    span.add_event("otelflow.progress", {"otelflow.progress.percent": 50.0})
    span.add_event("otelflow.log", {"otelflow.log.level": "info", "otelflow.log.message": "hi"})


def make_flat(provider: TracerProvider, n: int) -> None:
    """``n`` rich spans, each its own trace."""
    tracer = provider.get_tracer("bench")
    for _ in range(n):
        with tracer.start_as_current_span("step", attributes=ATTRS) as span:
            _rich(span)


def make_nested(provider: TracerProvider, n: int) -> None:
    """``n`` rich spans as traces of a root span with :data:`CHILDREN` children."""
    tracer = provider.get_tracer("bench")
    for _ in range(n // (CHILDREN + 1)):
        with tracer.start_as_current_span("workflow", attributes=ATTRS) as root:
            _rich(root)
            for _ in range(CHILDREN):
                with tracer.start_as_current_span("step", attributes=ATTRS) as span:
                    _rich(span)


SHAPES: dict[str, Maker] = {"nested": make_nested, "flat": make_flat}


class HookTimer(SpanProcessor):
    """Calls another processor's hooks, adding up the calling thread's CPU time spent inside them."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.ns = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        t = time.thread_time_ns()
        self.inner.on_start(span, parent_context)
        self.ns += time.thread_time_ns() - t

    def on_end(self, span: ReadableSpan) -> None:
        t = time.thread_time_ns()
        self.inner.on_end(span)
        self.ns += time.thread_time_ns() - t


def timed(fn: Callable[[], None], clock: Callable[[], float]) -> float:
    gc.collect()
    start = clock()
    fn()
    return clock() - start


def timed_both(fn: Callable[[], None]) -> tuple[float, float]:
    """(the calling thread's CPU seconds, wall seconds) spent in ``fn``."""
    gc.collect()
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def streaming_processor(n: int) -> LiveSpanProcessor:
    sink = InProcessSink()
    sink.subscribe(lambda records: None)  # someone listens: every span is queued and converted
    return LiveSpanProcessor(sink, max_queue_size=4 * n)


def caller_cpu(make: Maker, n: int, processor: SpanProcessor) -> float:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    cpu = timed(lambda: make(provider, n), time.thread_time)
    processor.shutdown()
    return cpu


def hook_seconds(make: Maker, n: int) -> float:
    def inside(inner: SpanProcessor) -> int:
        provider = TracerProvider()
        timer = HookTimer(inner)
        provider.add_span_processor(timer)
        gc.collect()
        make(provider, n)
        inner.shutdown()
        return timer.ns

    return (inside(streaming_processor(n)) - inside(SpanProcessor())) / 1e9


def delivery_wall(make: Maker, n: int, *, read: bool) -> float:
    """Wall time from the first span until a subscriber has every start and end record (and, with ``read``,
    has read each record in full: records come deferred, and reading them is what formats them)."""
    provider = TracerProvider()
    sink = InProcessSink()
    got = [0]
    done = threading.Event()

    def subscriber(records: Sequence[SpanRecord]) -> None:
        if read:
            for record in records:
                record.to_dict()
        got[0] += len(records)
        if got[0] >= 2 * n:
            done.set()

    sink.subscribe(subscriber)
    proc = LiveSpanProcessor(sink, max_queue_size=4 * n)
    provider.add_span_processor(proc)

    def produce_and_wait() -> None:
        make(provider, n)
        if not done.wait(60):
            raise RuntimeError("subscriber did not receive every record")

    wall = timed(produce_and_wait, time.perf_counter)
    if proc.dropped:
        raise RuntimeError(f"{proc.dropped} records dropped")
    proc.shutdown()
    return wall


def embedded_viewer(make: Maker, n: int) -> tuple[float, float, float]:
    """The embedded viewer consuming every record: (caller CPU, caller wall while making the spans, wall until
    the hub has published every record), in seconds."""
    from otelflow.cli.embedded import EmbeddedViewer

    sink = InProcessSink()
    thresholds = gc.get_threshold()
    viewer = EmbeddedViewer("127.0.0.1", 0, db=":memory:").start(sink)  # it may tune the collector
    try:
        hub = viewer._server.config.app.state.hub  # type: ignore[union-attr]
        published = [0]
        done = threading.Event()

        def count(events: object, batch: Any) -> None:  # a tap: runs on the hub's loop after each publish
            published[0] += len(batch.records)
            if published[0] >= 2 * n:
                done.set()

        hub.tap(count)
        time.sleep(0.5)  # let the viewer finish starting (its lifespan tasks), which is not what is measured
        provider = TracerProvider()
        proc = LiveSpanProcessor(sink, max_queue_size=4 * n)
        provider.add_span_processor(proc)
        gc.collect()
        cpu, wall = time.thread_time(), time.perf_counter()
        make(provider, n)
        cpu, made = time.thread_time() - cpu, time.perf_counter() - wall
        if not done.wait(120):
            raise RuntimeError(f"the hub published {published[0]} of {2 * n} records")
        total = time.perf_counter() - wall
        if proc.dropped:
            raise RuntimeError(f"{proc.dropped} records dropped")
        proc.shutdown()
        return cpu, made, total
    finally:
        viewer.stop(10.0)
        gc.unfreeze()  # the baselines run with the collector as the application had it
        gc.set_threshold(*thresholds)


def remote_viewer(make: Maker, n: int, port: int) -> tuple[float, float, float]:
    """The live processor streaming to the viewer on ``port`` (another process): (caller CPU, caller wall while
    making the spans, wall until the viewer took every span), in seconds."""
    from otelflow import LiveExporter

    exporter = LiveExporter(f"http://{_common.HOST}:{port}", max_spans=4 * n)
    proc = LiveSpanProcessor(exporter, max_queue_size=4 * n)
    provider = TracerProvider()
    provider.add_span_processor(proc)
    gc.collect()
    cpu, wall = time.thread_time(), time.perf_counter()
    make(provider, n)
    cpu, made = time.thread_time() - cpu, time.perf_counter() - wall
    proc.force_flush(120_000)  # every record handed to the exporter (which it gives 1 s to post them)
    if not exporter.force_flush(120.0):
        raise RuntimeError("the viewer did not take every span")
    total = time.perf_counter() - wall
    if proc.dropped or exporter.dropped:
        raise RuntimeError(f"{proc.dropped + exporter.dropped} records dropped")
    proc.shutdown()
    return cpu, made, total


def run(n: int, repeats: int, only: set[str]) -> dict[str, list[float]]:
    """Per repeat: each variant's seconds, and its ratio to the baseline of the same repeat (``key/``)."""
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float, base: str | None = None) -> None:
        samples.setdefault(key, []).append(value)
        if base is not None:
            samples.setdefault(f"{key}/", []).append(value / samples[base][-1])

    server = None
    if "remote" in only:
        server, port = _common.start_viewer(Path(tempfile.mkdtemp(prefix="otelflow-bench-")) / "history.db")
    try:
        for _ in range(repeats):
            _repeat(n, only, samples, add, port if server is not None else 0)
    finally:
        if server is not None:
            _common.stop(server)
    return samples


def _repeat(n: int, only: set[str], samples: dict[str, list[float]], add: Callable[..., None], port: int) -> None:
    """One repeat: every variant once, each after the baseline of its shape (``port``: the remote viewer's)."""
    # interleave the variants so that machine noise hits all of them alike
    for shape in ("nested", "flat"):
        if shape not in only and not (shape == "nested" and ("viewer" in only or "remote" in only)):
            continue
        make = SHAPES[shape]
        bare = TracerProvider()
        cpu, wall = timed_both(lambda p=bare, m=make: m(p, n))  # type: ignore[misc]
        cpu_base, wall_base = f"{shape}.base_cpu", f"{shape}.base_wall"
        add(cpu_base, cpu)
        add(wall_base, wall)
        if shape in only:
            add(f"{shape}.caller_cpu", caller_cpu(make, n, streaming_processor(n)), cpu_base)
            hook = hook_seconds(make, n)
            add(f"{shape}.hook", hook)
            samples.setdefault(f"{shape}.hook/", []).append((cpu + hook) / cpu)
        if shape == "flat" and shape in only:
            idle = LiveSpanProcessor(InProcessSink(), max_queue_size=4 * n)  # no subscriber
            add("flat.idle_cpu", caller_cpu(make, n, idle), cpu_base)
            add("flat.deliver_wall", delivery_wall(make, n, read=False), wall_base)
            add("flat.read_wall", delivery_wall(make, n, read=True), wall_base)
        if shape == "nested" and "viewer" in only:
            cpu, made, total = embedded_viewer(make, n)
            add("viewer.cpu", cpu, cpu_base)
            add("viewer.made_wall", made, wall_base)
            add("viewer.total_wall", total, wall_base)
        if shape == "nested" and "remote" in only:
            cpu, made, total = remote_viewer(make, n, port)
            add("remote.cpu", cpu, cpu_base)
            add("remote.made_wall", made, wall_base)
            add("remote.total_wall", total, wall_base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20_000, help="spans per variant and repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default="nested,flat,viewer", help="comma list of nested, flat, viewer, remote")
    args = parser.parse_args()
    only = set(args.only.split(","))
    n = args.spans // (CHILDREN + 1) * (CHILDREN + 1)
    r = run(n, args.repeats, only)
    print(f"spans per variant: {n}, repeats: {args.repeats}, 3 attributes and 2 events per span")
    print("figures: medians; ratios: the median of each repeat's ratio to the baseline of that repeat [range]")

    def line(label: str, key: str, what: str = "", target: str = "") -> None:
        text = f"  {label:<27}: {statistics.median(r[key]) / n * 1e6:7.2f} us/span{what}"
        if f"{key}/" in r:
            ratios = r[f"{key}/"]
            text += f"  {statistics.median(ratios):.3f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
        print(text + (f"  (target <= {target})" if target else ""))

    for shape, label in (("nested", f"nested (root + {CHILDREN} children)"), ("flat", "flat (1 span per trace)")):
        if f"{shape}.base_cpu" not in r:
            continue
        print(f"\n{label}")
        line("SDK, no processor, CPU", f"{shape}.base_cpu")
        line("SDK, no processor, wall", f"{shape}.base_wall")
        if f"{shape}.caller_cpu" in r:
            line("caller CPU, streaming", f"{shape}.caller_cpu", target="1.10x" if shape == "nested" else "")
            line("hook cost (in the hooks)", f"{shape}.hook")
        if "flat.idle_cpu" in r and shape == "flat":
            line("caller CPU, no subscriber", "flat.idle_cpu")
            line("start+end delivered", "flat.deliver_wall", " wall", "1.5x")
            line("... and read in full", "flat.read_wall", " wall")
        if "viewer.cpu" in r and shape == "nested":
            print("  embedded viewer reading every record (otelflow demo / run):")
            line("  caller CPU", "viewer.cpu", target="1.3x")
            line("  caller wall", "viewer.made_wall", " wall", "1.5x")
            line("  until the hub has all", "viewer.total_wall", " wall")
        if "remote.cpu" in r and shape == "nested":
            print("  remote viewer (LiveExporter to otelflow serve in another process):")
            line("  caller CPU", "remote.cpu")
            line("  caller wall", "remote.made_wall", " wall")
            line("  until the viewer has all", "remote.total_wall", " wall")


if __name__ == "__main__":
    main()
