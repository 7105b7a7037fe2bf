"""configure(): one call that sets up OTLP export and live streaming; argument > OTEL_*/OTELFLOW_* env > default."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from otelflow import attributes as A
from otelflow._log import logger
from otelflow.processor import LiveSpanProcessor, Sink
from otelflow.records import set_value_limit
from otelflow.scrub import DEFAULT_VALUE_LIMIT, CleanExporter
from otelflow.sinks import InProcessSink, LiveExporter, viewer_urls

__all__ = ["Configurator", "Settings", "Telemetry", "configure", "get_tracer", "settings"]

ENV_VIEWER_URL: Final = "OTELFLOW_VIEWER_URL"
ENV_TOKEN: Final = "OTELFLOW_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_CAPTURE_IO: Final = "OTELFLOW_CAPTURE_IO"
ENV_MAX_VALUE_BYTES: Final = "OTELFLOW_MAX_VALUE_BYTES"
ENV_LIVE: Final = "OTELFLOW_LIVE"
# The standard knobs for attribute value length (the span-specific one wins, as in the SDK).
_ENV_VALUE_LENGTH: Final = ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")

# Batch settings used unless the user set the matching OTEL_BSP_* variable. The SDK's defaults
# (queue 2048, batch 512, delay 5 s) drop about a third of a 20,000-span burst.
_BSP_DEFAULTS: Final[dict[str, tuple[str, int]]] = {
    "OTEL_BSP_MAX_QUEUE_SIZE": ("max_queue_size", 65_536),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("max_export_batch_size", 2_048),
    "OTEL_BSP_SCHEDULE_DELAY": ("schedule_delay_millis", 1_000),
}
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use true or false")


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _value_length_limit() -> int | None:
    """Longest attribute value in characters: as the SDK reads ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` /
    ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` (``unset``: none) when either is set, else otelflow's default."""
    if not any(os.environ.get(name, "").strip() for name in _ENV_VALUE_LENGTH):
        return DEFAULT_VALUE_LIMIT
    try:
        return SpanLimits().max_span_attribute_length
    except ValueError as exc:
        raise ValueError(f"{exc}; use a whole number of characters, or unset") from None


@dataclass
class Settings:
    """What the instrumentation captures. Read from the environment on first use; configure() overrides."""

    capture_io: bool = True
    max_value_bytes: int = 4096
    max_value_length: int | None = DEFAULT_VALUE_LIMIT  # characters of any attribute value (None: no limit)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            capture_io=_env_bool(ENV_CAPTURE_IO, True),
            max_value_bytes=_env_int(ENV_MAX_VALUE_BYTES, 4096, 64),
            max_value_length=_value_length_limit(),
        )


_settings: Settings | None = None
_lock = threading.RLock()


def settings() -> Settings:
    """The capture settings in force."""
    global _settings
    if _settings is None:
        try:
            _settings = Settings.from_env()
        except ValueError:
            _settings = Settings()  # a bad env value is reported by configure(); capture goes on safely
    return _settings


def get_tracer() -> trace.Tracer:
    """The tracer otelflow's spans are created with: configure()'s provider, else the global one."""
    if _state is not None:
        return _state.tracer
    return trace.get_tracer(A.SCOPE_NAME)


class _Switchboard(SpanProcessor):
    """Attached once to a provider; holds otelflow's processors so configure() can replace them."""

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for p in self.processors:
            p.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for p in self.processors:
            p.on_end(span)

    def shutdown(self) -> None:
        processors, self.processors = self.processors, ()
        for p in processors:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all([p.force_flush(timeout_millis) for p in self.processors])


@dataclass
class Telemetry:
    """What configure() set up. ``sink`` is where live records go (subscribe to an InProcessSink)."""

    tracer_provider: TracerProvider
    tracer: trace.Tracer
    live_processor: LiveSpanProcessor | None
    sink: Sink | None
    otlp_processor: SpanProcessor | None
    exporters: list[str] = field(default_factory=list)
    processors: tuple[SpanProcessor, ...] = ()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Deliver everything pending to the live sink and the OTLP backend."""
        ok = True
        for p in (self.live_processor, self.otlp_processor):
            if p is not None:
                ok = p.force_flush(timeout_millis) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop otelflow's processors (the provider itself stays usable)."""
        board = _switchboard(self.tracer_provider)
        board.processors = tuple(p for p in board.processors if p not in self.processors)
        for p in self.processors:
            p.shutdown()


_state: Telemetry | None = None


def _update_resource(provider: TracerProvider, resource: Resource) -> None:
    """Merge ``resource`` into the provider's, for its cached tracers too (the SDK's own private helper when it
    has one; older SDKs have none, and then only tracers created from now on see the change)."""
    update = getattr(provider, "_update_resource", None)
    if callable(update):
        update(resource)
    else:
        provider._resource = provider.resource.merge(resource)


def _switchboard(provider: TracerProvider) -> _Switchboard:
    board = getattr(provider, "_otelflow_switchboard", None)
    if not isinstance(board, _Switchboard):
        board = _Switchboard()
        provider.add_span_processor(board)
        provider._otelflow_switchboard = board  # type: ignore[attr-defined]
    return board


