"""Per-span cost of the LiveSpanProcessor against the bare SDK, measured in one run.

Each repeat creates N spans with 3 attributes and 2 events, back to back, and the median of the repeats is
compared with the baseline (an SDK TracerProvider with no processor) measured in the same run:

- hook cost: CPU time of the calling thread with a LiveSpanProcessor attached whose in-process sink has a
  subscriber (its worker thread runs and converts every span, but that work is off the caller's thread;
  what it costs the caller through the shared interpreter lock and garbage collector is counted) —
  target <= 1.15x; also shown for a sink nobody subscribed to, where the processor skips spans;
- delivery: wall time from the first span until an in-process subscriber has received every start and
  end record — target <= 1.5x.

Run: ``python bench/bench_processor.py [--spans 20000] [--repeats 7]``. Prints ratios, not a verdict.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import TracerProvider

from otelflow import InProcessSink, LiveSpanProcessor, SpanRecord

ATTRS = {"otelflow.kind": "node", "otelflow.node.id": "n1", "app.items": 3}


def make_spans(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("bench")
    for _ in range(n):
        with tracer.start_as_current_span("step", attributes=ATTRS) as span:
            span.add_event("otelflow.progress", {"otelflow.progress.percent": 50.0})
            span.add_event("otelflow.log", {"otelflow.log.level": "info", "otelflow.log.message": "hi"})


def timed(fn: Callable[[], None], clock: Callable[[], float]) -> float:
    gc.collect()
    start = clock()
    fn()
    return clock() - start


def run(n: int, repeats: int) -> dict[str, float]:
    base_cpu: list[float] = []
    hook_cpu: list[float] = []
    idle_cpu: list[float] = []
    base_wall: list[float] = []
    deliver_wall: list[float] = []
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

        unheard = TracerProvider()
        idle = LiveSpanProcessor(InProcessSink(), max_queue_size=4 * n)  # no subscriber
        unheard.add_span_processor(idle)
        idle_cpu.append(timed(lambda p=unheard: make_spans(p, n), time.thread_time))
        idle.shutdown()

        delivered = TracerProvider()
        sink = InProcessSink()
        got = [0]
        done = threading.Event()

        def subscriber(records: Sequence[SpanRecord], got: list[int] = got, done: threading.Event = done) -> None:
            got[0] += len(records)
            if got[0] >= 2 * n:
                done.set()

        sink.subscribe(subscriber)
        proc = LiveSpanProcessor(sink, max_queue_size=4 * n)
        delivered.add_span_processor(proc)

        def produce_and_wait(p: TracerProvider = delivered, done: threading.Event = done) -> None:
            make_spans(p, n)
            if not done.wait(60):
                raise RuntimeError("subscriber did not receive every record")

        deliver_wall.append(timed(produce_and_wait, time.perf_counter))
        if proc.dropped:
            raise RuntimeError(f"{proc.dropped} records dropped")
        proc.shutdown()
    med = statistics.median
    return {
        "baseline_us_per_span_cpu": med(base_cpu) / n * 1e6,
        "hook_us_per_span_cpu": med(hook_cpu) / n * 1e6,
        "hook_ratio": med(hook_cpu) / med(base_cpu),
        "idle_ratio": med(idle_cpu) / med(base_cpu),
        "baseline_us_per_span_wall": med(base_wall) / n * 1e6,
        "delivery_us_per_span_wall": med(deliver_wall) / n * 1e6,
        "delivery_ratio": med(deliver_wall) / med(base_wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    r = run(args.spans, args.repeats)
    print(f"spans per repeat: {args.spans}, repeats: {args.repeats} (medians)")
    print(
        f"SDK, no processor        : {r['baseline_us_per_span_cpu']:.2f} us/span CPU, "
        f"{r['baseline_us_per_span_wall']:.2f} us/span wall"
    )
    print(
        f"hook cost (caller CPU)   : {r['hook_us_per_span_cpu']:.2f} us/span  ratio {r['hook_ratio']:.3f}x "
        "(target <= 1.15x)"
    )
    print(f"no subscriber (idle sink): ratio {r['idle_ratio']:.3f}x")
    print(
        f"start+end delivered      : {r['delivery_us_per_span_wall']:.2f} us/span  ratio {r['delivery_ratio']:.3f}x "
        "(target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
