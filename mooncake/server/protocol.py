"""Request and response bodies of the OpenAI-compatible routes (pydantic models).

Field names, defaults and types follow OpenAI's API (strictly: no string or boolean is
coerced into a number); the extra sampling fields (``top_k``,
``min_tokens``, ``ignore_eos``, ``stop_token_ids``, ...) follow vLLM's, so clients
written for either work unchanged. Unknown fields are ignored (as vLLM does); known
fields with bad values fail validation with the field's name.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mooncake.sampling_params import SamplingParams


class _Body(BaseModel):
    # strict: types as OpenAI checks them ("seed": "42", "max_tokens": 1.0 or true,
    # "temperature": true are errors, not coerced); an integer is still a number.
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False
    """Send a last chunk with ``usage`` (and ``choices: []``)."""
    continuous_usage_stats: bool = False
    """Put ``usage`` on every chunk (vLLM extension)."""


class _SamplingFields(_Body):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    """Served model name; ``None`` means the (only) served model."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0
    """Not supported: only 0 is accepted."""
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0
    """Not supported: only 0 is accepted."""
    logit_bias: Annotated[dict[str, float] | None, Field(max_length=0)] = None
    """Not supported: only null or {} is accepted."""
    user: str | None = None
    # vLLM extensions
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    repetition_penalty: Annotated[float, Field(ge=1.0, le=1.0)] | None = None
    """Not supported: only 1.0 is accepted (vLLM's benchmark client sends it)."""
    cache_salt: Annotated[str, Field(min_length=1)] | None = None
    """Isolates this request's prefix-cache entries (per tenant)."""
    request_id: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[!-~]+$")] | None = (
        None
    )
    """Caller's id for this request (else ``X-Request-Id`` or a generated one): visible
    ASCII, since it is echoed in the ``X-Request-Id`` header."""
    return_token_ids: bool = False
    """Also return ``prompt_token_ids`` and each choice's ``token_ids``."""

    def _sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """Build SamplingParams (raises ValueError naming the field on a bad combination)."""
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if self.top_k is None else self.top_k,
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
        )


Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    | Annotated[
        list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]], Field(min_length=1)
    ]
)


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``."""

    prompt: Prompt
    """Text, a list of texts, token ids, or a list of token-id lists (one choice each)."""
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    suffix: Annotated[str, Field(max_length=0)] | None = None
    """Not supported: only null is accepted."""

    @model_validator(mode="after")
    def _check_echo(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("echo: echo with logprobs (prompt logprobs) is not supported")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts, one per choice."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        ids = [x for x in p if isinstance(x, int)]
        if len(ids) == len(p):
            return [ids]
        return [x for x in p if not isinstance(x, int)]

    def sampling_params(self) -> SamplingParams:
        return self._sampling(self.max_tokens, self.logprobs)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ResponseFormat(_Body):
    type: Literal["text"]
    """Only plain text output is supported."""


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Any] | None, Field(max_length=0)] = None
    """Not supported: only null or [] is accepted."""
    add_generation_prompt: bool = True
    """Append the assistant turn's opening to the rendered template (vLLM extension)."""

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs=true")
        return self

    def chat_messages(self) -> list[dict[str, Any]]:
        return [
            {"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
            for m in self.messages
        ]

    def sampling_params(self) -> SamplingParams:
        max_tokens = (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling(max_tokens, logprobs)


# -- responses -------------------------------------------------------------------------


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, str]
    """``{"role": "assistant", "content": ""}`` first, then ``{"content": text}``,
    ``{}`` at the end."""
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "mooncake"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
