"""Load tables: every instance's load as numpy arrays, so a decision over hundreds of
instances is a few vector operations instead of a Python loop per instance.

A table mirrors the :class:`~mooncake.conductor.state.PrefillLoad` or
:class:`~mooncake.conductor.state.DecodeLoad` objects registered with it, in
registration order (the order the Conductor's dicts iterate, which decides ties): each
load tells its table after every change (``LoadListener``), and the table rewrites that
instance's row. The arrays hold exactly the numbers the loads hold, so vector
arithmetic over them gives the same floats, bit for bit, as the per-instance Python
code it replaces (IEEE-754 double operations, done in the same order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from mooncake.conductor.state import DecodeLoad, DecodeSeq, PrefillLoad

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_G = TypeVar("_G", bound=np.generic)
_L = TypeVar("_L", PrefillLoad, DecodeLoad)
BoolArray = npt.NDArray[np.bool_]
#: (caps, tokens generated) of running sequences -> their expected total output lengths
#: (:meth:`~mooncake.conductor.output_length.OutputLengthPredictor.expected_given_many`).
TotalLengths = Callable[[IntArray, FloatArray], IntArray]


class _Table(Generic[_L]):
    """Names, slots, loads and per-slot arrays shared by both tables.

    Each table names its per-slot arrays in ``_array_names``; growing and removing a
    slot treat them alike, so a new array is one more name, not one more line in each
    place that moves rows.
    """

    _array_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.names: list[str] = []
        """Instance names in registration order; slot i is ``names[i]``."""
        self.slot_of: dict[str, int] = {}
        self.loads: list[_L] = []
        """The registered loads; slot i mirrors ``loads[i]``."""
        self._capacity = 0

    def __len__(self) -> int:
        return len(self.names)

    def _arrays(self) -> list[npt.NDArray[np.generic]]:
        return [getattr(self, a) for a in self._array_names]

    def _grow(self) -> None:
        for a in self._array_names:
            setattr(self, a, _resized(getattr(self, a), self._capacity))

    def _add_name(self, name: str) -> int:
        if name in self.slot_of:
            raise ValueError(f"worker: {name!r} is already in the table")
        if len(self.names) == self._capacity:
            self._capacity = max(8, 2 * self._capacity)
            self._grow()
        slot = len(self.names)
        self.names.append(name)
        self.slot_of[name] = slot
        return slot

    def remove(self, name: str) -> None:
        """Forget an instance; later instances move up one slot (rare: membership)."""
        slot = self.slot_of.pop(name, None)
        if slot is None:
            return
        load = self.loads.pop(slot)
        load.listener, load.slot = None, -1
        del self.names[slot]
        n = len(self.names)
        for a in self._arrays():
            a[slot:n] = a[slot + 1 : n + 1]
        for i in range(slot, n):
            self.slot_of[self.names[i]] = i
            self.loads[i].slot = i
        self._slot_removed(name, slot)

    def _slot_removed(self, name: str, slot: int) -> None:
        """What else a table keeps per slot, after ``name`` left ``slot``."""


def _resized(a: npt.NDArray[_G], n: int) -> npt.NDArray[_G]:
    out: npt.NDArray[_G] = np.zeros(n, dtype=a.dtype)
    out[: len(a)] = a
    return out


class PrefillTable(_Table[PrefillLoad]):
    """Prefill instances' queues as arrays.

    Per slot: ``queued_s`` and, for the usual single running job, its start ``t0`` and
    estimate ``est``; an idle instance has ``t0 = -inf`` so that its running part
    ``max(0, est - (now - t0))`` is exactly 0. Instances running several jobs at once
    (not the prefill engine's case, but the load allows it) are listed in ``multi``
    and computed by :meth:`PrefillLoad.queue_time` itself.
    """

    _array_names = ("queued_s", "t0", "est")

    def __init__(self) -> None:
        super().__init__()
        self.queued_s: FloatArray = np.zeros(0)
        self.t0: FloatArray = np.zeros(0)
        self.est: FloatArray = np.zeros(0)
        self.multi: set[int] = set()

    def add(self, name: str, load: PrefillLoad) -> None:
        """Register ``load`` (the instance ``name``) at the end of the order."""
        slot = self._add_name(name)
        self.loads.append(load)
        load.listener, load.slot = self, slot
        self.load_changed(slot)

    def _slot_removed(self, name: str, slot: int) -> None:
        self.multi = {s - (s > slot) for s in self.multi if s != slot}

    def load_changed(self, slot: int) -> None:
        load = self.loads[slot]
        self.queued_s[slot] = load.queued_s
        self.multi.discard(slot)
        if not load.running:
            self.t0[slot], self.est[slot] = -np.inf, 0.0
        elif len(load.running) == 1:
            self.t0[slot], self.est[slot] = next(iter(load.running.values()))
        else:
            self.multi.add(slot)

    def queue_times(self, now: float) -> FloatArray:
        """Every instance's :meth:`PrefillLoad.queue_time` at ``now``, same floats."""
        n = len(self.names)
        # queue_time: max(0.0, queued_s) + sum(max(0.0, est - (now - t0))), the sum of
        # one term being that term (0 + x == x); an idle row adds exactly 0.0.
        q: FloatArray = np.maximum(0.0, self.queued_s[:n]) + np.maximum(
            0.0, self.est[:n] - (now - self.t0[:n])
        )
        for slot in self.multi:
            q[slot] = self.loads[slot].queue_time(now)
        return q


class _Seqs:
    """The sequences of every decode instance, one row each in flat arrays (rows of
    sequences that left are reused), keyed by (instance name, request id) as the loads'
    dicts are, per instance."""

    def __init__(self) -> None:
        self.row_of: dict[tuple[str, str], int] = {}
        self.key_of: list[tuple[str, str] | None] = []
        self.free: list[int] = []
        self.n = 0
        """Rows ever used (the arrays' live prefix)."""
        self.inst: IntArray = np.zeros(0, dtype=np.int64)
        self.at: FloatArray = np.zeros(0)
        self.out: IntArray = np.zeros(0, dtype=np.int64)
        self.max_tokens: IntArray = np.zeros(0, dtype=np.int64)
        self.kv: IntArray = np.zeros(0, dtype=np.int64)
        self.live: BoolArray = np.zeros(0, dtype=np.bool_)

    def add(self, key: tuple[str, str], slot: int, seq: DecodeSeq) -> None:
        row = self.row_of.get(key)  # the same request again: overwritten, as in a dict
        if row is None:
            if self.free:
                row = self.free.pop()
            else:
                row = self.n
                self.n += 1
                if row == len(self.live):
                    size = max(64, 2 * row)
                    self.inst = _resized(self.inst, size)
                    self.at = _resized(self.at, size)
                    self.out = _resized(self.out, size)
                    self.max_tokens = _resized(self.max_tokens, size)
                    self.kv = _resized(self.kv, size)
                    self.live = _resized(self.live, size)
                    self.key_of += [None] * (size - len(self.key_of))
            self.row_of[key] = row
            self.key_of[row] = key
        self.inst[row] = slot
        self.at[row] = seq.at
        self.out[row] = seq.output_len
        self.max_tokens[row] = seq.max_tokens
        self.kv[row] = seq.kv_tokens
        self.live[row] = True

    def remove(self, key: tuple[str, str]) -> None:
        row = self.row_of.pop(key, None)
        if row is not None:
            self.live[row] = False
            self.key_of[row] = None
            self.free.append(row)

    def drop_instance(self, name: str, slot: int) -> None:
        """Forget an instance's rows; later instances' rows move up one slot."""
        n = self.n
        for row in np.flatnonzero(self.live[:n] & (self.inst[:n] == slot)).tolist():
            key = self.key_of[row]
            if key is not None and key[0] == name:
                self.remove(key)
        self.inst[:n][self.inst[:n] > slot] -= 1


class DecodeTable(_Table[DecodeLoad]):
    """Decode instances' batch and KV counts as arrays (``running`` and ``incoming``
    apart, so both the current and the committed view are two vector operations)."""

    _array_names = ("running", "incoming", "kv_running", "kv_incoming", "capacity")

    def __init__(self) -> None:
        super().__init__()
        self.running: IntArray = np.zeros(0, dtype=np.int64)
        self.incoming: IntArray = np.zeros(0, dtype=np.int64)
        self.kv_running: IntArray = np.zeros(0, dtype=np.int64)
        self.kv_incoming: IntArray = np.zeros(0, dtype=np.int64)
        self.capacity: IntArray = np.zeros(0, dtype=np.int64)
        self.running_seqs = _Seqs()
        self.incoming_seqs = _Seqs()

    def add(self, name: str, load: DecodeLoad) -> None:
        """Register ``load`` (the instance ``name``) at the end of the order."""
        slot = self._add_name(name)
        self.loads.append(load)
        load.listener, load.slot = self, slot
        self.load_changed(slot)
        for rid, seq in load.running.items():
            self.seq_added(slot, True, rid, seq)
        for rid, seq in load.incoming.items():
            self.seq_added(slot, False, rid, seq)

    def seq_added(self, slot: int, running: bool, rid: str, seq: DecodeSeq) -> None:
        seqs = self.running_seqs if running else self.incoming_seqs
        seqs.add((self.names[slot], rid), slot, seq)

    def seq_removed(self, slot: int, running: bool, rid: str) -> None:
        seqs = self.running_seqs if running else self.incoming_seqs
        seqs.remove((self.names[slot], rid))

    def _slot_removed(self, name: str, slot: int) -> None:
        self.running_seqs.drop_instance(name, slot)
        self.incoming_seqs.drop_instance(name, slot)

    def load_changed(self, slot: int) -> None:
        load = self.loads[slot]
        self.running[slot] = len(load.running)
        self.incoming[slot] = len(load.incoming)
        self.kv_running[slot] = load.kv_running
        self.kv_incoming[slot] = load.kv_incoming
        self.capacity[slot] = load.kv_capacity_tokens

    def view(self, committed: bool) -> tuple[IntArray, IntArray]:
        """(batch, KV tokens) per instance: running only (``current``), or running plus
        placed (``committed``), as :func:`~mooncake.conductor.admission.decode_view`."""
        n = len(self.names)
        if committed:
            return (
                self.running[:n] + self.incoming[:n],
                self.kv_running[:n] + self.kv_incoming[:n],
            )
        return self.running[:n], self.kv_running[:n]

    def token_times(
        self, fixed_s: float | None, step_times: Callable[[IntArray, IntArray], FloatArray]
    ) -> FloatArray:
        """Every instance's t_d as :meth:`Conductor.token_time` gives it: ``fixed_s``, or
        the step time of its running batch (at least 1) over its running KV."""
        n = len(self.names)
        if fixed_s is not None:
            return np.full(n, fixed_s)
        return step_times(np.maximum(1, self.running[:n]), self.kv_running[:n])

    def projected(
        self, eta: float, t_d: FloatArray, now: float, total: TotalLengths | None
    ) -> tuple[IntArray, IntArray]:
        """(batch, KV tokens) per instance under the ``projected`` view, as
        :func:`~mooncake.conductor.admission.decode_view` computes it sequence by
        sequence: a running sequence still counts if ``at + (out - 1) * t_d > eta``
        (``out`` re-estimated from what it generated by ``now`` when ``total`` is given),
        a placed one if it arrives by ``eta`` and ``max(at, now) + (out - 1) * t_d > eta``;
        the same floats, the same comparisons."""
        n = len(self.names)
        r = self.running_seqs
        m = r.n
        live, inst, at = r.live[:m], r.inst[:m], r.at[:m]
        td = t_d[inst]
        out = r.out[:m]
        if total is not None:
            use = live & (r.max_tokens[:m] > 0) & (td > 0)
            if use.any():
                out = out.copy()
                out[use] = total(r.max_tokens[:m][use], (now - at[use]) / td[use])
        keep = live & (at + (out - 1) * td > eta)
        i = r.inst[:m][keep]
        batch = np.bincount(i, minlength=n)
        kv = np.bincount(i, weights=r.kv[:m][keep], minlength=n)
        q = self.incoming_seqs
        k = q.n
        arrived = q.live[:k] & (q.at[:k] <= eta)
        rows = np.flatnonzero(arrived)  # rows of freed slots may name a removed instance
        ends = np.maximum(q.at[rows], now) + (q.out[rows] - 1) * t_d[q.inst[rows]]
        arrived[rows[ends <= eta]] = False
        j = q.inst[:k][arrived]
        batch = batch + np.bincount(j, minlength=n)
        kv = kv + np.bincount(j, weights=q.kv[:k][arrived], minlength=n)
        # KV sums are integers far below 2**53: exact in float64.
        return batch.astype(np.int64), kv.astype(np.int64)


__all__ = ["DecodeTable", "PrefillTable"]
