"""The example workflows that ``otelflow demo`` keeps running and ``examples/01``–``03`` run once.

Deterministic and offline: the "work" is a pause of ``pace`` seconds per unit (``pace=0`` in tests) and every
result is computed from the inputs; the model calls of :func:`support_triage` are simulated (``otelflow.llm``
spans whose answers stream word by word at the demo's pace, no network). Four flows, each built fresh by a
function: :func:`content_pipeline`, :func:`parallel_research`, :func:`flaky_agent` and :func:`support_triage`.
Each ``run_*`` coroutine builds one, runs it (as ``run_id``, when given) and returns the shared dict (or raises,
for the failing scenario); :data:`SCENARIOS` is the rotation ``otelflow demo`` runs. Tracing comes from
:class:`otelflow.engine.instrumentor.EngineInstrumentor`; the nodes only add what the engine cannot know
(``otelflow.progress`` of the batch items)::

    import asyncio
    from otelflow.engine.demo import run_content_pipeline
    from otelflow.engine.instrumentor import EngineInstrumentor

    EngineInstrumentor().instrument()
    shared = asyncio.run(run_content_pipeline(pace=0.2, run_id="job-123"))
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from otelflow.engine import AsyncBatchNode, AsyncFlow, AsyncNode, Parallel
from otelflow.instrument import progress
from otelflow.model_call import llm

__all__ = [
    "BRIEFS",
    "DEMO_MODEL",
    "SCENARIOS",
    "Scenario",
    "UpstreamError",
    "content_pipeline",
    "flaky_agent",
    "parallel_research",
    "run_cancelled",
    "run_content_pipeline",
    "run_failing",
    "run_flaky",
    "run_parallel_research",
    "run_support_triage",
    "support_triage",
]

_Shared = dict[str, Any]

BRIEFS: Final = (
    "How small teams can watch their AI agents work, live",
    "Tracing a retrieval pipeline from question to answer",
    "Why retries and fallbacks belong in the trace",
    "Reading a flame graph of a multi-agent system",
)
"""The subjects the content pipeline writes about and the research answers, one per run in turn."""

_SOURCES: Final = ("web", "papers", "code")


class UpstreamError(ConnectionError):
    """The simulated upstream service failed (the flaky scenarios)."""


async def _work(pace: float, units: float = 1.0) -> None:
    if pace > 0:
        await asyncio.sleep(pace * units)


def _digest(*parts: object) -> str:
    """A short stable fingerprint, standing in for the content a model or an API would return."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8]


class _Paced(AsyncNode):
    def __init__(self, pace: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pace = pace


class _Step(_Paced):
    """A paced node that reads ``shared[reads]`` and stores what ``exec_async`` returns in ``shared[writes]``."""

    reads: str
    writes: str

    async def prep_async(self, shared: _Shared) -> Any:
        return shared[self.reads]

    async def post_async(self, shared: _Shared, prep_result: Any, exec_result: Any) -> str | None:
        shared[self.writes] = exec_result
        return None


async def _run(flow: AsyncFlow, shared: _Shared, run_id: str | None) -> _Shared:
    await flow.run_async(shared, run_id=run_id)
    return shared


# --- 1. content pipeline: topic_identification → kb_ingestion → section_writer (batch) → reviewer ----------------


class _TopicIdentification(_Step):
    kind = "agent"
    name = "topic_identification"
    reads = "brief"

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 2)
        brief: str = prep_result
        topic = brief.split(",")[0].lower()
        return {"topic": topic, "outline": ["Introduction", "Background", "How it works", "Conclusion"]}

    async def post_async(self, shared: _Shared, prep_result: Any, exec_result: Any) -> str | None:
        shared["topic"] = exec_result["topic"]
        shared["outline"] = exec_result["outline"]
        return None


class _KbIngestion(_Step):
    kind = "tool"
    name = "kb_ingestion"
    writes = "knowledge"

    async def prep_async(self, shared: _Shared) -> Any:
        return shared["topic"], shared["outline"]

    async def exec_async(self, prep_result: Any) -> Any:
        topic, outline = prep_result
        await _work(self.pace, 1.5)
        return {title: [f"doc-{_digest(topic, title, i)}" for i in range(3)] for title in outline}


class _SectionWriter(AsyncBatchNode):
    """One ``exec_async`` per section; reports ``otelflow.progress`` as sections are written."""

    kind = "agent"
    name = "section_writer"

    def __init__(self, pace: float) -> None:
        super().__init__()
        self.pace = pace

    async def prep_async(self, shared: _Shared) -> Any:
        outline: list[str] = shared["outline"]
        return [(i, len(outline), title, shared["knowledge"][title]) for i, title in enumerate(outline)]

    async def exec_async(self, prep_result: Any) -> Any:
        index, total, title, docs = prep_result
        await _work(self.pace, 1)
        progress(completed=index + 1, total=total, message=f"wrote {title}")
        return f"## {title}\n" + " ".join(f"Drawing on {doc}." for doc in docs)

    async def post_async(self, shared: _Shared, prep_result: Any, exec_result: Any) -> str | None:
        shared["sections"] = exec_result
        return None


