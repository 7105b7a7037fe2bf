r"""5. An engine program traced only by ``opentelemetry-instrument``: no otelflow import besides the engine.

    OTEL_SERVICE_NAME=order-flow OTEL_TRACES_EXPORTER=console \
        opentelemetry-instrument python examples/05_opentelemetry_instrument.py
    OTEL_SERVICE_NAME=order-flow OTELFLOW_VIEWER_URL=http://127.0.0.1:8080 \
        opentelemetry-instrument python examples/05_opentelemetry_instrument.py     # with `otelflow serve` running

``opentelemetry-instrument`` finds otelflow through two entry points: the configurator ``otelflow`` sets up the
SDK (OTLP export per ``OTEL_*``, live streaming to ``OTELFLOW_VIEWER_URL``) and the instrumentor
``otelflow_engine`` traces every flow and node. (With opentelemetry-distro installed too, choose ours with
``OTEL_PYTHON_CONFIGURATOR=otelflow``.) Run plainly, ``python examples/05_opentelemetry_instrument.py``, it
works the same and records nothing.

A sync flow with a conditional route: ``validate_order`` → ``charge_payment`` (a tool that is retried) →
``ship_items`` (a batch node, one exec per item); an invalid order takes the ``reject`` action to
``notify_rejection`` instead. Each run is named by its order (``flow.run(shared, run_id="order-A-100")``),
so the viewer also finds it at ``/runs/order-A-100``. Deterministic and offline.
"""

from __future__ import annotations

import time
from typing import Any

from otelflow.engine import BatchNode, Flow, Node

PACE = 0.1


class ValidateOrder(Node):
    name = "validate_order"

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["order"]

    def exec(self, prep_result: Any) -> Any:
        time.sleep(PACE)
        return bool(prep_result["items"]) and prep_result["total"] > 0

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["valid"] = exec_result
        return None if exec_result else "reject"


class ChargePayment(Node):
    """The payment gateway declines the first attempt of every order (deterministically)."""

    kind = "tool"
    name = "charge_payment"
    max_retries = 3

    def prep(self, shared: dict[str, Any]) -> Any:
        return {"order": shared["order"], "attempts": [0]}

    def exec(self, prep_result: Any) -> Any:
        prep_result["attempts"][0] += 1
        time.sleep(PACE)
        if prep_result["attempts"][0] == 1:
            raise TimeoutError("payment gateway did not answer")
        return f"payment-{prep_result['order']['id']}"

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["payment"] = exec_result
        return None


class ShipItems(BatchNode):
    name = "ship_items"

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["order"]["items"]

    def exec(self, prep_result: Any) -> Any:
        time.sleep(PACE / 2)
        return f"parcel for {prep_result}"

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["parcels"] = exec_result
        return None


class NotifyRejection(Node):
    name = "notify_rejection"

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["notified"] = True
        return None


def order_flow(pace: float) -> Flow:
    validate, charge = ValidateOrder(), ChargePayment(wait=pace)
    validate >> charge >> ShipItems()
    validate - "reject" >> NotifyRejection()
    return Flow(start=validate, name="order_fulfilment")


ORDERS = (
    {"id": "A-100", "items": ["book", "lamp"], "total": 42},
    {"id": "A-101", "items": [], "total": 0},
)


def main(pace: float = 0.1) -> list[dict[str, Any]]:
    """Fulfil the two orders (one is rejected); returns their shared dicts."""
    global PACE
    PACE = pace
    results = []
    for order in ORDERS:
        shared: dict[str, Any] = {"order": order}
        order_flow(pace).run(shared, run_id=f"order-{order['id']}")  # the viewer finds it as /runs/order-A-100
        results.append(shared)
    return results


if __name__ == "__main__":
    for shared in main():
        print(shared["order"]["id"], "shipped" if shared.get("parcels") else "rejected")
