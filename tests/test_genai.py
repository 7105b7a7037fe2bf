"""The normalized view of a model call (otelflow.genai): every source of messages, bad input, prices."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otelflow import attributes as A
from otelflow.genai import CONTENT_LIMIT, PriceError, Prices, llm_view, use_prices, with_cost
from otelflow.naming import kind_of
from otelflow.records import EventRecord, SpanRecord
from otelflow.wire import dumps, encode_span, encode_span_pair


@pytest.mark.parametrize(
    ("attributes", "kind"),
    [
        ({A.GEN_AI_OPERATION_NAME: "chat"}, "llm"),
        ({A.GEN_AI_OPERATION_NAME: "text_completion"}, "llm"),
        ({A.GEN_AI_OPERATION_NAME: "generate_content"}, "llm"),
        ({A.GEN_AI_OPERATION_NAME: "embeddings"}, "llm"),
        ({A.OPENINFERENCE_SPAN_KIND: "LLM"}, "llm"),
        ({A.OPENINFERENCE_SPAN_KIND: "EMBEDDING"}, "llm"),
        ({A.GEN_AI_OPERATION_NAME: "execute_tool"}, "tool"),
        ({A.OPENINFERENCE_SPAN_KIND: "RETRIEVER"}, "span"),
        ({"http.method": "POST"}, "span"),
    ],
)
def test_model_calls_are_kind_llm(attributes: dict[str, Any], kind: str) -> None:
    assert kind_of(attributes) == kind


def test_genai_parts_messages_with_tool_calls() -> None:
    """What opentelemetry-instrumentation-openai-v2 writes with gen_ai_latest_experimental + span_only."""
    view = llm_view(
        "chat gpt-4o",
        {
            A.GEN_AI_OPERATION_NAME: "chat",
            A.GEN_AI_PROVIDER_NAME: "openai",
            A.GEN_AI_REQUEST_MODEL: "gpt-4o",
            A.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06",
            A.GEN_AI_USAGE_INPUT_TOKENS: 3,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: 2,
            A.GEN_AI_INPUT_MESSAGES: json.dumps(
                [
                    {"role": "user", "parts": [{"type": "text", "content": "find"}]},
                    {
                        "role": "assistant",
                        "parts": [{"type": "tool_call", "id": "c1", "name": "lookup", "arguments": {"q": "x"}}],
                    },
                    {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "found"}]},
                ]
            ),
            A.GEN_AI_OUTPUT_MESSAGES: json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "Done"}], "finish_reason": "stop"}]
            ),
            A.GEN_AI_SYSTEM_INSTRUCTIONS: '[{"type":"text","content":"be brief"}]',
        },
    )
    assert (view["operation"], view["provider"], view["model"], view["request_model"]) == (
        "chat",
        "openai",
        "gpt-4o-2024-08-06",
        "gpt-4o",
    )
    assert (view["input_tokens"], view["output_tokens"]) == (3, 2)
    assert [(m["role"], m["content"]) for m in view["input_messages"]] == [
        ("user", "find"),
        ("assistant", ""),
        ("tool", "found"),
    ]
    assert view["input_messages"][1]["tool_calls"] == [{"id": "c1", "name": "lookup", "arguments": '{"q":"x"}'}]
    assert view["input_messages"][2]["tool_call_id"] == "c1"
    assert view["output_messages"][0]["content"] == "Done"
    assert view["finish_reasons"] == ["stop"]  # from the output message when the attribute is missing
    assert view["system_instructions"] == "be brief"
    assert view["problems"] == []


def test_openai_style_messages_already_a_list() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ]
    view = llm_view("chat", {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_INPUT_MESSAGES: messages})
    assert view["input_messages"][0]["content"].startswith("hi\n{")
    assert view["input_messages"][1]["tool_calls"] == [{"id": "t", "name": "f", "arguments": "{}"}]


def test_openinference_flattened_attributes() -> None:
    attrs = {
        A.OPENINFERENCE_SPAN_KIND: "LLM",
        A.OI_LLM_SYSTEM: "openai",
        A.OI_LLM_MODEL_NAME: "gpt-4o-mini-2024-07-18",
        A.OI_TOKEN_COUNT_PROMPT: 4,
        A.OI_TOKEN_COUNT_COMPLETION: 3,
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "be brief",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.contents.0.message_content.text": "part one",
        "llm.input_messages.1.message.contents.1.message_content.text": "part two",
        "llm.input_messages.10.message.role": "tool",
        "llm.input_messages.10.message.tool_call_id": "c1",
        "llm.input_messages.10.message.content": "tenth",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": "c2",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "lookup",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"q": 1}',
        A.OI_LLM_FINISH_REASON: "tool_calls",
    }
    view = llm_view("ChatCompletion", attrs, [EventRecord(A.OI_FIRST_TOKEN_EVENT, 1_250_000, {})], start_ns=1_000_000)
    assert (view["operation"], view["provider"], view["model"]) == ("chat", "openai", "gpt-4o-mini-2024-07-18")
    assert (view["input_tokens"], view["output_tokens"]) == (4, 3)
    assert [m["role"] for m in view["input_messages"]] == ["system", "user", "tool"]  # 10 after 1, not after 0
    assert view["input_messages"][1]["content"] == "part one\npart two"
    assert view["input_messages"][2]["tool_call_id"] == "c1"
    assert view["output_messages"][0]["tool_calls"] == [{"id": "c2", "name": "lookup", "arguments": '{"q": 1}'}]
    assert view["finish_reasons"] == ["tool_calls"]
    assert view["time_to_first_token_ms"] == 0.25


def test_messages_from_events_old_and_new() -> None:
    """Per-message events (their body joined as attributes, or as a JSON "body") and the one-event form."""
    old = [
        EventRecord(A.EVENT_GEN_AI_SYSTEM_MESSAGE, 1, {"content": "be brief"}),
        EventRecord(A.EVENT_GEN_AI_USER_MESSAGE, 2, {A.LOG_BODY: {"content": "hello"}}),
        EventRecord(A.EVENT_GEN_AI_TOOL_MESSAGE, 3, {"body": {"content": "42", "id": "c1"}}),
        EventRecord(
            A.EVENT_GEN_AI_CHOICE,
            4,
            {"body": json.dumps({"index": 0, "finish_reason": "stop", "message": {"content": "Hi!"}})},
        ),
    ]
    view = llm_view("chat", {A.GEN_AI_OPERATION_NAME: "chat"}, old)
    assert [(m["role"], m["content"]) for m in view["input_messages"]] == [
        ("system", "be brief"),
        ("user", "hello"),
        ("tool", "42"),
    ]
    assert view["input_messages"][2]["tool_call_id"] == "c1"
    assert [(m["role"], m["content"]) for m in view["output_messages"]] == [("assistant", "Hi!")]
    assert view["finish_reasons"] == ["stop"]

    details = EventRecord(
        A.EVENT_GEN_AI_INFERENCE_DETAILS,
        5,
        {
            A.GEN_AI_INPUT_MESSAGES: [{"role": "user", "parts": [{"type": "text", "content": "q"}]}],
            A.GEN_AI_OUTPUT_MESSAGES: '[{"role": "assistant", "parts": [{"type": "text", "content": "a"}]}]',
            A.GEN_AI_SYSTEM_INSTRUCTIONS: "sys",
        },
    )
    view = llm_view("chat", {A.GEN_AI_OPERATION_NAME: "chat"}, [details])
    assert [m["content"] for m in view["input_messages"] + view["output_messages"]] == ["q", "a"]
    assert view["system_instructions"] == "sys"


@pytest.mark.parametrize("bad", ["812", -5, 1.5, True, float("nan"), [1]])
def test_token_counts_that_are_not_counts_are_null_with_the_reason(bad: Any) -> None:
    view = llm_view(
        "chat", {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_USAGE_INPUT_TOKENS: bad, A.GEN_AI_USAGE_OUTPUT_TOKENS: 7}
    )
    assert view["input_tokens"] is None
    assert view["output_tokens"] == 7
    assert view["problems"] == [f"gen_ai.usage.input_tokens is not a token count: {bad!r}"]


def test_messages_that_are_not_json_become_one_text_message() -> None:
    view = llm_view("chat", {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_INPUT_MESSAGES: "hello {not json"})
    assert view["input_messages"] == [
        {"role": "", "content": "hello {not json", "tool_calls": [], "tool_call_id": None, "cut": 0}
    ]
    assert view["problems"] == ["gen_ai.input.messages is not JSON: shown as text"]
    view = llm_view("chat", {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_INPUT_MESSAGES: "42"})
    assert view["input_messages"][0]["content"] == "42"
    view = llm_view(
        "chat", {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_INPUT_MESSAGES: '[null, 3, {"role": 5, "parts": "x"}]'}
    )
    assert len(view["input_messages"]) == 3


def test_a_5_mb_message_is_cut_with_a_count() -> None:
    big = "x" * 5_000_000
    view = llm_view(
        "chat",
        {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_INPUT_MESSAGES: json.dumps([{"role": "user", "content": big}])},
    )
    [message] = view["input_messages"]
    assert len(message["content"]) == CONTENT_LIMIT
    assert message["cut"] == 5_000_000 - CONTENT_LIMIT


def test_secrets_in_messages_are_scrubbed() -> None:
    content = "use key sk-abcdefghijklmnopqrstuvwxyz0123456789 please"
    messages = [
        {"role": "user", "content": content},
        {
            "role": "assistant",
            "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": {"api_key": "hunter2"}}}],
        },
    ]
    view = llm_view("chat", {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_INPUT_MESSAGES: messages})
    text = json.dumps(view)
    assert "sk-abcdefghijklmnopqrstuvwxyz" not in text
    assert "hunter2" not in text
    assert "[REDACTED]" in view["input_messages"][0]["content"]


def test_partial_output_and_cut() -> None:
    view = llm_view(
        "chat",
        {
            A.GEN_AI_OPERATION_NAME: "chat",
            A.LLM_OUTPUT_PARTIAL: "Hello wor",
            A.LLM_OUTPUT_CUT: 12,
            A.LLM_TIME_TO_FIRST_TOKEN_MS: 41.5,
        },
    )
    assert (view["partial_output"], view["partial_cut"], view["time_to_first_token_ms"]) == ("Hello wor", 12, 41.5)


def test_prices_match_dated_ids_and_provider_prefixes() -> None:
    prices = Prices.from_json(
        {
            "date": "2025-06-01",
            "models": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}, "claude-3-5-sonnet": {"input": 3, "output": 15}},
        },
        "t",
    )
    assert prices.lookup("gpt-4o-mini-2024-07-18") == (0.15, 0.6)
    assert prices.lookup("openai/GPT-4o-mini") == (0.15, 0.6)
    assert prices.lookup("claude-3-5-sonnet-20241022") == (3.0, 15.0)
    assert prices.lookup("claude-3-5-sonnet-latest") == (3.0, 15.0)
    assert prices.lookup("gpt-4o") is None  # no loose prefix match: gpt-4o is not gpt-4o-mini
    assert prices.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert prices.cost("gpt-4o-mini", None, None) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], 'f: expected an object with a "models" object'),
        ({"models": {"m": 3}}, 'f: models.m: expected an object with "input" and "output"'),
        ({"models": {"m": {"input": "cheap"}}}, "f: models.m.input: expected a number of USD per 1M tokens, >= 0"),
        (
            {"models": {"m": {"input": 1, "output": -1}}},
            "f: models.m.output: expected a number of USD per 1M tokens, >= 0",
        ),
    ],
)
def test_bad_price_tables_say_where(data: Any, message: str) -> None:
    with pytest.raises(PriceError) as raised:
        Prices.from_json(data, "f")
    assert str(raised.value) == message


def _llm_record(**attrs: Any) -> SpanRecord:
    return SpanRecord(
        "1" * 32,
        "2" * 16,
        "chat gpt-4o-mini",
        "3" * 16,
        kind_of(attrs),
        3,
        1_000,
        2_000_000,
        "ok",
        "",
        attrs,
        (),
        "svc",
        {"service.name": "svc"},
        "scope",
    )


def test_the_envelope_span_has_llm_only_for_model_calls() -> None:
    use_prices(Prices({"gpt-4o-mini": (0.15, 0.6)}, "2025-06-01"))
    try:
        rec = _llm_record(
            **{
                A.GEN_AI_OPERATION_NAME: "chat",
                A.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
                A.GEN_AI_USAGE_INPUT_TOKENS: 812,
                A.GEN_AI_USAGE_OUTPUT_TOKENS: 95,
            }
        )
        span = json.loads(encode_span(rec)[0])
        assert span["llm"]["cost_usd"] == pytest.approx((812 * 0.15 + 95 * 0.6) / 1e6)
        assert span["llm"]["cost_estimate"] is True
        assert span == json.loads(dumps(rec.to_dict()))
        started, ended, _ = encode_span_pair(rec)
        assert json.loads(started)["llm"]["model"] == "gpt-4o-mini-2024-07-18"
        assert json.loads(ended) == span
        plain = _llm_record(**{A.KIND: "tool"})
        assert "llm" not in json.loads(encode_span(plain)[0])
        assert "llm" not in plain.to_dict()
    finally:
        use_prices(None)
    assert with_cost({"model": "gpt-4o-mini", "input_tokens": 1, "output_tokens": 1})["cost_usd"] is None


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "parts",
                    "type",
                    "tool_calls",
                    "function",
                    "name",
                    "arguments",
                    "id",
                    "message",
                    "body",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        A.GEN_AI_INPUT_MESSAGES, A.GEN_AI_OUTPUT_MESSAGES, A.GEN_AI_SYSTEM_INSTRUCTIONS, A.GEN_AI_USAGE_INPUT_TOKENS,
        A.GEN_AI_RESPONSE_MODEL, A.GEN_AI_RESPONSE_FINISH_REASONS, A.LLM_OUTPUT_PARTIAL, A.LLM_OUTPUT_CUT,
        A.LLM_TIME_TO_FIRST_TOKEN_MS, "llm.input_messages.0.message.content", "llm.input_messages.x.message.role",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
    ]
)  # fmt: skip


_event_names = st.sampled_from([A.EVENT_GEN_AI_CHOICE, A.EVENT_GEN_AI_USER_MESSAGE, A.EVENT_GEN_AI_INFERENCE_DETAILS])
_event_attrs = st.dictionaries(
    st.sampled_from(["body", "content", "message", A.GEN_AI_INPUT_MESSAGES]), _values, max_size=3
)


@given(
    attributes=st.dictionaries(_keys, _values | st.text().map(lambda t: "[" + t), max_size=6),
    events=st.lists(st.tuples(_event_names, _event_attrs), max_size=3),
)
def test_any_attributes_give_a_view_and_never_an_exception(attributes: dict[str, Any], events: list[Any]) -> None:
    view = llm_view("chat", {A.GEN_AI_OPERATION_NAME: "chat", **attributes}, [EventRecord(n, 1, a) for n, a in events])
    assert "could not read" not in " ".join(view["problems"])
    assert all(isinstance(m["content"], str) for m in view["input_messages"] + view["output_messages"])
    dumps(view)  # JSON that the stream can carry