class _Reviewer(_Step):
    kind = "agent"
    name = "reviewer"
    reads, writes = "sections", "review"

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 1)
        words = sum(len(section.split()) for section in prep_result)
        return {"approved": words >= 20, "words": words}

    async def post_async(self, shared: _Shared, prep_result: Any, exec_result: Any) -> str | None:
        await super().post_async(shared, prep_result, exec_result)
        return "approve" if exec_result["approved"] else "reject"


def content_pipeline(pace: float = 0.0) -> AsyncFlow:
    """``topic_identification`` → ``kb_ingestion`` → ``section_writer`` (batch) → ``reviewer``."""
    topics = _TopicIdentification(pace)
    topics >> _KbIngestion(pace) >> _SectionWriter(pace) >> _Reviewer(pace)
    return AsyncFlow(start=topics, name="content_pipeline")


async def run_content_pipeline(pace: float = 0.0, n: int = 0, run_id: str | None = None) -> _Shared:
    """Runs :func:`content_pipeline` once on the ``n``-th of :data:`BRIEFS`; ends with ``shared["review"]``."""
    return await _run(content_pipeline(pace), {"brief": BRIEFS[n % len(BRIEFS)]}, run_id)


# --- 2. parallel research: planner → three researcher agents (each: search → read tools) → synthesizer --------


class _ResearchPlanner(_Step):
    kind = "agent"
    name = "research_planner"
    reads = "question"

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 1)
        return {source: f"{prep_result} ({source})" for source in _SOURCES}

    async def post_async(self, shared: _Shared, prep_result: Any, exec_result: Any) -> str | None:
        shared["queries"] = exec_result
        shared["findings"] = {}
        return None


class _Search(_Step):
    kind = "tool"
    name = "search"

    def __init__(self, pace: float, source: str, hits: int) -> None:
        super().__init__(pace, node_id=f"{source}.search")
        self.source = source
        self.hits = hits
        self.writes = f"{source}_hits"

    async def prep_async(self, shared: _Shared) -> Any:
        return shared["queries"][self.source]

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 1 + self.hits / 2)  # the branches finish at different times
        return [f"{self.source}://{_digest(prep_result, i)}" for i in range(self.hits)]


class _ReadSources(_Step):
    kind = "tool"
    name = "read_sources"

    def __init__(self, pace: float, source: str) -> None:
        super().__init__(pace, node_id=f"{source}.read")
        self.source = source
        self.reads = f"{source}_hits"

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, len(prep_result) / 2)
        return [f"summary of {url}" for url in prep_result]

    async def post_async(self, shared: _Shared, prep_result: Any, exec_result: Any) -> str | None:
        shared["findings"][self.source] = exec_result
        return None


def _researcher(source: str, hits: int, pace: float = 0.0) -> AsyncFlow:
    """An agent made of two tool calls: ``search`` → ``read_sources``."""
    search = _Search(pace, source, hits)
    search >> _ReadSources(pace, source)
    return AsyncFlow(start=search, name=f"{source}_researcher", kind="agent")


class _Synthesizer(_Step):
    kind = "agent"
    name = "synthesizer"
    reads, writes = "findings", "report"

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 1)
        return {"sources": sorted(prep_result), "notes": sum(len(v) for v in prep_result.values())}


def parallel_research(pace: float = 0.0) -> AsyncFlow:
    """``research_planner`` → fan-out to ``web``/``papers``/``code`` researchers → ``synthesizer``."""
    planner = _ResearchPlanner(pace)
    branches = [_researcher(source, hits, pace) for source, hits in zip(_SOURCES, (3, 2, 4), strict=True)]
    planner >> Parallel(*branches, name="fan_out") >> _Synthesizer(pace)
    return AsyncFlow(start=planner, name="parallel_research")


async def run_parallel_research(pace: float = 0.0, n: int = 0, run_id: str | None = None) -> _Shared:
    """Runs :func:`parallel_research` once on the ``n``-th of :data:`BRIEFS`; ends with ``shared["report"]``."""
    return await _run(parallel_research(pace), {"question": BRIEFS[n % len(BRIEFS)]}, run_id)


# --- 3. flaky agent: fetch_market_data (retried) → analyst (fallback) → publish ---------------------------------


