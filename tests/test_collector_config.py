"""collector-config/: the collectors, compose files, nginx and README agree; what the stock OTLP exporter sends, the
viewer takes.

No collector binary or Docker engine runs here, so the configurations are checked structurally (a real collector
would reject a pipeline naming an undefined component at start-up); nginx.conf goes through Debian's `nginx -t`.
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


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DIR / name).read_text(encoding="utf-8"))
    return data


COLLECTOR = load("otel-collector.yaml")
COMPOSE = load("docker-compose.yaml")
COLLECTOR_REPLICAS = load("otel-collector-replicas.yaml")
COMPOSE_REPLICAS = load("docker-compose.replicas.yaml")
COLLECTORS = {"otel-collector.yaml": COLLECTOR, "otel-collector-replicas.yaml": COLLECTOR_REPLICAS}
README = (DIR / "README.md").read_text(encoding="utf-8")
PIPELINES: dict[str, dict[str, list[str]]] = COLLECTOR["service"]["pipelines"]
ENV_DEFAULT = re.compile(r"\$\{env:([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def by_type(section: str, type_: str, collector: dict[str, Any] = COLLECTOR) -> list[str]:
    """Component ids of ``type_`` (``otlp_http`` matches ``otlp_http`` and ``otlp_http/name``)."""
    return [cid for cid in collector[section] if cid.split("/", 1)[0] == type_]


def jaeger_and_viewer() -> tuple[str, str]:
    jaeger = [n for n, p in PIPELINES.items() if any(e in by_type("exporters", "otlp_grpc") for e in p["exporters"])]
    viewer = [n for n, p in PIPELINES.items() if any(e in by_type("exporters", "otlp_http") for e in p["exporters"])]
    assert len(jaeger) == 1, PIPELINES
    assert len(viewer) == 1, PIPELINES
    return jaeger[0], viewer[0]


def published(service: str, compose: dict[str, Any] = COMPOSE) -> dict[int, int]:
    """Container port → host port of a compose service (``${OTELFLOW_BIND:-127.0.0.1}:4317:4317``)."""
    out = {}
    for entry in compose["services"][service].get("ports", []):
        host, container = str(entry).rsplit(":", 2)[-2:]
        out[int(container)] = int(host)
    return out


@pytest.mark.parametrize("config", sorted(COLLECTORS))
def test_every_pipeline_names_defined_components_and_every_component_is_used(config: str) -> None:
    collector = COLLECTORS[config]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in collector["service"]["pipelines"].items():
        assert name.split("/", 1)[0] == "traces"
        for section in used:
            for cid in pipeline.get(section, []):
                assert cid in collector[section], f"{name} uses undefined {section[:-1]} {cid}"
                used[section].add(cid)
        assert pipeline["receivers"]
        assert pipeline["exporters"]
    for section, ids in used.items():
        assert set(collector[section]) == ids, f"unused {section}: {set(collector[section]) - ids}"


@pytest.mark.parametrize("config", sorted(COLLECTORS))
def test_memory_limiter_first_and_batch_last_where_used(config: str) -> None:
    for name, pipeline in COLLECTORS[config]["service"]["pipelines"].items():
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
# Several viewer replicas: docker-compose.replicas.yaml, otel-collector-replicas.yaml, nginx.conf
# --------------------------------------------------------------------------------------------------

NGINX_CONF = (DIR / "nginx.conf").read_text(encoding="utf-8")
REPLICA_SERVICES = sorted(n for n in COMPOSE_REPLICAS["services"] if re.fullmatch(r"viewer-\d+", n))


def replica_command(service: str) -> list[str]:
    command: list[str] = COMPOSE_REPLICAS["services"][service]["command"]
    return command


def option(command: list[str], name: str) -> str:
    assert command.count(name) == 1, (name, command)
    return command[command.index(name) + 1]


def nginx_directives(name: str) -> list[str]:
    """The arguments of every ``name`` directive in nginx.conf (comments left out)."""
    code = "\n".join(line.split("#", 1)[0] for line in NGINX_CONF.splitlines())
    return [m.strip() for m in re.findall(rf"(?:^|[{{;\s]){re.escape(name)}\s+([^;{{]*);", code, re.M)]


def nginx_location(path: str) -> str:
    match = re.search(rf"^        location {re.escape(path)} \{{\n(.*?)^        \}}", NGINX_CONF, re.S | re.M)
    assert match is not None, f"nginx.conf has no location {path}"
    return "\n".join(line.split("#", 1)[0] for line in match.group(1).splitlines())


def test_replicas_compose_runs_three_replicas_on_one_broker_and_one_database() -> None:
    services = COMPOSE_REPLICAS["services"]
    assert REPLICA_SERVICES == ["viewer-1", "viewer-2", "viewer-3"]
    assert set(services) == {"redis", "postgres", "nginx", "collector", "jaeger", *REPLICA_SERVICES}
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":\d+\.\d+(\.\d+)?$", image), f"{name} image {image} is not pinned"
    redis_major = int(services["redis"]["image"].split(":")[1].split(".")[0])
    postgres_major = int(services["postgres"]["image"].split(":")[1].split(".")[0])
    assert services["redis"]["image"].startswith("redis:")
    assert redis_major >= 7
    assert services["postgres"]["image"].startswith("postgres:")
    assert postgres_major >= 15
    pg_env = services["postgres"]["environment"]
    for name in REPLICA_SERVICES:
        command = replica_command(name)
        assert command[:3] == ["serve", "--host", "0.0.0.0"]
        assert option(command, "--token").startswith("${OTELFLOW_TOKEN:?")
        assert option(command, "--broker") == "redis://redis:6379/0"
        dsn = re.fullmatch(
            r"postgresql://([^:@/]+):(\$\{[A-Z_]+:\?[^}]*\})@postgres:5432/(\w+)", option(command, "--db")
        )
        assert dsn is not None, option(command, "--db")
        assert dsn.group(1) == pg_env["POSTGRES_USER"]
        assert dsn.group(3) == pg_env["POSTGRES_DB"]
        assert pg_env["POSTGRES_PASSWORD"].split(":?")[0] == dsn.group(2).split(":?")[0], "one password variable"
        assert {"redis", "postgres"} <= set(services[name]["depends_on"])
        assert "ports" not in services[name], "replicas are reached through nginx and the collector only"
        assert services[name]["build"]["dockerfile"] == "collector-config/Dockerfile"
    assert "ports" not in services["redis"]
    assert "ports" not in services["postgres"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    text = (DIR / "docker-compose.replicas.yaml").read_text(encoding="utf-8")
    assert not re.search(r"(?i)(password|token)\s*[:=]\s*['\"]?[A-Za-z0-9_-]{8,}", text), "no secrets in the file"


def test_replicas_compose_publishes_nginx_collector_and_jaeger_and_mounts_the_configs() -> None:
    assert published("nginx", COMPOSE_REPLICAS) == {8080: 8080}
    assert published("collector", COMPOSE_REPLICAS) == {4317: 4317, 4318: 4318}
    assert published("jaeger", COMPOSE_REPLICAS) == {16686: 16686}
    services = COMPOSE_REPLICAS["services"]
    config_flag = services["collector"]["command"][0]
    assert config_flag.startswith("--config=")
    mounts = {
        "nginx": ("nginx.conf", "/etc/nginx/nginx.conf"),
        "collector": ("otel-collector-replicas.yaml", config_flag.split("=", 1)[1]),
    }
    for service, (local, inside) in mounts.items():
        source, target, mode = services[service]["volumes"][0].split(":")
        assert (DIR / source).resolve() == DIR / local
        assert target == inside
        assert mode == "ro"
    assert set(services["nginx"]["depends_on"]) == set(REPLICA_SERVICES)


def test_nginx_upstream_is_the_replicas_and_listens_where_compose_publishes() -> None:
    servers = [s.split()[0] for s in nginx_directives("server")]
    ports = {int(option(replica_command(n), "--port")) for n in REPLICA_SERVICES}
    assert servers == [f"{n}:{p}" for n in REPLICA_SERVICES for p in ports]
    assert nginx_directives("listen") == [str(p) for p in published("nginx", COMPOSE_REPLICAS)]
    assert nginx_directives("proxy_pass") == ["http://otelflow_viewers"] * 3


def test_nginx_streams_unbuffered_upgrades_websockets_and_passes_the_host() -> None:
    assert nginx_directives("proxy_buffering") == ["off"]
    assert nginx_directives("proxy_cache") == ["off"]
    assert nginx_directives("proxy_http_version") == ["1.1"]
    read_timeouts = [int(t.rstrip("s")) for t in nginx_directives("proxy_read_timeout")]
    assert read_timeouts[0] >= 600, "streams idle between events (15 s heartbeats) must stay open"
    headers = dict(h.split(None, 1) for h in nginx_directives("proxy_set_header"))
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    # the viewer compares Origin with Host: the port must stay in it
    assert headers["Host"] == "$http_host"
    assert {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"} <= set(headers)
    assert "/ws" in re.findall(r"location (\S+) \{", NGINX_CONF)


def test_nginx_ingest_takes_the_viewers_largest_body_and_retries_posts() -> None:
    from otelflow.viewer.otlp import DEFAULT_MAX_BYTES

    ingest = nginx_location("/v1/")
    size = re.search(r"client_max_body_size (\d+)([km]?);", ingest)
    assert size is not None
    assert int(size.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[size.group(2)] == DEFAULT_MAX_BYTES
    retry = re.search(r"proxy_next_upstream ([^;]*);", ingest)
    assert retry is not None
    assert set(retry.group(1).split()) == {"error", "timeout", "http_502", "http_503", "non_idempotent"}
    assert "proxy_request_buffering on;" in ingest, "only a buffered body can go to the next replica"
    assert set(nginx_directives("proxy_next_upstream")[0].split()) == {"error", "timeout", "http_502", "http_503"}


def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    from tests.nginx_server import check_config, render_config

    checked = check_config(render_config(["127.0.0.1:18081", "127.0.0.1:18082"], 18080, tmp_path), tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_replicas_collector_balances_by_trace_id_over_one_pipeline_per_replica() -> None:
    collector = COLLECTOR_REPLICAS
    pipelines: dict[str, dict[str, list[str]]] = collector["service"]["pipelines"]
    balancers = by_type("exporters", "loadbalancing", collector)
    assert len(balancers) == 1
    balancer = collector["exporters"][balancers[0]]
    assert balancer["routing_key"] == "traceID"
    assert set(balancer["protocol"]) == {"otlp"}, "the loadbalancing exporter speaks OTLP gRPC only"
    assert balancer["protocol"]["otlp"]["tls"]["insecure"] is True
    backends = balancer["resolver"]["static"]["hostnames"]
    assert len(backends) == len(REPLICA_SERVICES)
    feeding = [n for n, p in pipelines.items() if balancers[0] in p["exporters"]]
    assert len(feeding) == 1
    assert pipelines[feeding[0]]["receivers"] == ["otlp"]
    assert "batch" not in pipelines[feeding[0]]["processors"], "live snapshots must not wait for a batch"
    env = COMPOSE_REPLICAS["services"]["collector"]["environment"]
    reached = []
    for backend in backends:
        receivers = [
            r
            for r in by_type("receivers", "otlp", collector)
            if collector["receivers"][r]["protocols"].get("grpc", {}).get("endpoint") == backend
        ]
        assert len(receivers) == 1, backend
        assert backend.startswith("127.0.0.1:"), "the per-replica receivers stay inside the collector"
        [pipeline] = [p for p in pipelines.values() if p["receivers"] == receivers]
        assert "batch" not in pipeline["processors"]
        [exporter] = pipeline["exporters"]
        assert exporter.split("/", 1)[0] == "otlp_http"
        config = collector["exporters"][exporter]
        assert config["headers"]["Authorization"] == "Bearer ${env:OTELFLOW_TOKEN}"
        match = ENV_DEFAULT.match(config["traces_endpoint"])
        assert match is not None
        assert config["traces_endpoint"].endswith("/v1/traces")
        assert env[match.group(1)] == match.group(2)
        reached.append(match.group(2))
    assert reached == [f"http://{n}:8080" for n in REPLICA_SERVICES]
    assert "OTELFLOW_TOKEN" in env
    assert env["JAEGER_OTLP_ENDPOINT"] == "jaeger:4317"
    # the Jaeger pipeline is the single-viewer one, pending snapshots dropped
    assert pipelines["traces/jaeger"] == COLLECTOR["service"]["pipelines"]["traces/jaeger"]
    for cid in pipelines["traces/jaeger"]["processors"]:
        assert collector["processors"][cid] == COLLECTOR["processors"][cid]
    assert collector["receivers"]["otlp"] == COLLECTOR["receivers"]["otlp"]
    version = COMPOSE_REPLICAS["services"]["collector"]["image"].rsplit(":", 1)[1]
    assert f"otelcol-contrib {version}" in (DIR / "otel-collector-replicas.yaml").read_text(encoding="utf-8")


def test_readme_describes_the_replicas_setup() -> None:
    for name in ("docker-compose.replicas.yaml", "otel-collector-replicas.yaml", "nginx.conf", "--allowed-host"):
        assert name in README, name
    for port, what in ((8080, "nginx"), (4317, "OTLP gRPC"), (4318, "OTLP HTTP"), (16686, "Jaeger UI")):
        assert re.search(rf"\b{port}\b[^|\n]*{what}|{what}[^|\n]*\b{port}\b", README), (port, what)


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
