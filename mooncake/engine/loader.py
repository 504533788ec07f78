"""Load a local Hugging Face checkpoint directory: config, safetensors (single file or
sharded with ``model.safetensors.index.json``), and the model's fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from mooncake.engine.model import LlamaModel, load_hf_state_dict
from mooncake.engine.model_config import ModelConfig

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def weight_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files, in a stable order.

    Raises:
        ValueError: none found, or the shard index names a missing file.
    """
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"shard index {str(index)!r} names missing file(s): {missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model directory {str(path)!r} has no *.safetensors weights")
    return files


def fingerprint(path: Path) -> str:
    """Identity of a checkpoint: BLAKE2b over config.json and every weight file's bytes.

    Hashing weights of a large model is slow, so the result is cached in a sidecar file
    under ``$MOONCAKE_CACHE`` keyed by (path, size, mtime) of every file.
    """
    files = [path / "config.json", *weight_files(path)]
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    stamp_key = hashlib.blake2b(json.dumps(stamp).encode(), digest_size=16).hexdigest()
    cache_file = cache_dir() / "fingerprints" / f"{stamp_key}.txt"
    if cache_file.is_file():
        return cache_file.read_text().strip()
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest)
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def cache_dir() -> Path:
    """Where mooncake keeps generated and derived files (``$MOONCAKE_CACHE``)."""
    return Path(os.environ.get("MOONCAKE_CACHE", Path.home() / ".cache" / "mooncake"))


def load_model(
    path: Path, dtype: str, device: torch.device, max_positions: int
) -> tuple[LlamaModel, ModelConfig]:
    """Build the model and copy the checkpoint's weights into it.

    Raises:
        ValueError: unsupported architecture, missing files or tensors.
    """
    if not path.is_dir():
        raise ValueError(f"model directory {str(path)!r} does not exist")
    cfg = ModelConfig.from_dir(path)
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                tensors[name] = fh.get_tensor(name)
    torch_dtype = TORCH_DTYPES[dtype]
    with torch.device("meta"):
        model = LlamaModel(cfg, max_positions)
    model = model.to_empty(device=device).to(torch_dtype)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    load_hf_state_dict(model, tensors)
    model.init_rope()
    model.eval()
    return model, cfg