class _FetchMarketData(_Step):
    """A tool whose upstream fails ``failures`` times before it answers; 3 attempts in total."""

    kind = "tool"
    name = "fetch_market_data"
    max_retries = 3
    writes = "quote"

    def __init__(self, pace: float) -> None:
        super().__init__(pace, wait=pace, backoff=2.0)

    async def prep_async(self, shared: _Shared) -> Any:
        # The attempt counter lives in prep's result: one per run, shared by that run's attempts.
        return {"symbol": shared["symbol"], "failures": shared.get("failures", 0), "attempts": [0]}

    async def exec_async(self, prep_result: Any) -> Any:
        prep_result["attempts"][0] += 1
        await _work(self.pace, 1)
        if prep_result["attempts"][0] <= prep_result["failures"]:
            raise UpstreamError(f"market data service timed out (attempt {prep_result['attempts'][0]})")
        return {"symbol": prep_result["symbol"], "price": 100 + int(_digest(prep_result["symbol"]), 16) % 50}


class _Analyst(_Step):
    """An agent whose model is overloaded (``model_down``: after 2 attempts it falls back to a rule) or hangs."""

    kind = "agent"
    name = "analyst"
    max_retries = 2
    writes = "analysis"

    def __init__(self, pace: float, started: asyncio.Event | None = None) -> None:
        super().__init__(pace, wait=pace)
        self.started = started

    async def prep_async(self, shared: _Shared) -> Any:
        return shared["quote"], shared.get("model_down", False), shared.get("model_hangs", False)

    async def exec_async(self, prep_result: Any) -> Any:
        quote, model_down, model_hangs = prep_result
        if self.started is not None:
            self.started.set()
        await _work(self.pace, 1)
        if model_hangs:
            await asyncio.Event().wait()  # until cancelled
        if model_down:
            raise RuntimeError("model overloaded, try again later")
        return f"{quote['symbol']} at {quote['price']}: hold (model analysis)"

    async def exec_fallback_async(self, prep_result: Any, exc: Exception) -> Any:
        quote = prep_result[0]
        return f"{quote['symbol']} at {quote['price']}: hold (rule-based fallback)"


class _Publish(_Step):
    name = "publish"
    reads, writes = "analysis", "published"

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 0.5)
        return f"published: {prep_result}"


def flaky_agent(pace: float = 0.0, started: asyncio.Event | None = None) -> AsyncFlow:
    """``fetch_market_data`` (3 attempts) → ``analyst`` (2 attempts, then a fallback) → ``publish``.

    ``started`` is set when the analyst begins an attempt (the cancelled scenario waits for it).
    """
    fetch = _FetchMarketData(pace)
    fetch >> _Analyst(pace, started) >> _Publish(pace)
    return AsyncFlow(start=fetch, name="flaky_agent")


async def run_flaky(pace: float = 0.0, n: int = 0, run_id: str | None = None) -> _Shared:
    """Recovers: the fetch succeeds on its third attempt, the analyst falls back."""
    symbol = ("ACME", "INITECH", "UMBRELLA")[n % 3]
    return await _run(flaky_agent(pace), {"symbol": symbol, "failures": 2, "model_down": True}, run_id)


async def run_failing(pace: float = 0.0, n: int = 0, run_id: str | None = None) -> _Shared:
    """Fails: the upstream is down for longer than the three attempts; raises :class:`UpstreamError`."""
    return await _run(flaky_agent(pace), {"symbol": "GLOBEX", "failures": 5}, run_id)