def _otlp_exporter(
    endpoint: str | None, protocol: str | None, headers: Mapping[str, str] | None, limit: int | None
) -> SpanExporter:
    """The stock OTLP exporter for ``protocol``, wrapped so that what it sends is cleaned (secrets, UTF-8)."""
    return CleanExporter(_stock_otlp_exporter(endpoint, protocol, headers), limit)


def _stock_otlp_exporter(endpoint: str | None, protocol: str | None, headers: Mapping[str, str] | None) -> SpanExporter:
    proto = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint, headers=dict(headers) if headers else None)
    if proto == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"  # like OTEL_EXPORTER_OTLP_ENDPOINT
        return HttpExporter(endpoint=endpoint, headers=dict(headers) if headers else None)
    raise ValueError(
        f"OTLP protocol {proto!r} is not supported; use 'http/protobuf' or 'grpc' "
        "(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL)"
    )


def _batch_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    if any(name.startswith("OTEL_BSP_") for name in os.environ):
        try:
            return BatchSpanProcessor(exporter)  # the user tuned the batch processor: theirs entirely
        except ValueError as exc:
            raise ValueError(f"OTEL_BSP_* settings are inconsistent: {exc}") from None
    return BatchSpanProcessor(
        exporter,
        max_queue_size=_BSP_DEFAULTS["OTEL_BSP_MAX_QUEUE_SIZE"][1],
        max_export_batch_size=_BSP_DEFAULTS["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"][1],
        schedule_delay_millis=_BSP_DEFAULTS["OTEL_BSP_SCHEDULE_DELAY"][1],
    )


