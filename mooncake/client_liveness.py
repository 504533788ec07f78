"""Liveness on the client side of ``mooncake.LLM``: which workers are in the cluster
(membership events from the Conductor, the live set asked at most every second when an
event may have been missed), whether a request's worker is gone, and whether losing it
stops the request. Streams (``LLM.stream``) and batches (``LLM.generate``) both ask
:meth:`LivenessMixin._lost_worker`.

The scheduler's worker-left event comes after the scheduler has noticed the broken
connection, removed the worker and published the event (tens of ms after a ``kill -9``;
~100 ms on a busy scheduler). The client learns of it sooner itself, from these signs:

- on its own host (same pid namespace), the worker's **process exiting**: while
  requests are placed, the watched workers' /proc entries are read every
  ``EXIT_POLL_S``; a ``kill -9``'d process is marked exiting at once, while its
  connections only break once the kernel has torn its memory down (tens of ms later);
- a **watch** (``mooncake_watch``): one call after another held open on every worker it
  has placed a request on, each answered after ``WATCH_S``; its connection breaks the
  moment the worker's process dies, at the same instant the scheduler's does. A call
  not answered ``WATCH_GRACE_S`` after its time counts as broken too (a host whose link
  went down breaks no connection: packets just stop);
- the worker's engine **closing its token stream** mid-request (the engine process
  dies with its worker, but only after its own teardown: usually later than the event).

A broken watch or a closed stream proves nothing alone (a connection also breaks for
other reasons; an engine also drops a client that does not keep up), so the client then
checks that the worker's process is gone: on its own host in /proc (gone, a zombie, or
exiting), elsewhere by connecting to the worker's address (refused: no process listens
there any more; this waits for the dying process's listener to close, tens of ms later
than its connections). A TCP address that neither accepts nor refuses a connection for
``UNREACHABLE_S`` after its watch broke counts as gone too (its host is down or cut
off), so a silent host is acted on within a bounded time (about ``WATCH_S +
WATCH_GRACE_S + UNREACHABLE_S``), not after the scheduler's ``worker-ttl`` (5 minutes by
default); should it answer again while the scheduler still has it, it is taken back.
Only then are its requests told, as they would be by the event (``("lost", worker,
notice)``). Anything else (alive) leaves it to the scheduler.

A mixin of :class:`mooncake.client.LLM`, which owns the state named below.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from distributed import Client, Future
from distributed.comm.addressing import parse_address, parse_host_port

from mooncake.client_common import LIVENESS_INTERVAL_S, post
from mooncake.conductor import membership
from mooncake.conductor.membership import WorkerJoined
from mooncake.request_ids import task_key
from mooncake.worker.plugin import process_namespace

logger = logging.getLogger(__name__)


@functools.cache
def _own_ns() -> str:
    return process_namespace()


PROBE_TIMEOUT_S = 0.5
"""How long the check that a worker still listens may take (no answer: no verdict)."""
WATCH_S = 1.0
"""How long one watch call stays open before the client renews it (the heartbeat)."""
WATCH_GRACE_S = 2.0
"""How late past ``WATCH_S`` a watch call may answer before it counts as broken (a
worker's loop busy for that long still answers the probe's connection)."""
UNREACHABLE_S = 3.0
"""A worker whose watch broke and whose TCP address neither accepts nor refuses a
connection for this long is taken as gone (its host is down or cut off)."""
MAX_WATCH_PAUSE_S = 5.0
"""The longest pause before a broken watch on a live worker is made again."""
REVIVE_S = 5.0
"""How often a worker taken as gone while unreachable is tried again."""
EXIT_POLL_S = 0.01
"""How often the processes of watched workers on this host are checked for an exit
while requests are placed (reading one /proc entry each)."""
_PROBED_SCHEMES = ("tcp", "tls", "ws", "wss")


def _probed(address: str) -> bool:
    """Whether ``still_listens`` can tell anything about ``address`` (a TCP-based comm)."""
    try:
        return parse_address(address)[0] in _PROBED_SCHEMES
    except ValueError:
        return False


_PF_EXITING = 0x4
"""Linux's per-task flag of a process inside exit (/proc/PID/stat, field 9)."""


