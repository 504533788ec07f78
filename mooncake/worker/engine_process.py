"""Entry point of a worker's engine process:
``python -m mooncake.worker.engine_process FD PARENT_PID``.

The worker starts it (``EngineClient``) with one end of a socket pair as ``FD``, sends
``("init", EngineConfig, options)``, and gets ``("ready", info, load)`` once the model is
loaded, or ``("error", exception, traceback)``. Then ``EngineLoop`` serves until the worker says
stop or its end of the socket closes. The process also dies with its parent (Linux
``PR_SET_PDEATHSIG``), so a killed worker never leaves an engine holding memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING, Any

from mooncake.worker.channel import Channel, ChannelClosed
from mooncake.worker.engine_loop import EngineLoop, _picklable

if TYPE_CHECKING:
    from mooncake.engine import LLMEngine
    from mooncake.worker.core_lending import CoreLender, LendingSetup

logger = logging.getLogger("mooncake.worker.engine_process")

_PR_SET_PDEATHSIG = 1


def engine_info(engine: LLMEngine) -> dict[str, Any]:
    """The facts about the engine its worker reports (no torch objects)."""
    import torch

    mc = engine.model_config
    return {
        "pid": os.getpid(),
        "model_path": str(engine.model_path),
        "model_name": engine.model_path.name,
        "fingerprint": engine.fingerprint,
        "hash_seed": engine.config.hash_seed,
        "block_size": engine.config.block_size,
        "max_model_len": engine.max_model_len,
        "vocab_size": mc.vocab_size,
        "num_layers": mc.num_layers,
        "hidden_size": mc.hidden_size,
        "num_params": mc.num_params,
        "bytes_per_param": 4 if engine.config.dtype == "float32" else 2,
        "kv_bytes_per_token": engine.spec.bytes_per_token,
        "kv_bytes_per_block": engine.spec.bytes_per_block,
        "kv_capacity_tokens": engine.pool.num_blocks * engine.config.block_size,
        # The step budget, so the Conductor's cost-model export can describe batching.
        "max_num_batched_tokens": engine.config.max_num_batched_tokens,
        "long_prefill_chunk": engine.config.long_prefill_chunk,
        "max_num_seqs": engine.config.max_num_seqs,
        "device": engine.config.device,
        "torch_threads": torch.get_num_threads(),
        # The pool's shared-memory file, when a same-host decode engine may copy from it.
        "kv_pool_path": engine.runner.pool_path,
    }


def _lender(engine: LLMEngine, setup: LendingSetup | None, usable: set[int]) -> CoreLender | None:
    """The engine's core lender when its worker lends cores and its threads are pinned."""
    if setup is None or engine.config.device != "cpu":
        return None  # GPU engines keep their threads as they are
    if engine.bound_cpus is None:
        logger.warning(
            "cpu_core_lending is on but this engine's threads are not pinned "
            "(cpu_threads_bind / $MOONCAKE_CPU_OMP_THREADS_BIND is none): not lending"
        )
        return None
    from mooncake.worker.core_ledger import CoreLedger
    from mooncake.worker.core_lending import CoreLender

    def bind_threads(cpus: list[int]) -> None:
        from mooncake.engine import thread_bind  # loaded with the engine already

        thread_bind.bind_threads(cpus)

    # Lending only speeds an engine up: without it (a bad or full ledger) it still serves.
    try:
        ledger = CoreLedger(setup.ledger_path)
    except (OSError, ValueError) as e:
        logger.warning("not lending cores: %s", e)
        return None
    try:
        return CoreLender(ledger, engine.bound_cpus, usable, bind_threads, setup.idle_s)
    except RuntimeError as e:
        ledger.close()
        logger.warning("not lending cores: %s", e)
        return None


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the closed socket still ends the loop
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    fd, parent_pid = int(argv[1]), int(argv[2])
    _die_with_parent(parent_pid)
    logging.basicConfig(
        level=os.environ.get("MOONCAKE_ENGINE_LOG_LEVEL", "WARNING"),
        format="%(asctime)s engine[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    channel = Channel(socket.socket(fileno=fd))
    try:
        kind, config, options = channel.recv()
        assert kind == "init", kind
    except ChannelClosed:
        return 1
    try:
        from mooncake.engine import LLMEngine  # torch loads here, in the engine process only

        usable = os.sched_getaffinity(0)  # before the engine pins its threads
        engine = LLMEngine(config)
        lender = _lender(engine, options.get("core_lending"), usable)
        loop = EngineLoop(engine, channel, profile=bool(options.get("profile")), lender=lender)
        channel.send(("ready", engine_info(engine), loop.load()))
    except Exception as exc:
        channel.send(("error", _picklable(exc), "".join(traceback.format_exception(exc))))
        return 1
    try:
        loop.run()
    finally:
        if engine.runner.pool_path is not None:  # a kill -9 leaves it to the tier sweep
            with contextlib.suppress(OSError):
                os.unlink(engine.runner.pool_path)
    channel.close()
    # Skip the interpreter's teardown of torch and the model (over a second): the worker
    # waits for this exit, and Dask's Nanny kills a worker that takes 4 s to close.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
