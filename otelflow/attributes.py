"""Every attribute key, event name, kind and status that otelflow writes or reads."""

from __future__ import annotations

from typing import Final

# --- kinds (value of KIND) ------------------------------------------------------------------------
KIND: Final = "otelflow.kind"
KIND_WORKFLOW: Final = "workflow"
KIND_AGENT: Final = "agent"
KIND_NODE: Final = "node"
KIND_TOOL: Final = "tool"
KIND_LLM: Final = "llm"  # a call to a language model (GenAI chat/completion/embeddings, OpenInference LLM)
KIND_SPAN: Final = "span"  # anything otelflow did not create itself
KINDS: Final = (KIND_WORKFLOW, KIND_AGENT, KIND_NODE, KIND_TOOL, KIND_LLM, KIND_SPAN)

# --- span statuses (the stream's and the REST API's) ------------------------------------------------
STATUS_RUNNING: Final = "running"
STATUS_OK: Final = "ok"
STATUS_ERROR: Final = "error"
STATUS_ABANDONED: Final = "abandoned"  # its worker stopped sending heartbeats, or nothing was heard of its run
# ended by cancellation (a cancelled task, Ctrl-C): OTel status ERROR on export, a state of its own on the pages
STATUS_CANCELLED: Final = "cancelled"
STATUSES: Final = (STATUS_RUNNING, STATUS_OK, STATUS_ERROR, STATUS_ABANDONED, STATUS_CANCELLED)

# --- otelflow span attributes ---------------------------------------------------------------------
RUN_ID: Final = "otelflow.run.id"
WORKFLOW_GRAPH: Final = "otelflow.workflow.graph"
NODE_ID: Final = "otelflow.node.id"
PENDING: Final = "otelflow.pending"  # live-only snapshot of a span that has not ended
INPUT_TRUNCATED: Final = "otelflow.input.truncated"
OUTPUT_TRUNCATED: Final = "otelflow.output.truncated"
GENERATOR_ITEMS: Final = "otelflow.generator.items"
ERROR_TYPE: Final = "error.type"

# --- OpenTelemetry GenAI semantic conventions -----------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_WORKFLOW_NAME: Final = "gen_ai.workflow.name"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
OP_INVOKE_WORKFLOW: Final = "invoke_workflow"
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_EXECUTE_TOOL: Final = "execute_tool"
# model calls
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_SYSTEM: Final = "gen_ai.system"  # the provider's older name
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
OP_CHAT: Final = "chat"
OP_TEXT_COMPLETION: Final = "text_completion"
OP_GENERATE_CONTENT: Final = "generate_content"
OP_EMBEDDINGS: Final = "embeddings"
LLM_OPERATIONS: Final = (OP_CHAT, OP_TEXT_COMPLETION, OP_GENERATE_CONTENT, OP_EMBEDDINGS)
# messages as events (the older per-message events, and the newer one event per call with the messages as
# attributes); they come as OTLP log records, which the viewer joins to their span as span events
EVENT_GEN_AI_SYSTEM_MESSAGE: Final = "gen_ai.system.message"
EVENT_GEN_AI_USER_MESSAGE: Final = "gen_ai.user.message"
EVENT_GEN_AI_ASSISTANT_MESSAGE: Final = "gen_ai.assistant.message"
EVENT_GEN_AI_TOOL_MESSAGE: Final = "gen_ai.tool.message"
EVENT_GEN_AI_CHOICE: Final = "gen_ai.choice"
EVENT_GEN_AI_INFERENCE_DETAILS: Final = "gen_ai.client.inference.operation.details"