def process_ended(pid: int) -> bool | None:
    """Whether the process ``pid`` (of this pid namespace) has ended or is ending: gone,
    a zombie, or inside exit (its memory and files being torn down: a ``kill -9``'d
    worker is in this state when its connections break). False: running; None: /proc
    cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return None
    try:
        fields = stat[stat.rindex(")") + 2 :].split()
        state, flags = fields[0], int(fields[6])
    except (ValueError, IndexError):
        return None
    return state in ("Z", "X", "x") or bool(flags & _PF_EXITING)


async def still_listens(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool | None:
    """Whether a process listens at a worker's Dask ``address``: False when a connection
    to it is refused (the port is closed: the worker's process is gone, since a live
    worker never closes its listener), True when it connects (closed again at once),
    None when it cannot be told (a timeout, an unreachable host, a comm other than TCP)."""
    try:
        scheme, loc = parse_address(address)
        if scheme not in _PROBED_SCHEMES:
            return None
        host, port = parse_host_port(loc)
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return False
    except (OSError, ValueError, asyncio.TimeoutError):
        return None
    writer.close()
    return True


class LivenessMixin:
    """Worker membership and the lost-worker checks of :class:`mooncake.client.LLM`."""

    # What these methods use of the LLM (set by mooncake.client.LLM).
    client: Client
    workers: dict[str, dict[str, Any]]
    _lock: threading.Lock
    _gone: set[str]
    _placed: dict[str, set[str]]
    _sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]]
    _futures: dict[str, dict[str, Future[Any]]]
    _task_workers: dict[str, str]
    _live_cache: tuple[float, set[str]]
    _left_at: dict[str, float]
    _dead: set[str]
    _probes: set[asyncio.Task[None]]
    _watches: dict[str, asyncio.Task[None]]
    _watching: bool
    _exit_poll: asyncio.Task[None] | None

    if TYPE_CHECKING:

        async def _on_client_loop(self, coro: Any) -> Any: ...

        @property
        def _client_loop(self) -> asyncio.AbstractEventLoop: ...

        @property
        def _scheduler(self) -> Any: ...

    def _on_membership(self, event: tuple[float, dict[str, Any]]) -> None:
        """(Client loop.) A worker joined: it is known from now on. A worker left: every
        stream with a request on it is told."""
        _, msg = event
        left = membership.parse(msg)
        if isinstance(left, WorkerJoined):
            with self._lock:
                self.workers[left.worker] = left.info
                self._gone.discard(left.worker)
            return
        if left is None:
            return
        with self._lock:
            self._dead.discard(left.worker)  # the scheduler knows now
        self._worker_gone(left.worker, "membership")

    def _worker_gone(self, worker: str, notice: str) -> None:
        """(Client loop.) ``worker`` is gone: every stream with a request on it is told
        (again, if it was told already: a stream moves a request once, see
        ``_needs_move``)."""
        with self._lock:
            self._left_at.setdefault(worker, time.monotonic())
            self._gone.add(worker)
            self.workers.pop(worker, None)
            affected = [rid for rid, workers in self._placed.items() if worker in workers]
        for rid in affected:
            sink = self._sinks.get(rid)
            if sink is not None:
                post(*sink, ("lost", worker, notice))

    def _on_stream_closed(self, rids: list[str]) -> None:
        """(Client loop.) An engine's token stream closed while it carried ``rids``,
        unfinished: check whether the workers they run on are still there (see the
        module's docstring)."""
        with self._lock:
            suspects = sorted({w for rid in rids for w in self._placed.get(rid, ())} - self._gone)
        if suspects:
            task = asyncio.ensure_future(self._check_suspects(suspects))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def _check_suspects(self, workers: list[str]) -> None:
        await asyncio.gather(*(self._confirm_gone(w, "stream") for w in workers))

    async def _confirm_gone(
        self, worker: str, notice: str, unreachable_since: float | None = None
    ) -> bool:
        """(Client loop.) Whether ``worker`` is gone (``_verdict`` says so)."""
        return await self._verdict(worker, notice, unreachable_since) is True

    async def _verdict(
        self, worker: str, notice: str, unreachable_since: float | None = None
    ) -> bool | None:
        """(Client loop.) True when ``worker`` is gone: known already, its process on
        this host has ended, its port refuses a connection now, or (with
        ``unreachable_since``, when its watch broke) its TCP address has neither
        accepted nor refused one for ``UNREACHABLE_S``; then its requests are told, with
        ``notice``. False: it is alive (its process runs, its port accepts). None: no
        verdict yet."""
        if worker in self._gone:
            return True
        info = self.workers.get(worker) or {}
        pid = info.get("worker_pid")
        ended: bool | None = None
        how = "its process ended"
        if pid is not None and info.get("process_ns") and info["process_ns"] == _own_ns():
            ended = process_ended(int(pid))
        if ended is None:
            listens = await still_listens(worker)
            ended, how = (None if listens is None else not listens), "its port refuses"
            if (
                listens is None
                and unreachable_since is not None
                and _probed(worker)
                and time.monotonic() - unreachable_since >= UNREACHABLE_S
            ):
                ended, how = True, f"unreachable for {UNREACHABLE_S:g} s"
                self._revive_later(worker, info)
        if not ended:
            return ended
        if worker not in self._gone:
            logger.info("worker %s is gone (noticed by its %s; %s)", worker, notice, how)
            with self._lock:
                # Placements avoid it until the scheduler removes it (membership).
                self._dead.add(worker)
            self._worker_gone(worker, notice)
        return True
    def _start_watches(self, workers: set[str]) -> None:
        """(Any thread.) Make sure each of ``workers`` is watched (see the module's
        docstring)."""
        if self._watching and any(w not in self._watches for w in workers):
            self._client_loop.call_soon_threadsafe(self._watch, workers)

    def _watch(self, workers: set[str]) -> None:
        for w in sorted(workers):
            if self._watching and w not in self._watches and w not in self._gone:
                self._watches[w] = asyncio.ensure_future(self._watch_worker(w))
        if self._watching and self._exit_poll is None and self._same_host_pids():
            self._exit_poll = asyncio.ensure_future(self._poll_exits())

    async def _watch_worker(self, worker: str) -> None:
        """(Client loop.) Keep a watch call open on ``worker`` until it is gone or the
        client closes: each is answered after ``WATCH_S`` and the next one made at once.
        A call that breaks (or is ``WATCH_GRACE_S`` late) while the worker is alive is
        made again after a pause (doubling while it keeps breaking, up to
        ``MAX_WATCH_PAUSE_S``); one whose worker neither accepts nor refuses a
        connection is probed every ``PROBE_TIMEOUT_S`` until it does, or until
        ``UNREACHABLE_S`` have passed (then it is gone)."""
        broken_since: float | None = None
        pause = LIVENESS_INTERVAL_S
        try:
            while worker not in self._gone and self._watching:
                if broken_since is None:
                    try:
                        await asyncio.wait_for(
                            self.client.rpc(worker).mooncake_watch(seconds=WATCH_S),
                            WATCH_S + WATCH_GRACE_S,
                        )
                        pause = LIVENESS_INTERVAL_S
                        continue
                    except Exception as e:  # broken, refused, or silent past its time
                        logger.debug("watch on %s broke: %s", worker, e)
                    broken_since = time.monotonic()
                if not self._watching:
                    return
                verdict = await self._verdict(worker, "watch", broken_since)
                if verdict is True:
                    return
                if verdict is False:  # alive: watch it again
                    broken_since = None
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, MAX_WATCH_PAUSE_S)
                else:
                    await asyncio.sleep(PROBE_TIMEOUT_S)
        finally:
            self._watches.pop(worker, None)

    def _same_host_pids(self) -> dict[str, int]:
        """Watched workers whose process this client can see in its own /proc."""
        own = _own_ns()
        out = {}
        with self._lock:
            for w in self._watches:
                info = self.workers.get(w) or {}
                if own and info.get("process_ns") == own and info.get("worker_pid") is not None:
                    out[w] = int(info["worker_pid"])
        return out

    async def _poll_exits(self) -> None:
        """(Client loop.) While requests are placed, check every ``EXIT_POLL_S`` whether a
        watched worker on this host is exiting (see the module's docstring); ends when
        no watched worker is on this host."""
        try:
            while self._watching:
                await asyncio.sleep(EXIT_POLL_S)
                if not self._placed:
                    continue
                pids = self._same_host_pids()
                if not pids:
                    return
                for w, pid in pids.items():
                    if w not in self._gone and process_ended(pid):
                        await self._confirm_gone(w, "exit")
        finally:
            self._exit_poll = None

    def _revive_later(self, worker: str, info: dict[str, Any]) -> None:
        """(Client loop.) ``worker`` is taken as gone because it was unreachable: should
        it answer again while the scheduler still has it (its link came back), it is
        known and placed on again."""

        async def revive() -> None:
            while self._watching:
                await asyncio.sleep(REVIVE_S)
                live = await self._live_workers()
                if live is not None and worker not in live:
                    return  # the scheduler removed it: a restart rejoins as a new worker
                if await still_listens(worker) is True:
                    with self._lock:
                        self._gone.discard(worker)
                        self._dead.discard(worker)
                        self.workers.setdefault(worker, info)
                    logger.info("worker %s answers again", worker)
                    return

        task = asyncio.ensure_future(revive())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _stop_watches(self) -> None:
        """(Client loop.) End every watch (the client is closing)."""
        self._watching = False
        tasks = list(self._watches.values()) + list(self._probes)
        if self._exit_poll is not None:
            tasks.append(self._exit_poll)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _live_workers(self) -> set[str] | None:
        """The mooncake workers in the cluster now (asked at most every second); None when
        the scheduler cannot be asked (Dask reconnects or fails the futures)."""
        t, live = self._live_cache
        if time.monotonic() - t > LIVENESS_INTERVAL_S:
            try:
                live = set(await self._on_client_loop(self._scheduler.mooncake_workers()))
            except Exception as e:
                logger.debug("liveness check failed: %s", e)
                return None
            self._live_cache = (time.monotonic(), live)
            with self._lock:  # gone from the scheduler too (an event may have been missed)
                self._dead &= live
        return live

    def _live_workers_sync(self) -> set[str] | None:
        """``_live_workers`` for callers outside the client's event loop (batches)."""
        live: set[str] | None = self.client.sync(self._live_workers)
        return live

    def _lost_worker(self, rid: str, live: set[str] | None) -> str | None:
        """A worker of the request that the scheduler reported gone or that is not among
        ``live`` (None: unknown), or None. Streams and batches both ask this."""
        with self._lock:
            workers = set(self._placed.get(rid, ()))
            gone = workers & self._gone
        if not gone and live is not None:
            gone = workers - live
        return min(gone) if gone else None

    def _needs_move(self, rid: str, worker: str) -> bool:
        """Whether losing ``worker`` stops the request: a task of it that has not finished
        runs (or waits to run) there, or the prefill's result that its transfer still
        needs lived there. A request whose KV already reached decode goes on as it is."""
        with self._lock:
            futures = dict(self._futures.get(rid, {}))
            where = {k: self._task_workers.get(k) for k in futures}
        if any(w == worker and futures[k].status != "finished" for k, w in where.items()):
            return True
        transfer = futures.get(task_key("transfer", rid))
        return (
            where.get(task_key("prefill", rid)) == worker
            and transfer is not None
            and transfer.status != "finished"
        )


__all__ = [
    "EXIT_POLL_S",
    "PROBE_TIMEOUT_S",
    "UNREACHABLE_S",
    "WATCH_GRACE_S",
    "WATCH_S",
    "LivenessMixin",
    "process_ended",
    "still_listens",
]
