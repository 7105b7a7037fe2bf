"""Captured inputs and outputs: secrets redacted, long values truncated, odd values never crash."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import otelflow
from otelflow import attributes as A
from otelflow.scrub import REDACTED, capture, is_secret_key, scrub, scrub_text, truncate
from tests.conftest import Traced


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "api_key",
        "apiKey",
        "X-API-Key",
        "token",
        "access_token",
        "refreshToken",
        "Authorization",
        "client_secret",
        "db_password",
        "Cookie",
        "private_key",
        "credentials",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_tokens", "prompt_tokens", "token_count", "author", "topic", "keys", "config"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)


def test_nested_secrets_are_redacted_everywhere() -> None:
    value = {
        "user": "bob",
        "password": "hunter2",
        "nested": [{"api_key": "sk-abc", "keep": 1}, {"headers": {"authorization": "Bearer abc.def.ghi"}}],
        "token": None,
    }
    assert scrub(value) == {
        "user": "bob",
        "password": REDACTED,
        "nested": [{"api_key": REDACTED, "keep": 1}, {"headers": {"authorization": REDACTED}}],
        "token": REDACTED,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://api.example.com/v1?q=cats&api_key=abc123&page=2",
            f"https://api.example.com/v1?q=cats&api_key={REDACTED}&page=2",
        ),
        ("https://x.io/cb?code=1&access_token=zzz", f"https://x.io/cb?code=1&access_token={REDACTED}"),
        (
            "s3 https://b.s3.amazonaws.com/o?X-Amz-Signature=abcd&X-Amz-Date=1 done",
            f"s3 https://b.s3.amazonaws.com/o?X-Amz-Signature={REDACTED}&X-Amz-Date=1 done",
        ),
        ("postgres://app:s3cret@db:5432/main", f"postgres://app:{REDACTED}@db:5432/main"),
        ("use header Authorization: Bearer eyJhbGciOi.xyz12345.sig", f"use header Authorization: {REDACTED}"),
        ("login with password=hunter2 now", f"login with password={REDACTED} now"),
        ("key sk-proj-ABCDEFGHIJKLMNOPQRSTUV", f"key {REDACTED}"),
        ("https://example.com/page?q=1", "https://example.com/page?q=1"),
    ],
)
def test_secrets_inside_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


def test_truncation_cuts_on_a_character_boundary_and_says_so() -> None:
    text = "é" * 3000  # 6000 bytes
    cut, truncated = truncate(text, 1000)
    assert truncated
    assert len(cut.encode("utf-8")) <= 1000
    assert cut.endswith("…[truncated, 6000 bytes]")
    assert cut.startswith("éé")
    assert truncate("short", 1000) == ("short", False)


def test_values_that_are_not_json_never_crash() -> None:
    class Weird:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    @dataclass
    class Point:
        x: int
        secret: str

    loop: list[object] = []
    loop.append(loop)
    value = {
        "obj": Weird(),
        "point": Point(1, "s"),
        "bytes": b"\x00\x01",
        "set": {3},
        "nan": float("nan"),
        "loop": loop,
        7: "int key",
    }
    out = json.loads(capture(value, 4096).text)
    assert out["obj"] == "<unrepresentable Weird: RuntimeError>"
    assert out["point"] == {"x": 1, "secret": REDACTED}
    assert out["bytes"] == "<2 bytes>"
    assert out["set"] == [3]
    assert out["nan"] == "nan"
    assert out["loop"] == ["[cycle]"]
    assert out["7"] == "int key"


def test_captured_io_is_scrubbed_and_truncated_on_spans(traced: Traced) -> None:
    otelflow.configure(tracer_provider=traced.provider, otlp=False, live=False, max_value_bytes=200)

    @otelflow.tool("call_api")
    def call_api(url: str, api_key: str, body: str) -> dict[str, str]:
        return {"token": "t0k3n", "echo": body}

    call_api("https://api.example.com/x?token=abc", "sk-live-123", "x" * 1000)
    attrs = traced.span("execute_tool call_api").attributes
    assert attrs is not None
    text_in = str(attrs[A.INPUT_VALUE])
    assert "abc" not in text_in
    assert "sk-live-123" not in text_in
    assert REDACTED in text_in
    assert len(text_in.encode()) <= 200
    assert attrs[A.INPUT_TRUNCATED] is True
    assert "t0k3n" not in str(attrs[A.OUTPUT_VALUE])
    assert attrs[A.OUTPUT_TRUNCATED] is True


def test_capture_can_be_turned_off_by_environment(traced: Traced, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELFLOW_CAPTURE_IO", "false")
    otelflow.configure(tracer_provider=traced.provider, otlp=False, live=False)

    @otelflow.agent("quiet")
    def quiet(x: int) -> int:
        return x

    quiet(1)
    attrs = traced.span("invoke_agent quiet").attributes
    assert attrs is not None
    assert A.INPUT_VALUE not in attrs
    assert A.OUTPUT_VALUE not in attrs


def test_capture_can_be_turned_off_per_step(traced: Traced) -> None:
    @otelflow.node("private", capture_io=False)
    def private(x: int) -> int:
        return x

    private(1)
    attrs = traced.span("private").attributes
    assert attrs is not None
    assert A.INPUT_VALUE not in attrs


def test_bad_settings_are_clear_errors(monkeypatch: pytest.MonkeyPatch, traced: Traced) -> None:
    monkeypatch.setenv("OTELFLOW_MAX_VALUE_BYTES", "lots")
    with pytest.raises(ValueError, match="OTELFLOW_MAX_VALUE_BYTES='lots' is not a whole number"):
        otelflow.configure(tracer_provider=traced.provider, otlp=False, live=False)
    monkeypatch.setenv("OTELFLOW_MAX_VALUE_BYTES", "100")
    monkeypatch.setenv("OTELFLOW_CAPTURE_IO", "maybe")
    with pytest.raises(ValueError, match="OTELFLOW_CAPTURE_IO='maybe' is not a boolean"):
        otelflow.configure(tracer_provider=traced.provider, otlp=False, live=False)


def test_live_records_are_cleaned_like_exports(traced: Traced) -> None:
    tracer = traced.provider.get_tracer("another-library")
    with tracer.start_as_current_span("fetch \udcff token=tok3nvalue") as span:
        span.set_attribute("db.password", "dbpassw0rd")
        span.set_attribute("url.full", "https://x.io/a?api_key=abc123key")
        span.set_attribute("blob", "z" * 100_000)
        span.add_event("note", {"text": "Bearer abcdefghijklmnop"})
    (end,) = [r for r in traced.live() if r.phase == "end"]
    assert end.name == f"fetch \ufffd token={REDACTED}"
    assert end.attributes["db.password"] == REDACTED
    assert end.attributes["url.full"] == f"https://x.io/a?api_key={REDACTED}"
    assert len(end.attributes["blob"]) == 65_536
    assert end.attributes["blob"].endswith("…[truncated, 100000 chars]")
    assert end.events[0].attributes["text"] == REDACTED
    for secret in ("tok3nvalue", "dbpassw0rd", "abc123key", "abcdefghijklmnop"):
        assert secret not in repr(end.to_dict())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"password": "correct horse", "max_tokens": 5}', f'{{"password": "{REDACTED}", "max_tokens": 5}}'),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", f"aws_secret_access_key={REDACTED}"),
        ("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here", f"key {REDACTED} here"),
        ("commit 0123456789abcdef0123456789abcdef01234567", "commit 0123456789abcdef0123456789abcdef01234567"),
        ("max_tokens: 512, token: abc", f"max_tokens: 512, token: {REDACTED}"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA", REDACTED),
    ],
)
def test_more_secrets_inside_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected
