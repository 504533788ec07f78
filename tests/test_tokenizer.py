"""``mooncake.tokenizer``: the incremental detokenizer (``tokenizers``' ``DecodeStream``)
streams exactly what the window algorithm it replaced streamed, on a byte-level and a
SentencePiece-style tokenizer, with multi-byte characters and special tokens; the chat
template environment has what Hugging Face templates use, checked with templates written
for these tests."""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers

from mooncake.engine.default_model import build_tokenizer
from mooncake.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "hello world",
    " héllo wörld, 世界! 🚀🚀 ok",
    "añ世🚀b" * 3,
    "  two  spaces\nand a line",
    "ünïcödé ☃ 𝄞 done",
]


class WindowDetokenizer:
    """The algorithm the project used before ``DecodeStream`` (vLLM's and TGI's): decode
    the window since the last emitted text, emit what grew unless it ends in U+FFFD."""

    def __init__(self, tok: Tokenizer, prompt_ids: Sequence[int] = ()) -> None:
        self.tok = tok
        self.ids = list(prompt_ids[-6:])
        self.prefix, self.read = 0, len(self.ids)

    def add(self, new_ids: Sequence[int]) -> str:
        self.ids.extend(new_ids)
        prefix = self.tok.decode(self.ids[self.prefix : self.read])
        full = self.tok.decode(self.ids[self.prefix :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return full[len(prefix) :]
        return ""


def _save(tok: HFTokenizer, path: Path, specials: dict[str, str]) -> Tokenizer:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(specials))
    return Tokenizer(path)


def _sentencepiece_style() -> HFTokenizer:
    """Llama-2 shaped: Metaspace-style normalizer, BPE with byte fallback (``<0xNN>``
    tokens for anything outside the small vocabulary), a decoder that strips the leading
    space of a text."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", *"abcdehlnorstwäö", "▁h", "el", "▁hel", "lo", "▁w", "or", "▁wor"]:
        vocab[piece] = len(vocab)
    merges = [
        ("▁", "h"),
        ("e", "l"),
        ("▁h", "el"),
        ("l", "o"),
        ("▁", "w"),
        ("o", "r"),
        ("▁w", "or"),
    ]
    tok = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


@pytest.fixture(scope="module", params=["byte-level", "sentencepiece"])
def tokenizer(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Tokenizer:
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "byte-level":
        return _save(build_tokenizer(), path, {"bos_token": "<s>", "eos_token": "</s>"})
    return _save(_sentencepiece_style(), path, {"bos_token": "<s>", "eos_token": "</s>"})


def _streams(
    tok: Tokenizer, prompt: list[int], output: list[int], chunk: int
) -> tuple[list[str], list[str]]:
    ours, ref = IncrementalDetokenizer(tok, prompt), WindowDetokenizer(tok, prompt)
    chunks = [output[i : i + chunk] for i in range(0, len(output), chunk)]
    return [ours.add(c) for c in chunks], [ref.add(c) for c in chunks]


@pytest.mark.parametrize("chunk", [1, 3])
def test_text_streams_as_before(tokenizer: Tokenizer, chunk: int) -> None:
    """Text prompts and outputs with accents, CJK, emoji and astral characters (split
    across byte tokens), special tokens (BOS/EOS) mixed in. Fed one token at a time (as
    the engine does), the deltas equal the replaced algorithm's. Fed three at a time, the
    same text arrives no later: ``DecodeStream`` steps token by token and emits the whole
    characters of a chunk whose last token ends mid-character, where the old window
    held the whole chunk back. No delta holds U+FFFD; with the byte-level tokenizer (no
    leading-space rule) the deltas add up to the output decoded whole."""
    specials = (
        [tokenizer.encode("", add_special_tokens=True)[0]]
        if tokenizer.encode("", add_special_tokens=True)
        else []
    )
    specials += sorted(tokenizer.eos_token_ids)
    assert specials, "the tokenizers above have special tokens"
    rng = random.Random(3)
    for prompt_text in ["", "hello", "wörld 世", "🚀"]:
        prompt = tokenizer.encode(prompt_text) if prompt_text else []
        for text in TEXTS:
            output = tokenizer.encode(text, add_special_tokens=False)
            for _ in range(2):
                output.insert(rng.randrange(len(output) + 1), rng.choice(specials))
            ours, ref = _streams(tokenizer, prompt, output, chunk)
            if chunk == 1:
                assert ours == ref
            else:
                for n in range(1, len(ours) + 1):
                    assert "".join(ours[:n]).startswith("".join(ref[:n]))
                assert "".join(ours) == "".join(ref)
            assert all("\ufffd" not in d for d in ours)
            if type(tokenizer._tok.decoder).__name__ == "ByteLevel":  # no leading-space rule
                assert "".join(ours) == tokenizer.decode(output)


def test_arbitrary_token_ids_match_or_stay_a_prefix_of_the_final_text(tmp_path: Path) -> None:
    """Random byte tokens and specials, as a random-weight model emits (invalid UTF-8
    included): identical to the replaced algorithm whenever the prompt ends on a whole
    character; and the streamed text is always a prefix of the output decoded on its own
    (the final text), which the old algorithm missed for prompts ending mid-character."""
    tok = _save(build_tokenizer(), tmp_path / "bytes", {"bos_token": "<s>", "eos_token": "</s>"})
    rng = random.Random(0)
    for _ in range(400):
        prompt = [rng.randrange(259) for _ in range(rng.randrange(0, 10))]
        output = [rng.randrange(259) for _ in range(rng.randrange(1, 30))]
        ours, ref = _streams(tok, prompt, output, 1)
        assert tok.decode(output).startswith("".join(ours))
        if not tok.decode(prompt[-6:]).endswith("\ufffd"):
            assert ours == ref


# -- chat templates ---------------------------------------------------------------------


def _with_template(tmp_path: Path, template: str) -> Tokenizer:
    return _save(
        build_tokenizer(),
        tmp_path / "chat",
        {"bos_token": "<s>", "eos_token": "</s>", "chat_template": template},
    )


def test_loopcontrols_break_and_continue(tmp_path: Path) -> None:
    """``{% continue %}`` skips system turns, ``{% break %}`` stops at the first
    assistant turn (the ``loopcontrols`` extension HF enables)."""
    tpl = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{% if m['role'] == 'assistant' %}{% break %}{% endif %}[{{ m['content'] }}]{% endfor %}"
    )
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert _with_template(tmp_path, tpl).apply_chat_template(msgs) == "[a][b]"


def test_strftime_now_dates_the_prompt(tmp_path: Path) -> None:
    """``strftime_now(format)`` renders today's date (Llama 3.1-style system header)."""
    tpl = "Today Date: {{ strftime_now('%d %b %Y') }}\n{{ messages[0]['content'] }}"
    before = datetime.datetime.now().strftime("%d %b %Y")
    out = _with_template(tmp_path, tpl).apply_chat_template([{"role": "user", "content": "hi"}])
    assert out in {
        f"Today Date: {d}\nhi" for d in (before, datetime.datetime.now().strftime("%d %b %Y"))
    }


def test_raise_exception_is_a_value_error(tmp_path: Path) -> None:
    """A template that rejects its input with ``raise_exception`` (roles must alternate)
    surfaces as ``ValueError`` carrying the template's message."""
    tpl = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    tok = _with_template(tmp_path, tpl)
    assert (
        tok.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        )
        == "ab"
    )
    with pytest.raises(ValueError, match="roles must alternate"):
        tok.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )


