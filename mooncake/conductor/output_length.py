"""Expected output length: what decode-load prediction assumes a new request generates.

A request only states a cap (``max_tokens``); how many tokens it really generates is
known when it finishes. The predictor keeps the output lengths of the last ``window``
finished requests and predicts E[min(L, max_tokens)] over them: the mean of the recent
distribution, capped by the request's own limit (used to project when sequences
finish); :meth:`OutputLengthPredictor.quantile` gives a high quantile, capped the same
way (used to count the KV a sequence may grow to). Before anything has finished it falls
back to the cap (the conservative guess). It also keeps the error of every prediction
it can check, so a run can say how good the decode-load prediction was.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mooncake.config import check_field as _check


@dataclass(frozen=True, slots=True)
class PredictionError:
    """How far predicted output lengths were from the real ones."""

    count: int
    """Predictions checked against a finished request."""
    mae_tokens: float
    """Mean absolute error, tokens."""
    bias_tokens: float
    """Mean of predicted − actual (positive: over-predicts), tokens."""
    relative: float
    """Sum of absolute errors / sum of actual lengths."""


class OutputLengthPredictor:
    """Online distribution of finished requests' output lengths.

    Args:
        window: finished requests remembered (the oldest is forgotten first).
        refresh_every: observations between recomputing the prefix sums.
    """

    def __init__(self, window: int = 2048, refresh_every: int = 16) -> None:
        _check(window > 0, "window", f"must be positive, got {window}")
        self.window = window
        self._recent: deque[int] = deque()
        self._sorted: list[int] = []
        self._prefix: list[int] = [0]
        """Prefix sums of ``_sorted`` as of the last refresh (``_snapshot``)."""
        self._snapshot: list[int] = []
        self._pending = 0
        self._refresh_every = refresh_every
        self._predicted: OrderedDict[str, int] = OrderedDict()
        self._n = 0
        self._abs = 0.0
        self._signed = 0.0
        self._actual = 0.0
        self._arrays: tuple[list[int], npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        """``_snapshot`` and ``_prefix`` as arrays, for the snapshot they were made of."""

    def expected(self, max_tokens: int) -> int:
        """E[min(L, max_tokens)] over the recent finished lengths (at least 1); the cap
        itself while nothing has finished."""
        snap = self._snapshot
        if not snap:
            return max_tokens
        i = bisect.bisect_left(snap, max_tokens)
        total = self._prefix[i] + (len(snap) - i) * max_tokens
        return max(1, min(max_tokens, round(total / len(snap))))

    def expected_given(self, max_tokens: int, generated: float) -> int:
        """E[min(L, max_tokens) | L > generated]: the expected total length of a
        sequence that has already generated ``generated`` tokens (one that outlived the
        mean is expected to run on); the cap when no recent length exceeds it."""
        snap = self._snapshot
        if not snap:
            return max_tokens
        j = bisect.bisect_right(snap, generated)
        if j >= len(snap) or generated >= max_tokens:
            return max_tokens
        i = max(j, bisect.bisect_left(snap, max_tokens))
        total = self._prefix[i] - self._prefix[j] + (len(snap) - i) * max_tokens
        return max(1, min(max_tokens, round(total / (len(snap) - j))))

    def expected_given_many(
        self, max_tokens: npt.NDArray[np.int64], generated: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int64]:
        """:meth:`expected_given` of many sequences at once: the same integers (the
        same comparisons, integer sums, one true division and round-half-even each)."""
        snap = self._snapshot
        if not snap:
            return max_tokens.copy()
        if self._arrays is None or self._arrays[0] is not snap:
            self._arrays = (snap, np.array(snap, dtype=np.int64), np.array(self._prefix))
        _, s, prefix = self._arrays
        n = len(snap)
        j = np.searchsorted(s, generated, side="right")
        capped = (j >= n) | (generated >= max_tokens)
        i = np.maximum(j, np.searchsorted(s, max_tokens, side="left"))
        total = prefix[i] - prefix[np.minimum(j, n)] + (n - i) * max_tokens
        mean = np.rint(total / np.where(capped, 1, n - j))
        out = np.maximum(1, np.minimum(max_tokens, mean.astype(np.int64)))
        return np.where(capped, max_tokens, out)

    def quantile(self, max_tokens: int, q: float) -> int:
        """min(max_tokens, the ``q`` quantile of the recent finished lengths); the cap
        itself while nothing has finished."""
        snap = self._snapshot
        if not snap:
            return max_tokens
        i = min(len(snap) - 1, max(0, math.ceil(q * len(snap)) - 1))
        return max(1, min(max_tokens, snap[i]))

    def track(self, request_id: str, guess: int) -> None:
        """Remember the output length assumed for a placed request, so :meth:`observe`
        can score it."""
        self._predicted[request_id] = guess
        if len(self._predicted) > 16 * self.window:  # requests that never report
            self._predicted.popitem(last=False)

    def observe(self, request_id: str | None, output_tokens: int) -> None:
        """A request finished with ``output_tokens`` generated."""
        if output_tokens <= 0:
            return
        guess = self._predicted.pop(request_id, None) if request_id is not None else None
        if guess is not None:
            self._n += 1
            self._abs += abs(guess - output_tokens)
            self._signed += guess - output_tokens
            self._actual += output_tokens
        self._recent.append(output_tokens)
        bisect.insort(self._sorted, output_tokens)
        if len(self._recent) > self.window:
            old = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._pending += 1
        if self._pending >= self._refresh_every or not self._snapshot:
            self._pending = 0
            self._snapshot = list(self._sorted)
            self._prefix = [0, *itertools.accumulate(self._snapshot)]

    def error(self) -> PredictionError:
        """Errors of the predictions checked so far."""
        n = self._n
        return PredictionError(
            n,
            self._abs / n if n else 0.0,
            self._signed / n if n else 0.0,
            self._abs / self._actual if self._actual else 0.0,
        )


__all__ = ["OutputLengthPredictor", "PredictionError"]