# --- OpenInference (rendered by Phoenix and Langfuse) ---------------------------------------------
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
OI_AGENT: Final = "AGENT"
OI_CHAIN: Final = "CHAIN"
OI_TOOL: Final = "TOOL"
OI_LLM: Final = "LLM"
OI_EMBEDDING: Final = "EMBEDDING"
OI_EMBEDDING_MODEL_NAME: Final = "embedding.model_name"
OI_LLM_FINISH_REASON: Final = "llm.finish_reason"
OI_FIRST_TOKEN_EVENT: Final = "First Token Stream Event"  # noqa: S105 - openinference-openai, streaming
OI_LLM_MODEL_NAME: Final = "llm.model_name"
OI_LLM_PROVIDER: Final = "llm.provider"
OI_LLM_SYSTEM: Final = "llm.system"
OI_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"  # noqa: S105 - a key, not a secret
OI_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"  # noqa: S105
OI_INPUT_MESSAGES: Final = "llm.input_messages"  # a prefix: llm.input_messages.<i>.message.role, .content, ...
OI_OUTPUT_MESSAGES: Final = "llm.output_messages"
INPUT_VALUE: Final = "input.value"
INPUT_MIME_TYPE: Final = "input.mime_type"
OUTPUT_VALUE: Final = "output.value"
OUTPUT_MIME_TYPE: Final = "output.mime_type"
MIME_JSON: Final = "application/json"
MIME_TEXT: Final = "text/plain"

# --- otelflow's own, on model calls (otelflow.llm) -------------------------------------------------
LLM_TIME_TO_FIRST_TOKEN_MS: Final = "otelflow.llm.time_to_first_token_ms"  # noqa: S105
LLM_OUTPUT_PARTIAL: Final = "otelflow.llm.output.partial"  # the answer so far, while the call streams
LLM_OUTPUT_CUT: Final = "otelflow.llm.output.cut"  # characters of the answer so far left out (bounded bytes)

# --- Logfire's pending spans (understood by the viewer) -------------------------------------------
LOGFIRE_SPAN_TYPE: Final = "logfire.span_type"
LOGFIRE_PENDING_SPAN: Final = "pending_span"
LOGFIRE_PENDING_PARENT_ID: Final = "logfire.pending_parent_id"

# --- lifecycle events and their attributes --------------------------------------------------------
EVENT_PROGRESS: Final = "otelflow.progress"
PROGRESS_PERCENT: Final = "otelflow.progress.percent"
PROGRESS_MESSAGE: Final = "otelflow.progress.message"
PROGRESS_COMPLETED: Final = "otelflow.progress.completed"
PROGRESS_TOTAL: Final = "otelflow.progress.total"

EVENT_DATA_FLOW: Final = "otelflow.data_flow"
DATA_FLOW_FROM: Final = "otelflow.data_flow.from"
DATA_FLOW_TO: Final = "otelflow.data_flow.to"
DATA_FLOW_BYTES: Final = "otelflow.data_flow.bytes"
DATA_FLOW_KEYS: Final = "otelflow.data_flow.keys"

EVENT_RETRY: Final = "otelflow.retry"
RETRY_ATTEMPT: Final = "otelflow.retry.attempt"
RETRY_ERROR: Final = "otelflow.retry.error"
RETRY_WAIT_S: Final = "otelflow.retry.wait_s"

EVENT_FALLBACK: Final = "otelflow.fallback"
FALLBACK_ERROR: Final = "otelflow.fallback.error"
FALLBACK_TO: Final = "otelflow.fallback.to"

EVENT_LOG: Final = "otelflow.log"
LOG_LEVEL: Final = "otelflow.log.level"
LOG_MESSAGE: Final = "otelflow.log.message"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
# the body of an OTLP log record that became a named event of its span (a text, or a map or array as it came)
LOG_BODY: Final = "otelflow.log.body"

EVENT_EXCEPTION: Final = "exception"  # the standard OTel exception event
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"

LIFECYCLE_EVENTS: Final = (
    EVENT_PROGRESS,
    EVENT_DATA_FLOW,
    EVENT_RETRY,
    EVENT_FALLBACK,
    EVENT_LOG,
    EVENT_EXCEPTION,
)

# --- live streaming (resource attributes of a worker process) -------------------------------------
WORKER_ID: Final = "otelflow.worker.id"  # random per process; the viewer tracks heartbeats by it
HEARTBEAT_INTERVAL_S: Final = 2.0  # a worker's LiveExporter posts at least this often while alive
ABANDON_AFTER_S: Final = 10.0  # the viewer marks a silent worker's running spans abandoned after this

# --- instrumentation scope ------------------------------------------------------------------------
SCOPE_NAME: Final = "otelflow"
