"""A streamed model call: what ``otelflow.llm``'s ``output_delta`` costs the calling thread, and how many live
updates the viewer gets for it.

Three processes: ``otelflow serve`` (loopback, free port, SQLite file in a temp dir); an SSE client reading
``/api/stream`` (httpx, in its own process so that it costs this one nothing) that counts, per span, the
``span.updated`` events of the model calls and the longest partial answer it saw; and this process, configured
with ``otelflow.configure(live=URL)``: the real ``LiveSpanProcessor`` and ``LiveExporter`` posting to the viewer.

The workload: inside ``with otelflow.llm("bench-model") as call``, a loop that produces 2,000 deltas paced
over 2 s (a deadline schedule: the i-th delta at ``i * 1 ms``), each a short piece of text as a model's tokens
are. Measured: the CPU time of the calling thread (``time.thread_time``) over the loop's iterations, the pacing
sleep included. Baseline, same run: the same loop, in a second model call open at the same time with the same
live sink, without ``output_delta``. The two loops' iterations alternate half a millisecond apart (the order
flips each repeat), so a busy moment of the machine weighs on both; the ratio is taken per repeat and printed
as a median and a range over ``--repeats``. Also printed: the CPU per ``output_delta`` in a tight loop (no
pacing, a clock that moves), the updates the viewer streamed for each measured call and the longest partial
answer in them.

Targets: calling thread's CPU <= 1.2x the loop without ``output_delta``; <= 25 ``span.updated`` per call.
Run: ``python bench/bench_llm.py [--deltas 2000] [--seconds 2] [--repeats 5]``. Prints figures, not a verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import HOST, healthz, start_viewer, stop

MODEL = "bench-model"
SPAN_NAME = f"chat {MODEL}"


# --------------------------------------------------------------------------------------------------
# the SSE client (a child process)
# --------------------------------------------------------------------------------------------------


def sse_main(port: int, calls: int) -> None:
    """Read the stream until ``calls`` model-call spans ended; print per span id what was seen, as JSON."""
    import httpx

    seen: dict[str, dict[str, Any]] = {}
    ended = 0
    event = ""
    with httpx.stream("GET", f"http://{HOST}:{port}/api/stream", timeout=httpx.Timeout(10, read=120)) as response:
        print("ready", flush=True)
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                continue
            if not line.startswith("data:") or not event.startswith("span."):
                continue
            data = json.loads(line[5:])
            span = data.get("span") or {}
            if span.get("name") != SPAN_NAME:
                continue
            entry = seen.setdefault(span["span_id"], {"updated": 0, "partial_max": 0, "partials": 0})
            partial = (span.get("attributes") or {}).get("otelflow.llm.output.partial")
            if partial is not None:
                entry["partials"] += 1
                entry["partial_max"] = max(entry["partial_max"], len(partial.encode()))
            if event == "span.updated":
                entry["updated"] += 1
            elif event == "span.ended":
                entry["output_len"] = len(str(span["attributes"].get("output.value", "")))
                ended += 1
                if ended >= calls:
                    break
    print(json.dumps(seen), flush=True)


# --------------------------------------------------------------------------------------------------
# the workload
# --------------------------------------------------------------------------------------------------


def streamed_pair(otelflow: Any, deltas: int, seconds: float, flip: bool, kind: str) -> tuple[float, float, float, str]:
    """Two model calls open side by side, each with a loop of ``deltas`` pieces paced over ``seconds``; only the
    first calls ``output_delta`` (neither, for ``kind="none"``). Their iterations alternate (half a step apart,
    the order flipping with ``flip``), so that whatever else the machine does weighs on both alike. ``kind``:
    ``"long"`` pieces (`` word12``: 14 KB in all, past the partial answer's limit) or ``"short"`` ones (``"t "``:
    4 KB, never cut). Returns the thread CPU seconds of the first loop and of the second, the process CPU
    seconds (every thread) over both, and the span id of the first call."""
    step = seconds / deltas
    used = {True: 0.0, False: 0.0}
    streams = kind != "none"
    with otelflow.llm(MODEL, provider="bench") as streamed, otelflow.llm(MODEL, provider="bench") as silent:
        for call in (streamed, silent):
            call.set_input([{"role": "user", "content": "Tell me a long story."}])
        order = (True, False) if flip else (False, True)
        process = time.process_time()
        begin = time.perf_counter()
        for i in range(deltas):
            for half, first in enumerate(order):
                cpu = time.thread_time()
                piece = f" word{i % 97}" if kind != "short" else "t "
                if first and streams:
                    streamed.output_delta(piece)
                wait = begin + (i + (half + 1) / 2) * step - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                used[first] += time.thread_time() - cpu
        process = time.process_time() - process
        for call in (streamed, silent):
            call.usage(input_tokens=6, output_tokens=deltas)
    return used[True], used[False], process, str(streamed.span_id)


def tight_loop_ns(otelflow: Any, n: int) -> tuple[float, float]:
    """ns per iteration of an unpaced loop with and without ``output_delta`` (the clock moves as it does)."""
    out = []
    for with_deltas in (False, True):
        with otelflow.llm(MODEL, provider="bench-tight") as call:
            cpu = time.thread_time()
            for i in range(n):
                piece = f" word{i % 97}"
                if with_deltas:
                    call.output_delta(piece)
            out.append((time.thread_time() - cpu) * 1e9 / n)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deltas", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tight", type=int, default=200_000, help="deltas of the unpaced loop")
    parser.add_argument("--sse-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sse_child:
        sse_main(*args.sse_child)
        return

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    import otelflow

    calls = 6 * args.repeats + 4  # and the two of a warm-up and the two of the unpaced loop, below
    with tempfile.TemporaryDirectory() as tmp:
        viewer, port = start_viewer(Path(tmp) / "viewer.db")
        reader = subprocess.Popen(
            [sys.executable, __file__, "--sse-child", str(port), str(calls)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert reader.stdout is not None
            if reader.stdout.readline().strip() != "ready":
                raise SystemExit("the SSE client did not connect")
            deadline = time.monotonic() + 10
            while healthz(port).get("subscribers", 1) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            provider = TracerProvider(resource=Resource.create({"service.name": "bench-llm"}))
            telemetry = otelflow.configure(tracer_provider=provider, live=f"http://{HOST}:{port}", otlp=False)
            streamed_pair(otelflow, 200, 0.2, False, "long")  # warm-up
            ratios: dict[str, list[float]] = {"long": [], "short": [], "none": []}
            process: dict[str, list[float]] = {"long": [], "short": [], "none": []}
            measured: dict[str, list[str]] = {"long": [], "short": []}
            kinds = ("long", "short", "none")
            for repeat in range(args.repeats):
                for kind in kinds[repeat % 3 :] + kinds[: repeat % 3]:
                    first, second, proc, span_id = streamed_pair(
                        otelflow, args.deltas, args.seconds, repeat % 2 == 1, kind
                    )
                    process[kind].append(proc)
                    ratios[kind].append(first / second)
                    if kind != "none":
                        measured[kind].append(span_id)
            without_ns, with_ns = tight_loop_ns(otelflow, args.tight)
            telemetry.force_flush(10_000)
            out, _ = reader.communicate(timeout=60)
            telemetry.shutdown()
        finally:
            stop(reader)
            stop(viewer)
    seen = json.loads(out.strip().splitlines()[-1])

    def span(values: list[float]) -> str:
        return f"median {statistics.median(values):.3f}x, range {min(values):.3f}-{max(values):.3f}x"

    print(f"a streamed call: {args.deltas} deltas over {args.seconds:g} s, {args.repeats} repeats, live to a viewer")
    print(f"  noise floor, the same pair with neither loop calling output_delta: {span(ratios['none'])}")
    for kind, label in (("long", "14 KB answer, cut at the limit"), ("short", "4 KB answer, never cut")):
        updates = [seen.get(s, {}).get("updated", -1) for s in measured[kind]]
        partial_max = max((seen.get(s, {}).get("partial_max", 0) for s in measured[kind]), default=0)
        whole = [p / n for p, n in zip(process[kind], process["none"], strict=True)]
        print(f"  {label}:")
        print(f"    calling thread CPU vs the same loop without output_delta: {span(ratios[kind])} (target <= 1.2x)")
        print(f"    span.updated per call at the SSE client: {updates} (target <= 25)")
        print(f"    longest partial answer streamed: {partial_max} bytes")
        print(f"    process CPU, every thread (pump, live processor, exporter): {span(whole)} of a run without deltas")
    print(
        f"unpaced loop, {args.tight} deltas: {with_ns:.0f} ns per iteration with output_delta, "
        f"{without_ns:.0f} ns without ({with_ns - without_ns:.0f} ns per delta)"
    )


if __name__ == "__main__":
    main()
