"""Tokenizer (``tokenizer.json`` through the ``tokenizers`` library), chat template
(``tokenizer_config.json``, rendered with jinja2) and generation stop tokens."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.decoders import DecodeStream


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as a dict
        return str(value.get("content"))
    return None if value is None else str(value)


class Tokenizer:
    """Text <-> token ids for one model directory.

    Args:
        path: model directory with ``tokenizer.json`` (and optionally
            ``tokenizer_config.json``, ``generation_config.json``).
        eos_token_ids: stop ids from the model config, merged with the generation config's.
    """

    def __init__(self, path: Path, eos_token_ids: Sequence[int] = ()) -> None:
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise ValueError(f"model directory {str(path)!r} has no tokenizer.json")
        self._tok = HFTokenizer.from_file(str(tok_file))
        cfg_file = path / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        self.chat_template: str | None = cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: take "default"
            named = {t["name"]: t["template"] for t in self.chat_template}
            self.chat_template = named.get("default")
        self.bos_token = _token_str(cfg.get("bos_token"))
        self.eos_token = _token_str(cfg.get("eos_token"))
        stop = set(eos_token_ids)
        gen_file = path / "generation_config.json"
        if gen_file.is_file():
            eos = json.loads(gen_file.read_text()).get("eos_token_id")
            stop.update(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        if (
            self.eos_token is not None
            and (eid := self._tok.token_to_id(self.eos_token)) is not None
        ):
            stop.add(eid)
        self.eos_token_ids: frozenset[int] = frozenset(int(i) for i in stop)
        self._template: jinja2.Template | None = None
        self._max_token_chars: int | None = None

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def max_token_chars(self) -> int:
        """Characters of the longest vocabulary entry (added tokens included): no token
        covers more of a text than its entry spells (a byte-level entry has one
        character per byte), which bounds the tokens a text can become from below."""
        if self._max_token_chars is None:
            self._max_token_chars = max(
                (len(t) for t in self._tok.get_vocab(with_added_tokens=True)), default=1
            )
        return self._max_token_chars

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        documents: Sequence[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render the model's chat template in the environment Hugging Face templates are
        written for (see :func:`chat_template_environment`).

        Args:
            messages: ``{"role", "content"}`` dicts; ``content`` may be a string or a list
                of parts (``{"type": "text", "text": ...}``), passed to the template as is.
            add_generation_prompt: end with the assistant turn's opening.
            tools: tool (function) schemas, as the template's ``tools``.
            documents: retrieval documents, as the template's ``documents``.
            template_kwargs: further template variables (e.g. ``enable_thinking``).

        Raises:
            ValueError: the model has no chat template, or the template rejects the input
                (``raise_exception`` in the template, or any template error).
        """
        if self.chat_template is None:
            raise ValueError("this model has no chat_template in tokenizer_config.json")
        if self._template is None:
            self._template = chat_template_environment().from_string(self.chat_template)
        variables: dict[str, Any] = {
            **template_kwargs,
            "messages": list(messages),
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
        }
        if tools is not None:
            variables["tools"] = list(tools)
        if documents is not None:
            variables["documents"] = list(documents)
        try:
            return self._template.render(**variables)
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template failed: {e}") from None


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own ``tojson`` escapes <, >, & and ' for HTML; a prompt needs the JSON as is.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def chat_template_environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed jinja2 environment chat templates are rendered in, with what Hugging
    Face's ``apply_chat_template`` gives templates: ``trim_blocks`` / ``lstrip_blocks``,
    the ``loopcontrols`` extension (``{% break %}``, ``{% continue %}``), the globals
    ``raise_exception(message)`` and ``strftime_now(format)``, and a ``tojson`` filter
    that does not HTML-escape."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids, never splitting a multi-byte character.

    The work is done by ``tokenizers``' own ``DecodeStream`` (it decodes a small window
    of the last tokens, not the whole output, each step). The stream is primed with the
    prompt's last few tokens, so a decoder rule that treats the first token of a text
    differently (SentencePiece's leading space) applies as it would mid-text. The
    priming stops at the prompt's last whole character: ``DecodeStream`` would otherwise
    hold a prompt that ends inside a UTF-8 sequence (token-id prompts can) as pending
    bytes and emit their replacement characters as output text. With that cut, the
    deltas always add up to a prefix of the output decoded on its own (the final text).

    Args:
        tokenizer: the model's tokenizer.
        prompt_ids: the prompt (only its tail is used).
    """

    CONTEXT_TOKENS = 6
    """Prompt tokens the stream is primed with."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer._tok
        self._stream = DecodeStream(skip_special_tokens=True)
        context = [int(i) for i in prompt_ids[-self.CONTEXT_TOKENS :]]
        while context and self._tok.decode(context, skip_special_tokens=True).endswith("\ufffd"):
            context.pop()
        for i in context:
            self._stream.step(self._tok, i)
        self.text = ""

    def add(self, new_ids: Sequence[int]) -> str:
        """Append ids; return the newly completed text (possibly empty)."""
        pieces = [piece for i in new_ids if (piece := self._stream.step(self._tok, int(i)))]
        delta = "".join(pieces)
        self.text += delta
        return delta
