"""The worker's handle on its engine process.

The engine runs in a child process of the worker (``engine_process``), not in a
thread of it: a Dask worker runs Python all the time (its event loop, task threads,
heartbeats, the block server), and an engine thread sharing that GIL waited for it at
every small torch op — a prefill step of the built-in model took twice its in-process
time. In its own process the engine has a GIL to itself and the worker keeps the
control plane.

Commands are named calls answered in order (``call``); requests are admitted with
``add``, whose future resolves when the request finishes. One reader thread receives
results, token deltas (handed to ``emit``), finished requests, block events and the
engine's load.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mooncake.conductor.reports import StepTiming
from mooncake.outputs import RequestOutput
from mooncake.types import BlockKey
from mooncake.worker.channel import Channel, ChannelClosed
from mooncake.worker.engine_loop import AddRequest, RequestAborted

if TYPE_CHECKING:
    from mooncake.config import EngineConfig
    from mooncake.worker.core_lending import LendingSetup

logger = logging.getLogger(__name__)

Emit = Callable[[str, list[dict[str, Any]]], None]


class EngineProcessError(RuntimeError):
    """The engine process failed to start or exited."""


class EngineClient:
    """Start an engine process for ``config``; ``emit(topic, messages)`` receives token
    deltas (from the reader thread). ``start`` is blocking (it loads the model).

    Args:
        profile: the process records per-step timings (``call("profile_log")``); also
            on with ``MOONCAKE_ENGINE_PROFILE=1`` in the environment.
        core_lending: the engine lends its cores to, and borrows from, the other
            engines of this host (``WorkerConfig.cpu_core_lending``).
    """

    def __init__(
        self,
        config: EngineConfig,
        emit: Emit,
        profile: bool = False,
        core_lending: LendingSetup | None = None,
    ) -> None:
        self.config = config
        self.emit = emit
        self.info: dict[str, Any] = {}
        self.load: dict[str, Any] = {}
        """The engine's latest load (``EngineLoop.load``), first sent with ``ready``."""
        self.block_events: collections.deque[tuple[str, bytes]] = collections.deque()
        self.step_timings: collections.deque[StepTiming] = collections.deque(maxlen=4096)
        """(sequences, context tokens, seconds, gap since the previous decode-only step or
        ``None``, prompt chunks) of the engine's decode-only and prompt-only steps, until
        the worker reports them to the Conductor (``DecodeStep``)."""
        self.token_times: dict[str, list[float]] = {}
        """Request id -> wall time of each token the engine produced (set at its end)."""
        self._ids = itertools.count()
        self._calls: dict[int, concurrent.futures.Future[Any]] = {}
        self._requests: dict[str, concurrent.futures.Future[RequestOutput]] = {}
        self._lock = threading.Lock()
        self._closed: BaseException | None = None
        ours, theirs = socket.socketpair()
        for s in (ours, theirs):  # room for a few blocks per write
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        env = dict(os.environ)
        # The same imports as this process, whatever put them on its path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mooncake.worker.engine_process",
                str(theirs.fileno()),
                str(os.getpid()),
            ],
            pass_fds=(theirs.fileno(),),
            env=env,
        )
        theirs.close()
        self.channel = Channel(ours)
        self.channel.send(
            (
                "init",
                config,
                {
                    "profile": profile or os.environ.get("MOONCAKE_ENGINE_PROFILE") == "1",
                    "core_lending": core_lending,
                },
            )
        )
        self._reader: threading.Thread | None = None

    def start(self) -> dict[str, Any]:
        """Wait for the model to load; returns the engine's facts (``engine_info``)."""
        try:
            msg = self.channel.recv()
        except ChannelClosed:
            code = self.proc.wait()
            raise EngineProcessError(
                f"engine process exited with code {code} before it was ready"
            ) from None
        if msg[0] == "error":
            self.proc.wait()
            logger.error("engine process failed to start:\n%s", msg[2])
            raise msg[1]
        self.info, self.load = msg[1], msg[2]
        self._reader = threading.Thread(
            target=self._read, name="mooncake-engine-reader", daemon=True
        )
        self._reader.start()
        return self.info

    # -- calls --------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run the engine loop's command ``name`` between steps; the future holds its result."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed is not None:
                fut.set_exception(EngineProcessError(str(self._closed)))
                return fut
            cid = next(self._ids)
            self._calls[cid] = fut
        try:
            self.channel.send((cid, name, args, kwargs))
        except OSError as e:
            with self._lock:
                self._calls.pop(cid, None)
            fut.set_exception(EngineProcessError(f"engine process unreachable: {e}"))
        return fut

    def add(self, req: AddRequest) -> concurrent.futures.Future[RequestOutput]:
        """Admit a request (blocks until the engine accepted it; its errors, e.g.
        ``ValueError`` for bad input, raise here). The future resolves to its final output
        or fails with ``RequestAborted``."""
        done, call = self._send_add(req, None, None)
        try:
            call.result()
        except BaseException:
            self._forget(req.request_id, done)
            raise
        return done

    async def add_async(self, req: AddRequest) -> concurrent.futures.Future[RequestOutput]:
        """``add`` for a caller on an event loop: the engine's acceptance is awaited,
        not blocked on."""
        done, call = self._send_add(req, None, None)
        try:
            await asyncio.wrap_future(call)
        except BaseException:
            self._forget(req.request_id, done)
            raise
        return done

    def lookup_and_add(
        self, req: AddRequest, stored: Sequence[bool], keys: Sequence[BlockKey]
    ) -> concurrent.futures.Future[tuple[concurrent.futures.Future[RequestOutput] | None, int]]:
        """Look the prompt up in the engine's prefix cache and admit it, in one call that
        is sent before this returns. ``keys``: the prompt's block keys (the worker has
        them already); ``stored[i]``: the worker's store holds block ``i``. The future
        resolves to (the request's future, cached tokens), or to (None, cached tokens)
        when the store holds the next block: import it, then ``add``."""
        done, call = self._send_add(req, list(stored), list(keys))
        out: concurrent.futures.Future[
            tuple[concurrent.futures.Future[RequestOutput] | None, int]
        ] = concurrent.futures.Future()

        def answered(f: concurrent.futures.Future[Any]) -> None:
            try:
                cached = f.result()
            except BaseException as e:
                self._forget(req.request_id, done)
                out.set_exception(e)
                return
            if cached < 0:  # not admitted (see EngineLoop.add)
                self._forget(req.request_id, done)
                out.set_result((None, -1 - cached))
            else:
                out.set_result((done, cached))

        call.add_done_callback(answered)
        return out

    def import_from_tier_and_add(
        self, path: str, keys: Sequence[BlockKey], req: AddRequest
    ) -> tuple[tuple[int, int, int], concurrent.futures.Future[RequestOutput] | None]:
        """Import a hand-off's blocks from the host tier at ``path`` and admit ``req`` in
        one engine command (``EngineLoop.import_from_tier_and_add``); blocks until the
        engine answered. Returns (found, imported, bytes) and the request's future, or
        None when a block was missing (the request is not admitted: ``add`` it once the
        rest is here)."""
        return self._import_and_add("import_from_tier_and_add", (path, list(keys)), len(keys), req)

    def import_from_records_and_add(
        self, path: str, keys: Sequence[BlockKey], offsets: Sequence[int], req: AddRequest
    ) -> tuple[tuple[int, int, int], concurrent.futures.Future[RequestOutput] | None]:
        """:meth:`import_from_tier_and_add` from the records at ``offsets`` of a prefill
        worker's export arena at ``path`` (``EngineLoop.import_from_records_and_add``)."""
        return self._import_and_add(
            "import_from_records_and_add", (path, list(keys), list(offsets)), len(keys), req
        )

    def import_from_pool_and_add(
        self,
        path: str,
        src_ids: Sequence[int],
        keys: Sequence[BlockKey],
        token_ids: Sequence[int],
        deadline: float,
        req: AddRequest,
    ) -> tuple[tuple[int, int, int], concurrent.futures.Future[RequestOutput] | None]:
        """:meth:`import_from_tier_and_add` straight from the pool file at ``path`` of a
        prefill engine on this host, copied only before ``deadline``
        (``EngineLoop.import_from_pool_and_add``)."""
        return self._import_and_add(
            "import_from_pool_and_add",
            (path, list(src_ids), list(keys), list(token_ids), deadline),
            len(keys),
            req,
        )

    def _import_and_add(
        self, command: str, args: tuple[Any, ...], n: int, req: AddRequest
    ) -> tuple[tuple[int, int, int], concurrent.futures.Future[RequestOutput] | None]:
        done: concurrent.futures.Future[RequestOutput] = concurrent.futures.Future()
        with self._lock:
            self._requests[req.request_id] = done
        try:
            got: tuple[int, int, int] = self.call(command, *args, req).result()
        except BaseException:
            self._forget(req.request_id, done)
            raise
        if got[0] < n:
            self._forget(req.request_id, done)
            return got, None
        return got, done

    def _send_add(
        self, req: AddRequest, stored: list[bool] | None, keys: list[BlockKey] | None
    ) -> tuple[concurrent.futures.Future[RequestOutput], concurrent.futures.Future[Any]]:
        done: concurrent.futures.Future[RequestOutput] = concurrent.futures.Future()
        with self._lock:
            self._requests[req.request_id] = done
        return done, self.call("add", req, stored, keys)

    def _forget(self, request_id: str, done: concurrent.futures.Future[RequestOutput]) -> None:
        with self._lock:
            if self._requests.get(request_id) is done:
                del self._requests[request_id]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine process (killed if it does not exit within ``timeout``)."""
        if self.proc.poll() is None:
            try:
                self.call("stop").result(timeout)
            except Exception:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.channel.close()

    # -- reader thread ------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while True:
                msg = self.channel.recv()
                if msg[0] == "result":
                    _, cid, ok, value = msg
                    with self._lock:
                        fut = self._calls.pop(cid)
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
                else:
                    self._state(*msg[1:])
        except (ChannelClosed, OSError) as e:
            code = self.proc.wait()
            reason = EngineProcessError(
                f"engine process exited with code {code}" if code else "engine process stopped"
            )
            if code:
                logger.error("%s (%s)", reason, e)
            self._fail_all(reason)

    def _state(
        self,
        deltas: list[tuple[str, list[dict[str, Any]]]],
        finished: list[tuple[str, RequestOutput, list[float]]],
        failed: list[tuple[str, str]],
        events: list[tuple[str, bytes]],
        load: dict[str, Any],
        steps: list[StepTiming],
    ) -> None:
        self.block_events.extend(events)
        self.step_timings.extend(steps)
        self.load = load
        # Stream first, then resolve the tasks: a client sees the last tokens no later
        # than the task's completion.
        for topic, msgs in deltas:
            self.emit(topic, msgs)
        for rid, out, times in finished:
            self.token_times[rid] = times
            with self._lock:
                fut = self._requests.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(out)
        for rid, why in failed:
            with self._lock:
                fut = self._requests.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(RequestAborted(rid) if why == "aborted" else RuntimeError(why))

    def _fail_all(self, reason: BaseException) -> None:
        with self._lock:
            self._closed = reason
            pending = list(self._calls.values()) + list(self._requests.values())
            self._calls.clear()
            self._requests.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(EngineProcessError(str(reason)))
