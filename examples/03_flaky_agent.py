"""3. A flaky agent with retries and a fallback; one run that fails; one that is cancelled.

    otelflow run examples/03_flaky_agent.py
    python examples/03_flaky_agent.py

``fetch_market_data`` (a tool, 3 attempts with backoff) → ``analyst`` (an agent, 2 attempts, then
``exec_fallback``) → ``publish``. Three runs of the same flow:

- recovers: the upstream fails twice (two ``otelflow.retry`` events), the model is down (a retry, then an
  ``otelflow.fallback`` event) and the run still succeeds;
- fails: the upstream fails more often than there are attempts; the tool span and the workflow span end with
  status ERROR and the exception, and the error reaches the caller untouched;
- cancelled: the task running the flow is cancelled while the analyst is working; both spans end as
  ``cancelled``.

Built in ``otelflow.engine.demo``; deterministic and offline.
"""

from __future__ import annotations

import asyncio

import otelflow
from otelflow.engine.demo import UpstreamError, run_cancelled, run_failing, run_flaky
from otelflow.engine.instrumentor import EngineInstrumentor


async def three_runs(pace: float) -> dict[str, str]:
    outcomes = {}
    recovered = await run_flaky(pace)
    outcomes["recovers"] = recovered["published"]
    try:
        await run_failing(pace)
    except UpstreamError as exc:
        outcomes["fails"] = f"{type(exc).__name__}: {exc}"
    cancelled = await run_cancelled(pace)
    outcomes["cancelled"] = "cancelled" if cancelled["cancelled"] else "not cancelled"
    return outcomes


def main(pace: float = 0.2) -> dict[str, str]:
    """Run the three scenarios one after another; returns what became of each."""
    return asyncio.run(three_runs(pace))


if __name__ == "__main__":
    otelflow.configure(service_name="flaky-agent")
    EngineInstrumentor().instrument()
    for scenario, outcome in main().items():
        print(f"{scenario:>9}: {outcome}")
