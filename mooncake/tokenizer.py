"""Tokenizer (``tokenizer.json`` through the ``tokenizers`` library), chat template
(``tokenizer_config.json``, rendered with jinja2) and generation stop tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


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
        if self.eos_token is not None and (eid := self._tok.token_to_id(self.eos_token)) is not None:
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
            self._max_token_chars = max((len(t) for t in self._tok.get_vocab(with_added_tokens=True)), default=1)
        return self._max_token_chars

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render the model's chat template.

        Raises:
            ValueError: the model has no chat template, or the template rejects the input.
        """
        if self.chat_template is None:
            raise ValueError("this model has no chat_template in tokenizer_config.json")
        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

            def raise_exception(message: str) -> None:
                raise ValueError(message)

            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template failed: {e}") from None


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids, never splitting a multi-byte character.

    Decodes a small window (the last few tokens) rather than the whole output each time.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        # Start from the prompt's tail so a leading-space rule (SentencePiece) applies as
        # it would mid-text.
        self.ids: list[int] = list(prompt_ids[-6:])
        self._prefix_offset = 0
        self._read_offset = len(self.ids)
        self.text = ""

    def add(self, new_ids: Sequence[int]) -> str:
        """Append ids; return the newly completed text (possibly empty)."""
        self.ids.extend(new_ids)
        prefix = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset])
        full = self.tokenizer.decode(self.ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """At the end: emit whatever is left, replacement characters included."""
        prefix = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset])
        full = self.tokenizer.decode(self.ids[self._prefix_offset :])
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset = len(self.ids)
        self.text += delta
        return delta
