"""Expected output length from the online distribution of finished requests."""

from __future__ import annotations

import pytest

from mooncake.conductor import OutputLengthPredictor


def test_cold_start_predicts_the_cap() -> None:
    """Nothing finished yet: the prediction is the request's max_tokens."""
    assert OutputLengthPredictor().expected(512) == 512


def test_expected_is_capped_mean() -> None:
    """Finished lengths 10, 20, 30, 1000: uncapped mean 265; with max_tokens 25 each
    contributes min(L, 25) → (10 + 20 + 25 + 25)/4 = 20; a cap of 5 gives 5."""
    p = OutputLengthPredictor(refresh_every=1)
    for n in (10, 20, 30, 1000):
        p.observe(None, n)
    assert p.expected(10_000) == 265
    assert p.expected(25) == 20
    assert p.expected(5) == 5


def test_window_forgets_oldest() -> None:
    """Window 3: after 1000, 10, 10, 10 only the three 10s remain."""
    p = OutputLengthPredictor(window=3, refresh_every=1)
    for n in (1000, 10, 10, 10):
        p.observe(None, n)
    assert p.expected(5000) == 10


def test_error_scores_tracked_predictions() -> None:
    """Two tracked guesses (100 for a request that made 50, 10 for one that made 30):
    MAE 35, bias (50 − 20)/2 = +15, relative 70/80; an untracked id is not scored."""
    p = OutputLengthPredictor()
    p.track("a", 100)
    p.track("b", 10)
    p.observe("a", 50)
    p.observe("b", 30)
    p.observe("zzz", 7)
    e = p.error()
    assert (e.count, e.mae_tokens, e.bias_tokens) == (2, 35.0, 15.0)
    assert e.relative == pytest.approx(70 / 80)


def test_window_must_be_positive() -> None:
    """window=0 is refused, naming the field."""
    with pytest.raises(ValueError, match="window"):
        OutputLengthPredictor(window=0)


def test_expected_given_generated_and_quantile() -> None:
    """Lengths 10, 20, 30, 1000. A sequence that has generated 25 tokens is one of the
    30 or the 1000: (30 + min(1000, 500))/2 = 265 with cap 500; past every recent
    length (or the cap) it is expected to run to the cap. The 0.75 quantile is 30, the
    0.9 quantile 1000 (capped at 500)."""
    p = OutputLengthPredictor(refresh_every=1)
    for n in (10, 20, 30, 1000):
        p.observe(None, n)
    assert p.expected_given(500, 25) == 265
    assert p.expected_given(500, 0) == round((10 + 20 + 30 + 500) / 4)
    assert p.expected_given(5000, 1000) == 5000 and p.expected_given(500, 600) == 500
    assert p.quantile(5000, 0.75) == 30 and p.quantile(500, 0.9) == 500
