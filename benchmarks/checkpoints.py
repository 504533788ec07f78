"""Random-weight Hugging Face Llama checkpoints for the engine benchmark.

Every side of the benchmark (mooncake, vLLM, transformers) loads the same directory, so
the weights, shapes and tokenizer are identical. Weights are random (fixed seed): the
benchmark measures speed, not quality, and prompts are token ids.

Usage::

    python benchmarks/checkpoints.py llama-100m        # prints the directory
    python benchmarks/checkpoints.py --all

Checkpoints are cached under ``.bench/checkpoints/<shape>`` in the repository (ignored
by git) and rebuilt only when missing or when ``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".bench" / "checkpoints"
SEED = 0


@dataclass(frozen=True)
class Shape:
    """A Llama shape: the fields passed to ``transformers.LlamaConfig``."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 4096


SHAPES: dict[str, Shape] = {
    # A toy: the cost is all framework overhead. head_dim 32: the smallest vLLM-CPU runs.
    "tiny": Shape(128, 2, 4, 2, 256, 260),
    # ~57M parameters with untied embeddings: the small peer-comparison shape.
    "llama-57m": Shape(512, 8, 8, 2, 1536, 32000),
    # ~100M parameters: 12 layers of 768 hidden, GQA 12/4.
    "llama-100m": Shape(768, 12, 12, 4, 2048, 32000),
    # The same shapes with room for 8,192-token prompts (the hand-off benchmark).
    "tiny-16k": Shape(128, 2, 4, 2, 256, 260, 16384),
    "llama-57m-16k": Shape(512, 8, 8, 2, 1536, 32000, 16384),
}


def num_params(shape: Shape) -> int:
    """Parameter count of ``LlamaForCausalLM`` with untied embeddings."""
    h, v, i = shape.hidden_size, shape.vocab_size, shape.intermediate_size
    head_dim = h // shape.num_attention_heads
    kv = shape.num_key_value_heads * head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return shape.num_hidden_layers * per_layer + 2 * v * h + h


def _write_tokenizer(path: Path, vocab_size: int, max_len: int) -> None:
    """A word-level tokenizer over ``<t0> .. <tN>`` so that loaders that insist on a
    tokenizer find one; the benchmark itself feeds token ids and never tokenizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(len(vocab), vocab_size):
        vocab[f"<t{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def ensure_checkpoint(name: str, root: Path = DEFAULT_ROOT, force: bool = False) -> Path:
    """Write the checkpoint for shape ``name`` under ``root`` if missing; return its dir."""
    if name not in SHAPES:
        raise ValueError(f"shape: unknown {name!r}; known: {sorted(SHAPES)}")
    shape = SHAPES[name]
    path = root / name
    stamp = path / "bench_shape.json"
    want = {"name": name, "seed": SEED, **asdict(shape)}
    if not force and stamp.exists() and json.loads(stamp.read_text()) == want:
        return path

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **asdict(shape),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    _write_tokenizer(path, shape.vocab_size, shape.max_position_embeddings)
    stamp.write_text(json.dumps(want, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="*", help=f"shape names: {', '.join(SHAPES)}")
    parser.add_argument("--all", action="store_true", help="write every shape")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--force", action="store_true", help="rewrite even if present")
    args = parser.parse_args(argv)
    names = list(SHAPES) if args.all else args.shapes
    if not names:
        parser.error("name a shape or pass --all")
    for name in names:
        path = ensure_checkpoint(name, args.root, args.force)
        print(f"{name}\t{num_params(SHAPES[name]) / 1e6:.1f}M params\t{path}")


if __name__ == "__main__":
    main()
