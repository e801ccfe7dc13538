"""Prometheus metrics and OpenTelemetry attributes of inference, shared by every engine.

Metric names follow vLLM's ``vllm:*`` families under the ``swiftmesh_worker_`` prefix; span
attributes follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

RUNNING = Gauge("swiftmesh_worker_requests_running", "Requests being decoded now.", ["engine"])
WAITING = Gauge("swiftmesh_worker_requests_waiting", "Requests waiting for a decoding slot.", ["engine"])
KV_USAGE = Gauge("swiftmesh_worker_kv_cache_usage_ratio", "Fraction of KV-cache memory in use, [0, 1].", ["engine"])
TTFT = Histogram("swiftmesh_worker_time_to_first_token_seconds",
                 "Time from a request's arrival to its first output token, seconds.", ["model"],
                 buckets=_LATENCY_BUCKETS)
TPOT = Histogram("swiftmesh_worker_time_per_output_token_seconds",
                 "Mean time between output tokens of a request after the first, seconds.", ["model"],
                 buckets=_TPOT_BUCKETS)
E2E = Histogram("swiftmesh_worker_e2e_request_latency_seconds",
                "Time from a request's arrival to its last output, seconds.", ["model"], buckets=_LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("swiftmesh_worker_prompt_tokens", "Prompt tokens processed.", ["model"])
GENERATION_TOKENS = Counter("swiftmesh_worker_generation_tokens", "Output tokens generated.", ["model"])
REQUESTS = Counter("swiftmesh_worker_requests", "Finished requests by finish reason.", ["model", "finish_reason"])

# OpenTelemetry GenAI attribute names.
OPERATION = "gen_ai.operation.name"
SYSTEM = "gen_ai.system"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
MAX_TOKENS = "gen_ai.request.max_tokens"
TEMPERATURE = "gen_ai.request.temperature"
TOP_P = "gen_ai.request.top_p"
TOP_K = "gen_ai.request.top_k"
SEED = "gen_ai.request.seed"
CHOICE_COUNT = "gen_ai.request.choice.count"
PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
STOP_SEQUENCES = "gen_ai.request.stop_sequences"