async def run_cancelled(pace: float = 0.0, n: int = 0, run_id: str | None = None) -> _Shared:
    """Cancelled: the run is cancelled while the analyst thinks (as a user stopping a job would)."""
    started = asyncio.Event()
    shared: _Shared = {"symbol": "HOOLI", "model_hangs": True}
    task = asyncio.create_task(flaky_agent(pace, started).run_async(shared, run_id=run_id))
    waiter = asyncio.create_task(started.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        await _work(pace, 2)  # let the viewer show it thinking for a moment
        task.cancel()
        await asyncio.wait({task})  # raises only if this coroutine itself is cancelled meanwhile
        shared["cancelled"] = task.cancelled()
        return shared
    finally:
        waiter.cancel()
        task.cancel()


# --- 4. support triage: classifier (model call) → lookup_order (tool) → reply_drafter (streamed model call) ------

DEMO_MODEL: Final = "demo-chat-mini"
"""The simulated model the support triage calls (provider ``simulated``)."""

_TICKETS: Final = (
    ("T-1042", "My parcel was supposed to arrive on Monday and the tracking page has not changed since Friday."),
    ("T-1043", "I was charged twice for the same order, please refund one of the payments."),
    ("T-1044", "The blender I received makes a grinding noise. Can I swap it for a new one?"),
)
_CATEGORIES: Final = {"T-1042": "shipping", "T-1043": "billing", "T-1044": "returns"}
_NEXT_STEPS: Final = {
    "shipping": "I have asked the carrier to trace it and you will get an update by tomorrow evening",
    "billing": "the duplicate payment has been refunded and should reach your account within five days",
    "returns": "a prepaid return label is on its way and the replacement ships as soon as we scan it",
}


def _tokens(text: str) -> int:
    """A stand-in for a tokenizer: about four tokens for every three words."""
    return max(1, len(text.split()) * 4 // 3)


async def _simulated_call(pace: float, units: float, system: str, prompt: str, answer: str, *, stream: bool) -> str:
    """One model call as ``otelflow.llm`` records it; a streamed answer arrives word by word over ``units``."""
    with llm(DEMO_MODEL, provider="simulated") as call:
        call.set_input([{"role": "system", "content": system}, {"role": "user", "content": prompt}])
        words = answer.split(" ")
        if stream:
            await _work(pace, units / 4)  # until the first token
            for i, word in enumerate(words):
                call.output_delta(word if i == 0 else " " + word)
                await _work(pace, units * 3 / 4 / len(words))
        else:
            await _work(pace, units)
            call.output_delta(answer)
        call.usage(input_tokens=_tokens(system) + _tokens(prompt), output_tokens=_tokens(answer))
        call.set_response(response_model=f"{DEMO_MODEL}-2026-01", finish_reasons=["stop"])
    return answer


class _Classifier(_Step):
    kind = "agent"
    name = "triage_classifier"
    reads, writes = "ticket", "category"

    async def exec_async(self, prep_result: Any) -> Any:
        ticket_id, text = prep_result
        system = "Classify the support ticket as one of: shipping, billing, returns. Answer with the label only."
        return await _simulated_call(self.pace, 1, system, text, _CATEGORIES[ticket_id], stream=False)


class _LookupOrder(_Step):
    kind = "tool"
    name = "lookup_order"
    writes = "order"

    async def prep_async(self, shared: _Shared) -> Any:
        return shared["ticket"][0]

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 1)
        return {"order": f"O-{_digest(prep_result)}", "status": "in transit", "items": 1}


class _ReplyDrafter(_Step):
    kind = "agent"
    name = "reply_drafter"
    writes = "reply"

    async def prep_async(self, shared: _Shared) -> Any:
        return shared["ticket"], shared["category"], shared["order"]

    async def exec_async(self, prep_result: Any) -> Any:
        (ticket_id, text), category, order = prep_result
        answer = (
            f"Hello, and thank you for writing to us about order {order['order']}. I am sorry for the trouble. "
            f"I looked into it right away: {_NEXT_STEPS[category]}. If anything else comes up, reply to this "
            f"message and quote {ticket_id} so that we can pick it up at once. Kind regards, the support team."
        )
        system = f"You are a friendly support agent. Write a short reply to a {category} ticket."
        return await _simulated_call(self.pace, 4, system, text, answer, stream=True)


class _SendReply(_Step):
    kind = "tool"
    name = "send_reply"
    reads, writes = "reply", "sent"

    async def exec_async(self, prep_result: Any) -> Any:
        await _work(self.pace, 0.5)
        return {"sent": True, "words": len(prep_result.split())}


def support_triage(pace: float = 0.0) -> AsyncFlow:
    """``triage_classifier`` (a model call) → ``lookup_order`` → ``reply_drafter`` (a streamed model call) →
    ``send_reply``."""
    classifier = _Classifier(pace)
    classifier >> _LookupOrder(pace) >> _ReplyDrafter(pace) >> _SendReply(pace)
    return AsyncFlow(start=classifier, name="support_triage")


async def run_support_triage(pace: float = 0.0, n: int = 0, run_id: str | None = None) -> _Shared:
    """Runs :func:`support_triage` once on the ``n``-th ticket; ends with ``shared["reply"]``."""
    return await _run(support_triage(pace), {"ticket": _TICKETS[n % len(_TICKETS)]}, run_id)


# --- the demo's rotation -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One kind of demo run: ``run(pace, n, run_id)`` runs it once (the ``n``-th time), named ``run_id``."""

    name: str
    run: Callable[[float, int, str | None], Awaitable[_Shared]]


SCENARIOS: Final = (
    Scenario("content pipeline", run_content_pipeline),
    Scenario("parallel research", run_parallel_research),
    Scenario("flaky agent recovering", run_flaky),
    Scenario("support triage", run_support_triage),
    Scenario("content pipeline", run_content_pipeline),
    Scenario("parallel research", run_parallel_research),
    Scenario("failing run", run_failing),
    Scenario("cancelled run", run_cancelled),
)
"""The rotation ``otelflow demo`` runs, one scenario per run in turn: mostly successes, then a failure and a
cancellation, so that every status shows in the viewer."""
