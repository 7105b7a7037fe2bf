"""Per-span cost of the LiveSpanProcessor against the bare SDK, measured in one run.

Each repeat creates N spans with 3 attributes and 2 events, back to back, and the median of the repeats is
compared with the baseline (an SDK TracerProvider with no processor) measured in the same run:

- hook cost: CPU time the calling thread spends inside the processor's on_start and on_end while it
  streams to a subscriber, timed around each call (minus the timer's own cost, measured around a no-op
  processor), added to the baseline — target <= 1.15x;
- caller CPU: the whole CPU time of the calling thread in that streaming case, which also counts what
  the worker thread costs the caller indirectly (spans kept alive until converted, the interpreter lock,
  the garbage collector); and the same for a sink nobody subscribed to, where the processor skips spans;
- delivery: wall time from the first span until an in-process subscriber has received every start and
  end record — target <= 1.5x. Records arrive deferred (formatted when first read), so the same is also
  measured with a subscriber that reads every record in full (``to_dict()``), which is what the viewer's
  hub does with them.

Run: ``python bench/bench_processor.py [--spans 20000] [--repeats 7]``. Prints ratios, not a verdict.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import Callable, Sequence

import _common  # noqa: F401  (pins this checkout's otelflow)
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from otelflow import InProcessSink, LiveSpanProcessor, SpanRecord

ATTRS = {"otelflow.kind": "node", "otelflow.node.id": "n1", "app.items": 3}


def make_spans(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("bench")
    for _ in range(n):
        with tracer.start_as_current_span("step", attributes=ATTRS) as span:
            span.add_event("otelflow.progress", {"otelflow.progress.percent": 50.0})
            span.add_event("otelflow.log", {"otelflow.log.level": "info", "otelflow.log.message": "hi"})


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


def hook_ns(inner: SpanProcessor, n: int) -> int:
    provider = TracerProvider()
    timer = HookTimer(inner)
    provider.add_span_processor(timer)
    make_spans(provider, n)
    return timer.ns


def timed(fn: Callable[[], None], clock: Callable[[], float]) -> float:
    gc.collect()
    start = clock()
    fn()
    return clock() - start


def delivery_wall(n: int, *, read: bool) -> float:
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
        make_spans(provider, n)
        if not done.wait(60):
            raise RuntimeError("subscriber did not receive every record")

    wall = timed(produce_and_wait, time.perf_counter)
    if proc.dropped:
        raise RuntimeError(f"{proc.dropped} records dropped")
    proc.shutdown()
    return wall


def run(n: int, repeats: int) -> dict[str, float]:
    base_cpu: list[float] = []
    hook_cpu: list[float] = []
    idle_cpu: list[float] = []
    hook_time: list[float] = []
    base_wall: list[float] = []
    deliver_wall: list[float] = []
    read_wall: list[float] = []
    for _ in range(repeats):
        # interleave the variants so that machine noise hits all of them alike
        bare = TracerProvider()
        base_cpu.append(timed(lambda p=bare: make_spans(p, n), time.thread_time))
        base_wall.append(timed(lambda p=bare: make_spans(p, n), time.perf_counter))

        hooked = TracerProvider()
        listened = InProcessSink()
        listened.subscribe(lambda records: None)  # someone listens: every span is queued and converted
        streaming = LiveSpanProcessor(listened, max_queue_size=4 * n)
        hooked.add_span_processor(streaming)
        hook_cpu.append(timed(lambda p=hooked: make_spans(p, n), time.thread_time))
        streaming.shutdown()

        listened_too = InProcessSink()
        listened_too.subscribe(lambda records: None)
        measured = LiveSpanProcessor(listened_too, max_queue_size=4 * n)
        hook_time.append((hook_ns(measured, n) - hook_ns(SpanProcessor(), n)) / 1e9)
        measured.shutdown()

        unheard = TracerProvider()
        idle = LiveSpanProcessor(InProcessSink(), max_queue_size=4 * n)  # no subscriber
        unheard.add_span_processor(idle)
        idle_cpu.append(timed(lambda p=unheard: make_spans(p, n), time.thread_time))
        idle.shutdown()

        deliver_wall.append(delivery_wall(n, read=False))
        read_wall.append(delivery_wall(n, read=True))
    med = statistics.median
    return {
        "baseline_us_per_span_cpu": med(base_cpu) / n * 1e6,
        "caller_us_per_span_cpu": med(hook_cpu) / n * 1e6,
        "hook_us_per_span": med(hook_time) / n * 1e6,
        "hook_ratio": (med(base_cpu) + med(hook_time)) / med(base_cpu),
        "caller_ratio": med(hook_cpu) / med(base_cpu),
        "idle_ratio": med(idle_cpu) / med(base_cpu),
        "baseline_us_per_span_wall": med(base_wall) / n * 1e6,
        "delivery_us_per_span_wall": med(deliver_wall) / n * 1e6,
        "delivery_ratio": med(deliver_wall) / med(base_wall),
        "read_us_per_span_wall": med(read_wall) / n * 1e6,
        "read_ratio": med(read_wall) / med(base_wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    r = run(args.spans, args.repeats)
    print(f"spans per repeat: {args.spans}, repeats: {args.repeats} (medians)")
    print(
        f"SDK, no processor         : {r['baseline_us_per_span_cpu']:.2f} us/span CPU, "
        f"{r['baseline_us_per_span_wall']:.2f} us/span wall"
    )
    print(
        f"hook cost (in the hooks)  : {r['hook_us_per_span']:.2f} us/span  ratio {r['hook_ratio']:.3f}x "
        "(target <= 1.15x)"
    )
    print(f"caller CPU, streaming     : {r['caller_us_per_span_cpu']:.2f} us/span  ratio {r['caller_ratio']:.3f}x")
    print(f"caller CPU, no subscriber : ratio {r['idle_ratio']:.3f}x")
    print(
        f"start+end delivered       : {r['delivery_us_per_span_wall']:.2f} us/span  ratio {r['delivery_ratio']:.3f}x "
        "(target <= 1.5x)"
    )
    print(f"... and read in full       : {r['read_us_per_span_wall']:.2f} us/span  ratio {r['read_ratio']:.3f}x")


if __name__ == "__main__":
    main()
