"""Inference engines behind the worker's InferenceService: one interface (:class:`Engine`),
three backends (transformers, vLLM, LmDeploy), chosen per worker by ``settings.worker.engine``."""

from __future__ import annotations

from .base import Engine, EngineConfig, PreparedRequest
from .types import (
    ChatMessage,
    ChatPrompt,
    CompletionDelta,
    EngineStatus,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
    ServedModelInfo,
    StructuredOutput,
    TokenizeResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)

ENGINE_KINDS = ("transformers", "vllm", "lmdeploy")


def create_engine(kind: str, config: EngineConfig | None = None) -> Engine:
    """A new engine of ``kind`` ("transformers", "vllm", "lmdeploy"). The backend library is
    imported here, so a worker only needs the one it runs. Raises ValueError for an unknown kind,
    ImportError (with the install hint) when the backend is not installed."""
    if kind == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(config)
    if kind == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine(config)
    if kind == "lmdeploy":
        from .lmdeploy_engine import LmDeployEngine

        return LmDeployEngine(config)
    raise ValueError(f"unknown engine {kind!r}; expected one of {', '.join(ENGINE_KINDS)}")


__all__ = [
    "ENGINE_KINDS",
    "ChatMessage",
    "ChatPrompt",
    "CompletionDelta",
    "Engine",
    "EngineConfig",
    "EngineStatus",
    "GenerationRequest",
    "PreparedRequest",
    "RequestOutput",
    "SamplingParams",
    "ServedModelInfo",
    "StructuredOutput",
    "TokenLogprob",
    "TokenizeResult",
    "TopLogprob",
    "Usage",
    "create_engine",
]
