"""The local OpenAI-compatible server of the examples, driven by the real ``openai`` client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest

from tests.test_examples import load

server = load("local_llm_server")


@pytest.fixture
def client() -> Iterator[openai.OpenAI]:
    with server.serve(chunk_delay=0.05) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
            yield c


def test_chat_answers_deterministically_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert first.choices[0].message.content == second.choices[0].message.content == "Echo: hello there"
    assert first.model == "gpt-4o-mini-2024-07-18"
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (4, 3)


def test_streaming_comes_in_chunks_with_a_delay_and_a_usage_chunk(client: openai.OpenAI) -> None:
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals, text, usage = [], "", None
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "Echo: one two three"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 4)
    assert arrivals[-1] - arrivals[0] >= 0.05 * (len(arrivals) - 2), "chunks came all at once"


def test_tools_get_a_tool_call_then_an_answer(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    asked = [{"role": "user", "content": "find otelflow"}]
    call = client.chat.completions.create(model="gpt-4o", messages=asked, tools=tools)  # type: ignore[arg-type]
    [tool_call] = call.choices[0].message.tool_calls or []
    assert call.choices[0].finish_reason == "tool_calls"
    assert tool_call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(tool_call.function.arguments) == {"query": "find otelflow"}  # type: ignore[union-attr]
    answered = [
        *asked,
        call.choices[0].message.model_dump(),
        {"role": "tool", "tool_call_id": tool_call.id, "content": "found"},
    ]
    final = client.chat.completions.create(model="gpt-4o", messages=answered, tools=tools)  # type: ignore[arg-type]
    assert final.choices[0].message.content == "Echo: find otelflow"


def test_embeddings_and_errors(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert [len(d.embedding) for d in result.data] == [8, 8]
    assert result.usage.prompt_tokens == 3
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fail", messages=[{"role": "user", "content": "x"}])
