"""otelflow.llm: the span of a model call, its answer growing live (coalesced, bounded, scrubbed), its forms.

Real parts: a real TracerProvider with the live processor (``traced``), and for the stream a real viewer
reading the worker's LiveExporter, followed by an SSE client. Time inside the helper comes from a clock the
tests move by hand, so the coalescing is counted, never timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import StatusCode

import otelflow
from otelflow import attributes as A
from otelflow import model_call
from otelflow.records import SpanRecord
from otelflow.wire import SPAN_ENDED, SPAN_STARTED, SPAN_UPDATED
from tests.conftest import Traced
from tests.viewer.conftest import SseClient, Viewer, wait_for

LIVE = (SPAN_STARTED, SPAN_UPDATED)
SECRET = "sk-proj-4f9Qx7LmZp2Wv8Rt6Yh3Kd1Ns5Bj0Gc"


class Clock:
    """Stands in for time.monotonic inside otelflow.llm; moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A clock moved by hand; the pump thread is off, ``tick()`` gives the streaming calls their turn."""
    fake = Clock()
    monkeypatch.setattr(model_call, "_clock", fake)
    monkeypatch.setattr(model_call, "_PUMP_ON", False)
    return fake


def tick() -> None:
    model_call.pump_once()


def attrs_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def updates_of(traced: Traced, span_id: str) -> list[SpanRecord]:
    return [r for r in traced.live() if r.span_id == span_id and r.phase == "update"]


# --- the span -------------------------------------------------------------------------------------------------


def test_a_streamed_chat_call_has_the_genai_shape(traced: Traced, clock: Clock) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is my parcel?"}]
    with otelflow.workflow("support") as run, otelflow.llm("gpt-4o-mini", provider="openai") as call:
        call.set_input(messages)
        clock.advance(0.25)
        for word in ("It ", "left ", "the ", "depot ", "today."):
            call.output_delta(word)
            tick()
            clock.advance(0.01)
        call.usage(input_tokens=812, output_tokens=95)
        call.set_response(response_model="gpt-4o-mini-2024-07-18", finish_reasons=["stop"])
    span = traced.span("chat gpt-4o-mini")
    attrs = attrs_of(span)
    assert span.parent is not None
    assert span.parent.span_id == int(run.span_id, 16)
    assert span.status.status_code == StatusCode.UNSET
    assert {k: attrs[k] for k in attrs if not k.startswith(("input.", "output.", "gen_ai.input", "gen_ai.output"))} == {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: "openai",
        A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        A.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
        A.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        A.GEN_AI_USAGE_INPUT_TOKENS: 812,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 95,
        A.KIND: "llm",
        A.OPENINFERENCE_SPAN_KIND: "LLM",
        A.OI_LLM_MODEL_NAME: "gpt-4o-mini",
        A.OI_LLM_PROVIDER: "openai",
        A.OI_TOKEN_COUNT_PROMPT: 812,
        A.OI_TOKEN_COUNT_COMPLETION: 95,
        A.LLM_TIME_TO_FIRST_TOKEN_MS: 250.0,  # from the span's start to the first delta
    }
    assert json.loads(attrs[A.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Answer briefly."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Where is my parcel?"}]},
    ]
    assert json.loads(attrs[A.INPUT_VALUE]) == messages
    assert attrs[A.INPUT_MIME_TYPE] == A.MIME_JSON
    # the deltas, joined, are the output; the partial answer was for the live view only
    assert attrs[A.OUTPUT_VALUE] == "It left the depot today."
    assert attrs[A.OUTPUT_MIME_TYPE] == A.MIME_TEXT
    assert json.loads(attrs[A.GEN_AI_OUTPUT_MESSAGES]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "It left the depot today."}],
            "finish_reason": "stop",
        }
    ]
    assert A.LLM_OUTPUT_PARTIAL not in attrs
    assert A.LLM_OUTPUT_CUT not in attrs


def test_operation_string_input_system_instructions_and_set_output(traced: Traced) -> None:
    with otelflow.llm("text-embedding-3-small", provider="openai", operation="embeddings"):
        pass
    with otelflow.llm("claude-x", provider="anthropic") as call:
        call.set_input("Summarise the ticket", system="You are a support agent.")
        call.set_output({"role": "assistant", "content": "Done.", "finish_reason": "stop"})
    assert attrs_of(traced.span("embeddings text-embedding-3-small"))[A.GEN_AI_OPERATION_NAME] == "embeddings"
    attrs = attrs_of(traced.span("chat claude-x"))
    assert json.loads(attrs[A.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Summarise the ticket"}]}
    ]
    assert json.loads(attrs[A.GEN_AI_SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "You are a support agent."}]
    assert json.loads(attrs[A.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Done."}], "finish_reason": "stop"}
    ]
    assert A.LLM_TIME_TO_FIRST_TOKEN_MS not in attrs  # nothing streamed


def test_tool_calls_and_tool_results_become_parts(traced: Traced) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ]
    with otelflow.llm("m") as call:
        call.set_input(messages)
    assert json.loads(attrs_of(traced.span("chat m"))[A.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c1", "name": "weather", "arguments": '{"city":"Paris"}'}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "18C"}]},
    ]


# --- live: coalescing, growth, bounds, secrets ------------------------------------------------------------------


def test_a_fast_loop_sends_at_most_one_update_per_100_ms(traced: Traced, clock: Clock) -> None:
    with otelflow.llm("m") as call:
        for _ in range(2000):  # 2,000 deltas over two seconds of the clock (4,000 characters: none cut)
            call.output_delta("t ")
            tick()  # as if the pump looked after every delta
            clock.advance(0.001)
    with otelflow.llm("frozen") as frozen:
        for _ in range(1000):  # no time passes: only the first delta goes out
            frozen.output_delta("x")
            tick()
    updates = updates_of(traced, call.span_id)
    # the first at once, then one per 100 ms of the 2 s: 21 at most (no timing, only the clock's count)
    assert 19 <= len(updates) <= 21
    assert len(updates_of(traced, frozen.span_id)) == 1
    assert attrs_of(traced.span("chat m"))[A.OUTPUT_VALUE] == "t " * 2000
    assert attrs_of(traced.span("chat frozen"))[A.OUTPUT_VALUE] == "x" * 1000


def test_the_partial_answer_grows_and_usage_sends_the_rest(traced: Traced, clock: Clock) -> None:
    with otelflow.llm("m") as call:
        seen = []
        for word in ("one ", "two ", "three ", "four "):
            call.output_delta(word)
            tick()
            seen.append((call.span.attributes or {}).get(A.LLM_OUTPUT_PARTIAL))  # type: ignore[attr-defined]
            clock.advance(0.06)
        assert seen == ["one ", "one ", "one two three ", "one two three "]
        call.usage(output_tokens=4)  # the stream is over: what was held back goes out now
        assert call.span.attributes[A.LLM_OUTPUT_PARTIAL] == "one two three four "  # type: ignore[attr-defined]


def test_a_secret_across_deltas_is_scrubbed_live_and_in_the_output(traced: Traced, clock: Clock) -> None:
    with otelflow.llm("m") as call:
        shown = []
        for piece in ("Your key is ", SECRET[:9], SECRET[9:20], SECRET[20:], " keep it safe"):
            call.output_delta(piece)
            clock.advance(0.2)
            tick()
            shown.append(call.span.attributes[A.LLM_OUTPUT_PARTIAL])  # type: ignore[attr-defined]
        # the start of the key is held back (its pattern does not match yet) until a space ends it
        assert shown == ["Your key is "] * 4 + ["Your key is [REDACTED] keep it safe"]
    assert attrs_of(traced.span("chat m"))[A.OUTPUT_VALUE] == "Your key is [REDACTED] keep it safe"
    everything = json.dumps([r.to_dict() for r in traced.live()]) + json.dumps(attrs_of(traced.span("chat m")))
    assert SECRET[:9] not in everything


def test_a_secret_after_a_long_plain_answer_is_scrubbed_in_the_window(traced: Traced, clock: Clock) -> None:
    """Only the end of a growing answer is scrubbed again; a key split across deltas far into it is still caught,
    and so is a PEM block, held back until its end line."""
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    with otelflow.llm("m") as call:
        for i in range(300):
            call.output_delta(f"plain{i} ")
            clock.advance(0.1)
            tick()
        for piece in (f"token {SECRET[:12]}", f"{SECRET[12:]} and ", pem[:40], pem[40:], " done "):
            call.output_delta(piece)
            clock.advance(0.1)
            tick()
            partial = call.span.attributes[A.LLM_OUTPUT_PARTIAL]  # type: ignore[attr-defined]
            assert SECRET[:9] not in partial
            assert "MIIEvQIBADAN" not in partial
        assert partial.endswith("plain299 token [REDACTED] and [REDACTED] done ")
    assert "MIIEvQIBADAN" not in attrs_of(traced.span("chat m"))[A.OUTPUT_VALUE]


def test_a_huge_answer_is_bounded_and_the_cut_counted(traced: Traced, clock: Clock) -> None:
    limit = otelflow.settings().max_value_bytes
    chunk = "é" * 500 + "x" * 500  # multi-byte characters at every possible cut
    with otelflow.llm("m") as call:
        for _ in range(200):  # 200,000 characters, 300,000 bytes, over 20 s of the clock
            call.output_delta(chunk)
            clock.advance(0.1)
            tick()
        call.usage(output_tokens=50_000)  # sends what was held back: the count of cut characters moves on
        partial = call.span.attributes[A.LLM_OUTPUT_PARTIAL]  # type: ignore[attr-defined]
        cut = call.span.attributes[A.LLM_OUTPUT_CUT]  # type: ignore[attr-defined]
        assert len(call.output_text) <= limit + 1024 + len(chunk)  # the helper keeps only the beginning
    assert len(partial.encode()) <= limit
    assert partial.startswith("é" * 500)  # the head of the answer, cut on a character boundary
    assert cut == 200_000 - len(partial)
    attrs = attrs_of(traced.span("chat m"))
    assert len(attrs[A.OUTPUT_VALUE].encode()) <= limit
    assert attrs[A.OUTPUT_VALUE].endswith("…[truncated, 200000 chars]")
    assert attrs[A.OUTPUT_TRUNCATED] is True
    assert json.loads(attrs[A.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]["content"] == attrs[A.OUTPUT_VALUE]
    updates = updates_of(traced, call.span_id)
    assert all(len(u.attributes.get(A.LLM_OUTPUT_PARTIAL, "").encode()) <= limit for u in updates)
    # one update per delta (every 100 ms) until the answer ran past what is kept (the 7th delta); from then on
    # only the count moved, once a second over the remaining 19.3 s; and the one of usage()
    assert len(updates) <= 7 + 20 + 1
    assert len(updates) < 200 // 4


def test_the_pump_thread_sends_what_came_after_the_last_update(traced: Traced) -> None:
    """With the real clock and the real pump thread: after the first delta the caller only appends; the text that
    came after an update shows within about 100 ms although no delta follows, at most ten updates a second."""
    with otelflow.llm("m") as call:
        call.output_delta("Hello")
        assert call.output_delta == call._parts.append  # the caller's whole cost from here on
        call.output_delta(" there")
        call.output_delta(", friend.")

        def partial() -> Any:
            return (call.span.attributes or {}).get(A.LLM_OUTPUT_PARTIAL)  # type: ignore[attr-defined]

        wait_for(lambda: partial() == "Hello there, friend.", what="the pump to send the rest")
    assert attrs_of(traced.span("chat m"))[A.OUTPUT_VALUE] == "Hello there, friend."
    call.output_delta("after the end")  # dropped
    assert call._parts == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_child_after_fork_streams_with_a_pump_of_its_own(traced: Traced) -> None:
    with otelflow.llm("before") as call:
        call.output_delta("the parent's pump is running")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pump thread was inherited; the first streaming call starts one
        code = 1
        try:
            with otelflow.llm("child") as child:
                child.output_delta("one")
                child.output_delta(" two")
                deadline = time.monotonic() + 10
                while child.span.attributes.get(A.LLM_OUTPUT_PARTIAL) != "one two":  # type: ignore[attr-defined]
                    if time.monotonic() > deadline:
                        raise TimeoutError("no pump in the child")
                    time.sleep(0.005)
            os.write(write_fd, b"ok")
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_fd, 100)
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == b"ok"


def test_capture_off_keeps_the_text_out_but_times_the_first_token(traced: Traced, clock: Clock) -> None:
    with otelflow.llm("m", capture_io=False) as call:
        call.set_input([{"role": "user", "content": "private"}])
        clock.advance(0.5)
        call.output_delta("private answer")
    attrs = attrs_of(traced.span("chat m"))
    assert attrs[A.LLM_TIME_TO_FIRST_TOKEN_MS] == 500.0
    assert not {A.INPUT_VALUE, A.OUTPUT_VALUE, A.GEN_AI_INPUT_MESSAGES, A.GEN_AI_OUTPUT_MESSAGES} & set(attrs)
    assert "private" not in json.dumps([r.to_dict() for r in traced.live()])


def test_the_viewer_streams_the_growing_answer_before_the_span_ends(
    make_viewer: Callable[..., Viewer], clock: Clock
) -> None:
    viewer = make_viewer()
    provider = TracerProvider(resource=Resource.create({"service.name": "llm-live"}))
    telemetry = otelflow.configure(tracer_provider=provider, live=viewer.url, otlp=False)
    sse = SseClient(f"{viewer.url}/api/stream")
    try:
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1, what="the SSE client")

        def partial_of(event: dict[str, Any]) -> Any:
            return event["data"]["span"]["attributes"].get(A.LLM_OUTPUT_PARTIAL)

        shown: list[str] = []
        types: list[str] = []
        with otelflow.llm("gpt-4o-mini", provider="openai") as call:
            for word in ("The ", "parcel ", "left ", "today."):
                call.output_delta(word)
                clock.advance(0.1)
                tick()
                want = "".join(("The ", "parcel ", "left ", "today.")[: len(shown) + 1])
                # the viewer shows this much before the next delta is even produced (the first may come with the
                # span's start, which the live processor snapshots when it delivers it)
                event = sse.read_until(lambda e, w=want: e["event"] in LIVE and partial_of(e) == w)
                assert event["data"]["span"]["status"] == "running"
                shown.append(partial_of(event))
                types.append(event["event"])
        ended = sse.read_until(lambda e: e["event"] == SPAN_ENDED and e["data"]["span"]["span_id"] == call.span_id)
        assert shown == ["The ", "The parcel ", "The parcel left ", "The parcel left today."]
        assert types[1:] == [SPAN_UPDATED] * 3
        attrs = ended["data"]["span"]["attributes"]
        assert attrs[A.OUTPUT_VALUE] == "The parcel left today."
        assert A.LLM_OUTPUT_PARTIAL not in attrs
        assert attrs[A.LLM_TIME_TO_FIRST_TOKEN_MS] == 0.0
        assert ended["data"]["span"]["kind"] == "llm"
    finally:
        sse.close()
        telemetry.shutdown()


# --- forms: decorator, current(), errors ------------------------------------------------------------------------


def test_decorated_sync_async_generator_and_async_generator(traced: Traced) -> None:
    @otelflow.llm("sync-model", provider="local")
    def answer(prompt: str) -> str:
        return f"echo {prompt}"

    @otelflow.llm("async-model")
    async def answer_async(messages: list[dict[str, str]]) -> str:
        call = otelflow.current()
        assert isinstance(call, otelflow.LlmCall)
        for word in ("a", "b", "c"):
            call.output_delta(word)
            await asyncio.sleep(0)
        call.usage(input_tokens=3, output_tokens=3)
        return "ignored: the streamed answer wins"

    @otelflow.llm("none-model")
    def with_nones() -> str:
        call = otelflow.current()
        assert isinstance(call, otelflow.LlmCall)
        for content in (None, "a", None, "b", None):  # OpenAI's first and last chunks carry no content
            call.output_delta(content)  # type: ignore[arg-type]
        return "returned (the streamed answer wins)"

    @otelflow.llm("gen-model")
    def stream(prompt: str) -> Iterator[str]:
        yield "Hel"
        yield "lo"

    @otelflow.llm("agen-model")
    async def astream(prompt: str) -> AsyncIterator[str]:
        for piece in ("Bon", "jour"):
            yield piece

    async def consume() -> list[str]:
        return [piece async for piece in astream("hi")]

    assert answer("ping") == "echo ping"
    assert with_nones() == "returned (the streamed answer wins)"
    assert asyncio.run(answer_async([{"role": "user", "content": "abc?"}])) == "ignored: the streamed answer wins"
    assert "".join(stream("hi")) == "Hello"
    assert asyncio.run(consume()) == ["Bon", "jour"]

    sync = attrs_of(traced.span("chat sync-model"))
    assert sync[A.OUTPUT_VALUE] == "echo ping"
    assert json.loads(sync[A.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "ping"}]}
    ]
    assert sync[A.GEN_AI_PROVIDER_NAME] == "local"
    asyn = attrs_of(traced.span("chat async-model"))
    assert asyn[A.OUTPUT_VALUE] == "abc"
    assert asyn[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert json.loads(asyn[A.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"] == "abc?"
    assert attrs_of(traced.span("chat gen-model"))[A.OUTPUT_VALUE] == "Hello"
    assert attrs_of(traced.span("chat none-model"))[A.OUTPUT_VALUE] == "ab"
    assert A.LLM_TIME_TO_FIRST_TOKEN_MS in attrs_of(traced.span("chat gen-model"))
    assert attrs_of(traced.span("chat agen-model"))[A.OUTPUT_VALUE] == "Bonjour"
    assert all(attrs_of(s)[A.KIND] == "llm" for s in traced.spans())
    assert otelflow.current() is None


def test_async_with_form(traced: Traced) -> None:
    async def main() -> None:
        async with otelflow.llm("m") as call:
            call.output_delta("ok")

    asyncio.run(main())
    assert attrs_of(traced.span("chat m"))[A.OUTPUT_VALUE] == "ok"


def test_an_error_ends_the_call_in_error_with_the_answer_so_far(traced: Traced) -> None:
    held: list[otelflow.LlmCall] = []

    def stalls() -> None:
        with otelflow.llm("m") as call:
            held.append(call)
            call.output_delta("partial ans")
            raise TimeoutError("stream stalled")

    with pytest.raises(TimeoutError):
        stalls()

    @otelflow.llm("m2")
    def broken(prompt: str) -> Iterator[str]:
        yield "x"
        raise ConnectionError("reset")

    with pytest.raises(ConnectionError):
        list(broken("q"))
    span = traced.span("chat m")
    assert span.status.status_code == StatusCode.ERROR
    assert attrs_of(span)[A.ERROR_TYPE] == "TimeoutError"
    assert attrs_of(span)[A.OUTPUT_VALUE] == "partial ans"
    assert A.LLM_OUTPUT_PARTIAL not in attrs_of(span)
    assert [e.name for e in span.events] == ["exception"]
    assert traced.span("chat m2").status.status_code == StatusCode.ERROR
    # after the end, the handle does nothing
    call = held[0]
    call.output_delta("late")
    call.usage(output_tokens=1)
    assert attrs_of(span)[A.OUTPUT_VALUE] == "partial ans"


def test_the_model_is_required() -> None:
    with pytest.raises(TypeError, match="model"):

        @otelflow.llm  # type: ignore[arg-type]
        def f() -> None: ...

    with pytest.raises(ValueError, match="name"):
        otelflow.llm("")


# --- the demo's support triage ----------------------------------------------------------------------------------


def test_the_demo_support_triage_makes_streamed_model_calls_inside_its_agents(traced: Traced, clock: Clock) -> None:
    from otelflow.engine.demo import DEMO_MODEL, SCENARIOS, run_support_triage
    from tests._engine_helpers import engine_instrumented, run

    assert "support triage" in [s.name for s in SCENARIOS]
    with engine_instrumented():
        shared = run(run_support_triage(0.0, 1, "triage-1"))
    assert shared["category"] == "billing"
    assert shared["sent"]["sent"] is True
    by_id = {s.context.span_id: s for s in traced.spans() if s.context is not None}
    calls = [s for s in traced.spans() if s.name == f"chat {DEMO_MODEL}"]
    parents = [by_id[s.parent.span_id].name for s in calls if s.parent is not None]
    assert parents == ["invoke_agent triage_classifier", "invoke_agent reply_drafter"]
    classify, draft = (attrs_of(s) for s in calls)
    assert classify[A.OUTPUT_VALUE] == "billing"
    assert json.loads(classify[A.GEN_AI_INPUT_MESSAGES])[0]["role"] == "system"
    assert draft[A.OUTPUT_VALUE] == shared["reply"]
    assert draft[A.GEN_AI_PROVIDER_NAME] == "simulated"
    assert draft[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert draft[A.GEN_AI_USAGE_OUTPUT_TOKENS] > 20
    assert A.LLM_TIME_TO_FIRST_TOKEN_MS in draft
    assert len(shared["reply"].split()) > 40  # a reply long enough to be watched growing word by word
