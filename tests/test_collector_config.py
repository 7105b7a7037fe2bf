"""collector-config/: the collector, compose and README agree; what the stock OTLP exporter sends, the viewer takes.

No collector binary or Docker engine runs here, so the configuration is checked structurally (a real collector
would reject a pipeline naming an undefined component at start-up).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otelflow
from otelflow import attributes as A
from otelflow.viewer.app import create_app
from tests.viewer.conftest import Viewer

DIR = Path(__file__).resolve().parent.parent / "collector-config"
COLLECTOR: dict[str, Any] = yaml.safe_load((DIR / "otel-collector.yaml").read_text(encoding="utf-8"))
COMPOSE: dict[str, Any] = yaml.safe_load((DIR / "docker-compose.yaml").read_text(encoding="utf-8"))
README = (DIR / "README.md").read_text(encoding="utf-8")
PIPELINES: dict[str, dict[str, list[str]]] = COLLECTOR["service"]["pipelines"]
ENV_DEFAULT = re.compile(r"\$\{env:([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def by_type(section: str, type_: str) -> list[str]:
    """Component ids of ``type_`` (``otlp_http`` matches ``otlp_http`` and ``otlp_http/name``)."""
    return [cid for cid in COLLECTOR[section] if cid.split("/", 1)[0] == type_]


def jaeger_and_viewer() -> tuple[str, str]:
    jaeger = [n for n, p in PIPELINES.items() if any(e in by_type("exporters", "otlp_grpc") for e in p["exporters"])]
    viewer = [n for n, p in PIPELINES.items() if any(e in by_type("exporters", "otlp_http") for e in p["exporters"])]
    assert len(jaeger) == 1, PIPELINES
    assert len(viewer) == 1, PIPELINES
    return jaeger[0], viewer[0]


def published(service: str) -> dict[int, int]:
    """Container port → host port of a compose service (``${OTELFLOW_BIND:-127.0.0.1}:4317:4317``)."""
    out = {}
    for entry in COMPOSE["services"][service].get("ports", []):
        host, container = str(entry).rsplit(":", 2)[-2:]
        out[int(container)] = int(host)
    return out


def test_every_pipeline_names_defined_components_and_every_component_is_used() -> None:
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in PIPELINES.items():
        assert name.split("/", 1)[0] == "traces"
        for section in used:
            for cid in pipeline.get(section, []):
                assert cid in COLLECTOR[section], f"{name} uses undefined {section[:-1]} {cid}"
                used[section].add(cid)
        assert pipeline["receivers"]
        assert pipeline["exporters"]
    for section, ids in used.items():
        assert set(COLLECTOR[section]) == ids, f"unused {section}: {set(COLLECTOR[section]) - ids}"


def test_memory_limiter_first_and_batch_last_where_used() -> None:
    for name, pipeline in PIPELINES.items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", name
        if "batch" in processors:
            assert processors[-1] == "batch", name


def test_pending_snapshots_are_dropped_on_the_jaeger_pipeline_only() -> None:
    jaeger, viewer = jaeger_and_viewer()
    filters = by_type("processors", "filter")
    assert len(filters) == 1
    conditions = COLLECTOR["processors"][filters[0]]["traces"]["span"]
    assert conditions == [f'attributes["{A.PENDING}"] == true']
    assert filters[0] in PIPELINES[jaeger]["processors"]
    assert filters[0] not in PIPELINES[viewer]["processors"]
    assert "batch" not in PIPELINES[viewer]["processors"], "live snapshots and heartbeats must not wait for a batch"


def test_exporters_point_at_the_compose_services_and_the_viewer_receiver() -> None:
    exporters = COLLECTOR["exporters"]
    jaeger_endpoint = exporters[by_type("exporters", "otlp_grpc")[0]]["endpoint"]
    var, default = ENV_DEFAULT.fullmatch(jaeger_endpoint).groups()  # type: ignore[union-attr]
    assert COMPOSE["services"]["collector"]["environment"][var] == default == "jaeger:4317"
    viewer_exporter = exporters[by_type("exporters", "otlp_http")[0]]
    match = ENV_DEFAULT.match(viewer_exporter["traces_endpoint"])
    assert match is not None
    assert viewer_exporter["traces_endpoint"].endswith("/v1/traces")
    assert COMPOSE["services"]["collector"]["environment"][match.group(1)] == match.group(2) == "http://viewer:8080"
    assert viewer_exporter["headers"]["Authorization"] == "Bearer ${env:OTELFLOW_TOKEN}"
    assert "OTELFLOW_TOKEN" in COMPOSE["services"]["collector"]["environment"]


def test_ports_agree_across_collector_compose_and_readme() -> None:
    receivers = COLLECTOR["receivers"]["otlp"]["protocols"]
    ports = {proto: int(cfg["endpoint"].rsplit(":", 1)[1]) for proto, cfg in receivers.items()}
    assert ports == {"grpc": 4317, "http": 4318}
    assert published("collector") == {4317: 4317, 4318: 4318}
    assert published("jaeger") == {16686: 16686}, "only the Jaeger UI is published; the collector writes to Jaeger"
    command = COMPOSE["services"]["viewer"]["command"]
    viewer_port = int(command[command.index("--port") + 1])
    assert published("viewer") == {viewer_port: viewer_port} == {8080: 8080}
    for port, what in ((4317, "OTLP gRPC"), (4318, "OTLP HTTP"), (16686, "Jaeger UI"), (8080, "viewer")):
        assert re.search(rf"\b{port}\b[^|\n]*{what}|{what}[^|\n]*\b{port}\b", README), (port, what)


def test_compose_pins_images_and_starts_the_viewer_with_a_token() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"collector", "jaeger", "viewer"}
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":\d+\.\d+\.\d+$", image), f"{name} image {image} is not pinned"
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    assert services["collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    command = services["viewer"]["command"]
    assert command[:3] == ["serve", "--host", "0.0.0.0"]
    assert command[command.index("--token") + 1].startswith("${OTELFLOW_TOKEN:?")
    assert "OTELFLOW_JAEGER_URL" in services["viewer"]["environment"]
    assert "OTELFLOW_JAEGER_URL" in README
    assert (DIR / services["collector"]["volumes"][0].split(":")[0]).resolve() == DIR / "otel-collector.yaml"
    dockerfile = (DIR / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim", dockerfile, re.M)
    collector_version = services["collector"]["image"].rsplit(":", 1)[1]
    assert f"otelcol-contrib {collector_version}" in (DIR / "otel-collector.yaml").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# What the collector's otlp_http exporter sends (OTLP http/protobuf, gzip) reaches the viewer intact
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def viewer() -> Iterator[Viewer]:
    v = Viewer(create_app(token="tok")).start()
    yield v
    v.stop()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_stock_otlp_exporter_feeds_the_viewer(viewer: Viewer, compression: Compression) -> None:
    exporter = OTLPSpanExporter(
        endpoint=f"{viewer.url}/v1/traces", headers={"Authorization": "Bearer tok"}, compression=compression
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "via-collector"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = otelflow.configure(tracer_provider=provider, otlp=False, live=False)
    run_id = f"job-{compression.name}"
    try:
        with otelflow.workflow("pipeline", run_id=run_id), otelflow.agent("researcher"):
            otelflow.progress(50, "half")
            with otelflow.tool("search"):
                pass
    finally:
        telemetry.shutdown()
        provider.shutdown()
    detail = httpx.get(f"{viewer.url}/api/runs/{run_id}", headers={"authorization": "Bearer tok"}, timeout=5).json()
    spans = {s["name"]: s for s in detail["spans"]}
    assert set(spans) == {"invoke_workflow pipeline", "invoke_agent researcher", "execute_tool search"}
    assert detail["run"]["status"] == "ok"
    assert detail["run"]["service"] == "via-collector"
    agent = spans["invoke_agent researcher"]["attributes"]
    assert agent[A.GEN_AI_OPERATION_NAME] == A.OP_INVOKE_AGENT
    assert agent[A.GEN_AI_AGENT_NAME] == "researcher"
    assert spans["execute_tool search"]["attributes"][A.GEN_AI_TOOL_NAME] == "search"
    assert spans["invoke_workflow pipeline"]["attributes"][A.GEN_AI_WORKFLOW_NAME] == "pipeline"
    assert {s["kind"] for s in spans.values()} == {"workflow", "agent", "tool"}
    assert [e["name"] for e in spans["invoke_agent researcher"]["events"]] == [A.EVENT_PROGRESS]
