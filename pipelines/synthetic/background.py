"""Background sound under the speech: looped music or room noise.

The music repeats a short bar, the way backing tracks do; that repetition is exactly what REPET-SIM voice
separation exploits, so the separation stage is tested on the kind of background it is meant to remove.
"""

from __future__ import annotations

import numpy as np

BACKGROUNDS = ("none", "music", "noise")


def music(rng: np.random.Generator, count: int, sample_rate: int) -> np.ndarray:
    """A looped bar of chords and a kick drum, float32 mono, peak 1."""
    bar_s = rng.uniform(1.6, 2.4)
    bar = np.zeros(int(bar_s * sample_rate), np.float32)
    t = np.arange(len(bar)) / sample_rate
    root = rng.uniform(110, 220)
    for step, semitones in enumerate(rng.choice([0, 3, 4, 5, 7, 9], size=4)):
        begin, end = step * len(bar) // 4, (step + 1) * len(bar) // 4
        chord = root * 2 ** (np.array([0, 4, 7]) / 12 + semitones / 12)
        envelope = np.exp(-3 * (t[begin:end] - t[begin]))
        for pitch in chord:
            bar[begin:end] += envelope * np.sin(2 * np.pi * pitch * t[begin:end])
    kick = np.exp(-30 * t[: sample_rate // 8]) * np.sin(2 * np.pi * 60 * t[: sample_rate // 8])
    for beat in range(4):
        start = beat * len(bar) // 4
        bar[start:start + len(kick)] += 2 * kick[: len(bar) - start]
    loop = np.tile(bar, count // len(bar) + 1)[:count]
    return (loop / max(np.abs(loop).max(), 1e-6)).astype(np.float32)


def noise(rng: np.random.Generator, count: int, sample_rate: int) -> np.ndarray:
    """Pink-ish room noise (white noise with a 1/f slope), float32 mono, peak 1."""
    spectrum = np.fft.rfft(rng.standard_normal(count))
    frequencies = np.fft.rfftfreq(count, 1 / sample_rate)
    spectrum /= np.sqrt(np.maximum(frequencies, 20.0))
    signal = np.fft.irfft(spectrum, count)
    return (signal / max(np.abs(signal).max(), 1e-6)).astype(np.float32)


def mix(speech: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """Speech plus background (same length) scaled to the given speech-to-background power ratio."""
    speech_power = np.mean(speech ** 2)
    background_power = max(np.mean(background ** 2), 1e-12)
    gain = np.sqrt(speech_power / background_power / 10 ** (snr_db / 10))
    return speech + gain * background