def _wants_otlp(otlp: bool | None, endpoint: str | None) -> list[str]:
    """Which exporters to build: argument, else OTEL_TRACES_EXPORTER, else OTLP iff an endpoint is set."""
    if otlp is not None:
        return ["otlp"] if otlp else []
    names = os.environ.get("OTEL_TRACES_EXPORTER")
    if names is not None and names.strip():
        wanted = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
        unknown = [n for n in wanted if n not in ("otlp", "console")]
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter(s) {unknown}; use otlp, console or none")
        return wanted
    configured = (
        endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    return ["otlp"] if configured else []


def _live_sink(live: bool | str | Sequence[str] | Sink | None, token: str | None) -> Sink | None:
    if live is False:
        return None
    source = "live"
    if live is None:
        if not _env_bool(ENV_LIVE, True):
            return None
        live = os.environ.get(ENV_VIEWER_URL) or True
        source = ENV_VIEWER_URL
    if live is True:
        return InProcessSink()
    if isinstance(live, (str, Sequence)):
        try:
            urls = viewer_urls(live)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        return LiveExporter(urls, token=token or os.environ.get(ENV_TOKEN))
    if live is False:
        return None
    return live


def configure(
    service_name: str | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    otlp: bool | None = None,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    live: bool | str | Sequence[str] | Sink | None = None,
    token: str | None = None,
    capture_io: bool | None = None,
    max_value_bytes: int | None = None,
    extra_processors: Sequence[SpanProcessor] = (),
) -> Telemetry:
    """Set up tracing for otelflow: OTLP export to any backend and live streaming to the viewer.

    Every setting is taken from its argument, else its environment variable, else a default:

    - ``service_name`` / ``resource_attributes``: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``.
    - ``otlp``: export through the stock ``BatchSpanProcessor(OTLPSpanExporter)``. Default: as
      ``OTEL_TRACES_EXPORTER`` says (``otlp``, ``console``, ``none``); when that is unset, on iff an OTLP
      endpoint is given (``otlp_endpoint``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``/``_ENDPOINT``).
      ``otlp_protocol``: ``http/protobuf`` (default) or ``grpc``; headers, timeouts and TLS follow the
      standard ``OTEL_EXPORTER_OTLP_*`` variables. Batch sizes follow ``OTEL_BSP_*`` when set; otherwise
      they are sized so that a burst of 20,000 spans is not dropped.
    - ``live``: ``True`` streams to an in-process sink (an embedded viewer subscribes to it), a URL
      streams to a viewer in another process (``OTELFLOW_VIEWER_URL``, token ``OTELFLOW_TOKEN``),
      ``False`` turns live streaming off (``OTELFLOW_LIVE=false``). Default: the URL when set, else
      in-process. Several URLs (comma-separated, or a list) name replicas of one viewer: records go to one
      at a time and move on to the next when it fails (see :class:`otelflow.LiveExporter`).
    - ``capture_io`` / ``max_value_bytes``: ``OTELFLOW_CAPTURE_IO`` (default true) and
      ``OTELFLOW_MAX_VALUE_BYTES`` (default 4096).
    - ``tracer_provider``: attach to an existing SDK provider instead of creating one. Without it, the
      global provider is reused when it is an SDK provider, else a new one is created and made global.

    Calling configure() again replaces otelflow's processors; it never stacks them. The sampler is the
    provider's (``OTEL_TRACES_SAMPLER``). Raises ``ValueError`` with the setting's name on bad values.
    """
    global _state, _settings
    with _lock:
        new_settings = Settings.from_env()
        if capture_io is not None:
            new_settings.capture_io = capture_io
        if max_value_bytes is not None:
            if max_value_bytes < 64:
                raise ValueError(f"max_value_bytes={max_value_bytes} must be at least 64")
            new_settings.max_value_bytes = max_value_bytes
        exporters = _wants_otlp(otlp, otlp_endpoint)
        provider = _provider(tracer_provider, service_name, resource_attributes)
        board = _switchboard(provider)
        old = _state if _state is not None and _state.tracer_provider is provider else None
        if old is not None:
            old.shutdown()

        limit = new_settings.max_value_length
        processors, otlp_processor = _export_processors(exporters, otlp_endpoint, otlp_protocol, otlp_headers, limit)
        sink = _live_sink(live, token)
        live_processor: LiveSpanProcessor | None = None
        if sink is not None:
            live_processor = LiveSpanProcessor(sink)
            if isinstance(sink, LiveExporter):
                sink.bind(live_processor)
            processors.append(live_processor)
            from otelflow.stream_taps import tap_model_streams  # imports model_call, which imports this module

            tap_model_streams()  # streamed calls of openai-v2 / OpenInference show their answer as it grows
        processors.extend(extra_processors)
        board.processors = (*board.processors, *processors)

        _settings = new_settings
        set_value_limit(limit)
        _state = Telemetry(
            tracer_provider=provider,
            tracer=provider.get_tracer(A.SCOPE_NAME),
            live_processor=live_processor,
            sink=sink,
            otlp_processor=otlp_processor,
            exporters=exporters,
            processors=tuple(processors),
        )
        return _state


def _export_processors(
    exporters: list[str],
    endpoint: str | None,
    protocol: str | None,
    headers: Mapping[str, str] | None,
    limit: int | None,
) -> tuple[list[SpanProcessor], SpanProcessor | None]:
    """Batch processors for the exporters asked for, and the OTLP one among them."""
    processors: list[SpanProcessor] = []
    otlp_processor: SpanProcessor | None = None
    for name in exporters:
        if name == "otlp":
            otlp_processor = _batch_processor(_otlp_exporter(endpoint, protocol, headers, limit))
            processors.append(otlp_processor)
        else:
            processors.append(_batch_processor(CleanExporter(ConsoleSpanExporter(), limit)))
    return processors, otlp_processor


def _provider(
    given: TracerProvider | None, service_name: str | None, resource_attributes: Mapping[str, Any] | None
) -> TracerProvider:
    """The provider to attach to: ``given``, else the global SDK provider (renamed when otelflow made it), else a
    new one, made global, whose attribute values are bounded."""
    if given is not None:
        if not isinstance(given, TracerProvider):
            raise TypeError("tracer_provider must be an opentelemetry.sdk.trace.TracerProvider")
        return given
    attrs = dict(resource_attributes or {})
    if service_name:
        attrs["service.name"] = service_name
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        wanted = attrs.get("service.name")
        if getattr(current, "_otelflow_owned", False) and attrs:
            # otelflow made this provider (an earlier configure(), `otelflow run`, `opentelemetry-instrument`):
            # the program's own service name wins. Tracers made from now on, otelflow's included, carry it.
            _update_resource(current, Resource(attrs))
        elif wanted and current.resource.attributes.get("service.name") != wanted:
            logger.warning(
                "otelflow.configure: a tracer provider is already installed with service.name=%r; "
                "%r is ignored (call configure() before anything else sets up tracing, or pass tracer_provider=)",
                current.resource.attributes.get("service.name"),
                wanted,
            )
        return current
    # Attribute values are bounded by default (the SDK's own default is no limit); the standard
    # OTEL_*ATTRIBUTE_VALUE_LENGTH_LIMIT variables, when set, are the SDK's to read.
    limits = (
        None
        if any(os.environ.get(n, "").strip() for n in _ENV_VALUE_LENGTH)
        else SpanLimits(max_attribute_length=DEFAULT_VALUE_LIMIT)
    )
    provider = TracerProvider(resource=Resource.create(attrs), span_limits=limits)
    provider._otelflow_owned = True  # type: ignore[attr-defined]
    trace.set_tracer_provider(provider)
    return provider


def current() -> Telemetry | None:
    """What the last configure() set up, if it was called."""
    return _state


class Configurator:
    """Entry point ``opentelemetry_configurator``: lets ``opentelemetry-instrument`` set up otelflow.

    ``opentelemetry-instrument python app.py`` then exports per the ``OTEL_*`` variables and streams live
    (to ``OTELFLOW_VIEWER_URL`` when set). When another configurator is installed too (opentelemetry-distro),
    choose with ``OTEL_PYTHON_CONFIGURATOR=otelflow``.
    """

    def configure(self, **kwargs: Any) -> None:
        configure()