def test_tools_rendered_as_plain_json(tmp_path: Path) -> None:
    """``tools`` reach the template, and ``tojson`` writes them as JSON without HTML
    escaping and with non-ASCII kept (HF's filter, not jinja2's)."""
    tpl = (
        "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "<city> & 'country' → °C",
            "parameters": {"type": "object"},
        },
    }
    tok = _with_template(tmp_path, tpl)
    out = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=[tool])
    assert out == f"<tools>{json.dumps(tool, ensure_ascii=False)}</tools>\nhi"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"


def test_multi_part_content(tmp_path: Path) -> None:
    """Content given as a list of typed parts (OpenAI / HF multimodal style) reaches the
    template as is; a template that joins the text parts and marks images renders it."""
    tpl = (
        "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}"
        "{% elif p['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}{{ "
        "'\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look "},
                {"type": "image"},
                {"type": "text", "text": " what?"},
            ],
        },
        {"role": "assistant", "content": "A cat."},
    ]
    assert (
        _with_template(tmp_path, tpl).apply_chat_template(msgs)
        == "user: Look <image> what?\nassistant: A cat.\nassistant: "
    )


def test_extra_template_variables(tmp_path: Path) -> None:
    """Keyword arguments become template variables (e.g. a thinking switch)."""
    tpl = (
        "{{ messages[0]['content'] }}"
        "{% if enable_thinking is defined and not enable_thinking %} /no_think{% endif %}"
    )
    tok = _with_template(tmp_path, tpl)
    assert (
        tok.apply_chat_template([{"role": "user", "content": "q"}], enable_thinking=False)
        == "q /no_think"
    )
    assert tok.apply_chat_template([{"role": "user", "content": "q"}]) == "q"


def test_template_cannot_reach_python_internals(tmp_path: Path) -> None:
    """The sandbox still holds: attribute access to internals is refused as a
    ``ValueError``, not executed."""
    tpl = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ValueError, match="chat template failed"):
        _with_template(tmp_path, tpl).apply_chat_template([{"role": "user", "content": "x"}])
