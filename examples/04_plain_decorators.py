"""4. Plain decorators, no engine: any Python code becomes a live trace.

    otelflow run examples/04_plain_decorators.py
    python examples/04_plain_decorators.py

``@otelflow.agent``, ``@otelflow.tool`` and ``@otelflow.node`` on ordinary functions (sync, async and a
generator), ``with otelflow.workflow(..., run_id=...)`` around the run, and the helpers that act on the
current span: ``progress``, ``data_flow``, ``log``, ``retry``. Deterministic and offline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import otelflow

PACE = 0.2


@otelflow.tool("lookup_customer")
def lookup_customer(customer_id: str) -> dict[str, str]:
    time.sleep(PACE)
    return {"id": customer_id, "tier": "gold" if customer_id.endswith("7") else "standard"}


@otelflow.tool("search_orders")
async def search_orders(customer_id: str, attempt_fails: int = 1) -> list[str]:
    for attempt in range(1, attempt_fails + 2):
        await asyncio.sleep(PACE)
        if attempt > attempt_fails:
            break
        otelflow.retry(attempt, "orders index busy", wait_s=PACE)  # an event on this tool's span
    return [f"order-{customer_id}-{n}" for n in range(3)]


@otelflow.agent("support_agent")
async def support_agent(customer_id: str, question: str) -> dict[str, object]:
    # the two tools run concurrently; both spans are children of this agent's span
    customer, orders = await asyncio.gather(asyncio.to_thread(lookup_customer, customer_id), search_orders(customer_id))
    otelflow.log("info", "context gathered", orders=len(orders))
    return {"customer": customer, "orders": orders, "question": question}


@otelflow.node("draft_reply")
def draft_reply(context: dict[str, object]) -> Iterator[str]:
    """A generator: its span covers the whole iteration, like a streamed LLM answer."""
    for word in f"Hello! About {context['question']!r}: your orders are on their way.".split():
        time.sleep(PACE / 10)
        yield word + " "


def main(pace: float = 0.2, run_id: str = "ticket-1042") -> str:
    """Handle one support ticket; returns the reply."""
    global PACE
    PACE = pace
    with otelflow.workflow("support_ticket", run_id=run_id) as run:
        run.set_input({"customer": "c-417", "question": "where is my parcel?"})
        context = asyncio.run(support_agent("c-417", "where is my parcel?"))
        run.progress(50, "context gathered")
        otelflow.data_flow("support_agent", "draft_reply", context)
        reply = "".join(draft_reply(context)).strip()
        run.progress(100, "reply drafted")
        run.set_output(reply)
    return reply


if __name__ == "__main__":
    otelflow.configure(service_name="support-desk")
    print(main())
