"""The inference engine: Llama-family model (torch), paged KV cache with prefix caching,
chunked prefill and continuous-batching decode. No distributed code here."""

from mooncake.engine.llm_engine import EngineStats, LLMEngine
from mooncake.engine.model_config import ModelConfig
from mooncake.outputs import CompletionOutput, RequestMetrics, RequestOutput
from mooncake.sampling_params import SamplingParams
from mooncake.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = [
    "CompletionOutput",
    "EngineStats",
    "IncrementalDetokenizer",
    "LLMEngine",
    "ModelConfig",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "Tokenizer",
]
