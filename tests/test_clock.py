"""The expert's clock: the one frame -> mel-column formula, and the rates derived from it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pipelines.core.clock import EXPERT_CLOCK, Clock


def test_default_clock_is_the_wav2lip_recipe() -> None:
    clock = EXPERT_CLOCK
    assert (clock.fps, clock.sample_rate, clock.mel_fps, clock.window_frames) == (25, 16000, 80.0, 5)
    assert (clock.samples_per_frame, clock.mel_window, clock.aligned_frames) == (640, 16, 5)
    np.testing.assert_array_equal(clock.mel_column(np.array([0, 5, 10, 25])), [0, 16, 32, 80])
    assert isinstance(clock.mel_column(12), int) and clock.mel_column(12) == 38  # 38.4


@pytest.mark.parametrize("clock", [Clock(), Clock(fps=30, sample_rate=24000, hop_length=300), Clock(fps=25, hop_length=160),
                                   Clock(window_frames=7), Clock(fps=50, sample_rate=16000, hop_length=128)])
def test_mel_column_is_round_half_up_of_the_exact_ratio(clock: Clock) -> None:
    frames = np.arange(0, 5000)
    exact = [Fraction(int(f) * clock.sample_rate, clock.hop_length * clock.fps) for f in frames]
    expected = [int(x + Fraction(1, 2)) for x in exact]  # floor(x + 1/2): halves go up
    np.testing.assert_array_equal(clock.mel_column(frames), expected)
    assert [clock.mel_column(int(f)) for f in frames[:50]] == expected[:50]


def test_halves_round_up() -> None:
    # 1 frame at 50 fps is 2.5 columns at 125 columns/s: the case where round-half-even would say 2.
    clock = Clock(fps=50, sample_rate=16000, hop_length=128)
    assert clock.mel_fps == 125.0 and clock.mel_column(1) == 3


def test_seven_frame_window_spans_the_rounded_columns() -> None:
    assert Clock(window_frames=7).mel_window == 22  # 22.4


def test_aligned_frames_are_where_columns_start_on_frames() -> None:
    for clock in (Clock(), Clock(fps=30, sample_rate=24000, hop_length=300), Clock(fps=25, hop_length=160)):
        period = clock.aligned_frames
        on_grid = [f for f in range(200) if (f * clock.samples_per_frame) % clock.hop_length == 0]
        assert on_grid == list(range(0, 200, period))


def test_rejects_clocks_that_would_drift() -> None:
    with pytest.raises(ValueError, match="whole number of samples per frame"):
        Clock(fps=24, sample_rate=44100)  # 1837.5 samples per frame
    with pytest.raises(ValueError, match="positive integer"):
        Clock(fps=0)
    with pytest.raises(ValueError, match="positive integer"):
        Clock(fps=29.97)
