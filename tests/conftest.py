"""Shared fixtures: tiny random-weight Hugging Face checkpoints written with transformers."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Generated files (default model, fingerprints) go to a per-run directory, removed when
# the run ends (only when this run made it).
if "MOONCAKE_CACHE" not in os.environ:
    _RUN_CACHE = tempfile.mkdtemp(prefix="mooncake-test-cache-")
    os.environ["MOONCAKE_CACHE"] = _RUN_CACHE
    atexit.register(shutil.rmtree, _RUN_CACHE, ignore_errors=True)
# Every native kernel runs in the tests (their equality with transformers is what is
# checked), whichever is faster on this CPU; tests/engine/test_kernel_choice.py tests
# the measured choice itself.
os.environ.setdefault("MOONCAKE_KERNEL_TUNE", "0")
# Engines unpinned: the suite runs clusters side by side (a session's and a module's),
# and pinned, each would take the same first CPUs. tests/engine/test_thread_bind.py
# tests the pinning itself.
os.environ.setdefault("MOONCAKE_CPU_OMP_THREADS_BIND", "none")

TINY: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=300,
    max_position_embeddings=1024,
)


def write_checkpoint(
    path: Path,
    arch: str = "llama",
    seed: int = 0,
    max_shard_size: str | None = None,
    **overrides: Any,
) -> Path:
    """Save a random-weight ``{arch}`` model with ``save_pretrained`` (safetensors)."""
    import torch
    import transformers

    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    config = cfg_cls(**{**TINY, **overrides})
    model = model_cls(config).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return path


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(name, arch=..., **config)`` -> directory, cached per session by name."""
    made: dict[str, Path] = {}

    def factory(name: str, arch: str = "llama", **kwargs: Any) -> Path:
        if name not in made:
            made[name] = write_checkpoint(tmp_path_factory.mktemp(name), arch, **kwargs)
        return made[name]

    return factory


@pytest.fixture(scope="session")
def tiny_llama(checkpoint_factory: Callable[..., Path]) -> Path:
    return checkpoint_factory("tiny-llama")


@pytest.fixture(scope="session")
def chat_checkpoint(checkpoint_factory: Callable[..., Path]) -> Path:
    """The tiny Llama checkpoint plus a byte-level tokenizer and a chat template, so text
    prompts and chat work (vocabulary cut to the tokenizer's 259 ids)."""
    from mooncake.engine.default_model import CHAT_TEMPLATE, build_tokenizer

    path = checkpoint_factory("tiny-llama-chat", seed=3, vocab_size=259)
    if not (path / "tokenizer.json").is_file():
        build_tokenizer().save(str(path / "tokenizer.json"))
        cfg = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "chat_template": CHAT_TEMPLATE,
        }
        (path / "tokenizer_config.json").write_text(json.dumps(cfg))
        (path / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 256, "eos_token_id": 257})
        )
    return path


def hf_model(path: Path) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype="float32").eval()


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation, EOS ignored."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(prompt) :]]


@functools.cache
def _hf_model_cached(path: str) -> Any:
    return hf_model(Path(path))


@functools.cache
def _hf_continuation(path: str, prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    return tuple(hf_greedy(_hf_model_cached(path), list(prompt), max_new_tokens))


def hf_reference(path: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuations of ``prompts`` from the checkpoint at ``path``,
    each computed once per session (several tests compare different engine paths with
    the same reference)."""
    return [list(_hf_continuation(str(path), tuple(p), max_new_tokens)) for p in prompts]


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm) for a host tier."""
    d = Path(tempfile.mkdtemp(prefix="mooncake-test-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host_dir(shm_dir: Path) -> str:
    return str(shm_dir / "host")


@pytest.fixture
def ssd_dir(tmp_path: Path) -> str:
    return str(tmp_path / "ssd")


# -- the ``cluster`` mark ---------------------------------------------------------------
# Fixtures that start a Dask cluster: a test that uses one (directly or through another
# fixture) starts a cluster, so it is marked ``cluster`` here instead of by hand.
CLUSTER_FIXTURES = frozenset({"llm", "llm2"})

_current_item: pytest.Item | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _current_item
    _current_item = item


def pytest_configure(config: pytest.Config) -> None:
    """A test without the ``cluster`` mark that starts a ``LocalCluster`` in this process
    fails at once, so ``ci/test-fast`` (``-m "not cluster"``) stays cluster-free."""
    from distributed.deploy.local import LocalCluster

    init = LocalCluster.__init__

    def checked_init(self: LocalCluster, *args: Any, **kwargs: Any) -> None:
        item = _current_item
        if item is not None and item.get_closest_marker("cluster") is None:
            raise RuntimeError(
                f"{item.nodeid} starts a Dask cluster: mark it @pytest.mark.cluster "
                "(or use a fixture in tests/conftest.py CLUSTER_FIXTURES)"
            )
        init(self, *args, **kwargs)

    LocalCluster.__init__ = checked_init  # type: ignore[method-assign]
