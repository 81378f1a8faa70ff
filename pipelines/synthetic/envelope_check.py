"""The envelope check: recover an audio-video offset without a trained model.

Speech is loud where the mouth is open (vowels) and quiet where it is closed (stops, pauses), so the mouth
opening seen on the frames correlates with the loudness of the audio around the same instant. Correlating the
two over candidate lags and taking the best one recovers the offset. It is crude on real faces but exact enough
on the synthetic corpus to prove its ground truth, and later to prove that preprocessing keeps lips and audio
aligned.

Lags are in frames of the expert's 25 fps clock; a positive lag means the audio is late.
"""

from __future__ import annotations

import numpy as np

from pipelines.core.clock import EXPERT_CLOCK



def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over interocular distance, per frame, from iBUG-68 landmarks [N, 68, 2] (NaN stays NaN)."""
    gap = np.linalg.norm(landmarks[:, 66] - landmarks[:, 62], axis=-1)
    eyes = np.linalg.norm(landmarks[:, 45] - landmarks[:, 36], axis=-1)
    return gap / eyes


def loudness(samples: np.ndarray, sample_rate: int, times: np.ndarray, window_s: float = 0.08,
             floor_db: float = -40.0) -> np.ndarray:
    """Power in dB of mono audio in a window centred on each of `times` (seconds).

    Floored at `floor_db` below the loudest sample, so silence reads as one level rather than as whatever
    the noise floor happens to be; outside the audio counts as silence.
    """
    energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    half = window_s / 2
    begin = np.clip(np.round((times - half) * sample_rate).astype(int), 0, len(samples))
    end = np.clip(np.round((times + half) * sample_rate).astype(int), 0, len(samples))
    power = (energy[end] - energy[begin]) / max(int(window_s * sample_rate), 1)
    peak = max(float(np.max(samples.astype(np.float64) ** 2, initial=0.0)), 1e-12)
    return 10 * np.log10(np.maximum(power, peak * 10 ** (floor_db / 10)))


def detrend(values: np.ndarray, times: np.ndarray, width_s: float = 0.6) -> np.ndarray:
    """Subtract a moving average over `width_s` seconds (by time, so variable frame rates are fine).

    What is left is the syllable-rate movement; without this, the slow alternation of speech and pauses
    dominates the correlation and blurs its peak over several frames.
    """
    sums = np.concatenate([[0.0], np.cumsum(values)])
    low = np.searchsorted(times, times - width_s / 2, side="left")
    high = np.searchsorted(times, times + width_s / 2, side="right")
    return values - (sums[high] - sums[low]) / (high - low)


def speech_band(samples: np.ndarray, sample_rate: int, low_hz: float = 1000.0, high_hz: float = 4000.0) -> np.ndarray:
    """Keep the band where speech formants and fricatives live and background music mostly does not."""
    from scipy.signal import butter, sosfiltfilt

    high_hz = min(high_hz, 0.45 * sample_rate)
    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, samples.astype(np.float64))


def lag_correlations(opening: np.ndarray, frame_times: np.ndarray, samples: np.ndarray, sample_rate: int,
                     max_lag: int = 15) -> dict[int, float]:
    """Agreement of mouth opening with speech loudness `lag` frames (of 40 ms) later, in [-1, 1].

    The mean of two Pearson correlations: of the raw signals, which locates speech against silence but is
    blunt within a few frames, and of the detrended ones, which is sharp at the syllable scale but, alone, can
    match one sentence's rhythm against another's. Together they are both sharp and unambiguous.
    """
    valid = np.isfinite(opening)
    band = speech_band(samples, sample_rate)
    return agreement_curve(opening[valid], lambda times: loudness(band, sample_rate, times), frame_times[valid],
                           max_lag)


def estimate_offset(opening: np.ndarray, frame_times: np.ndarray, samples: np.ndarray, sample_rate: int,
                    max_lag: int = 15) -> tuple[int, dict[int, float]]:
    correlations = lag_correlations(opening, frame_times, samples, sample_rate, max_lag)
    return max(correlations, key=correlations.get), correlations


def mel_loudness(mel: np.ndarray, mel_fps: float, times: np.ndarray, low_bin: int = 26, high_bin: int = 63,
                 max_abs: float = 4.0, min_level_db: float = -100.0, window_s: float = 0.08,
                 floor_db: float = -40.0) -> np.ndarray:
    """`loudness` computed from a stored log-mel [n_mels, M] instead of the waveform.

    The mel is undone to power in the bins that cover 1-4 kHz with the expert's mel settings (the band of
    `speech_band`), averaged
    over the same window and floored the same way; times are seconds from the mel's first column.
    """
    decibels = (mel[low_bin:high_bin] + max_abs) / (2 * max_abs) * -min_level_db + min_level_db
    power = (10 ** (decibels / 10)).mean(axis=0)
    energy = np.concatenate([[0.0], np.cumsum(power)])
    half = window_s / 2
    begin = np.clip(np.round((times - half) * mel_fps).astype(int), 0, len(power))
    end = np.clip(np.round((times + half) * mel_fps).astype(int), 0, len(power))
    mean_power = (energy[end] - energy[begin]) / max(int(round(window_s * mel_fps)), 1)
    level = 10 * np.log10(np.maximum(mean_power, power.max() * 10 ** (floor_db / 10)))
    # A segment's mel says nothing about audio beyond its ends: NaN there, which `agreement_curve` leaves out.
    return np.where((times >= 0) & (times < len(power) / mel_fps), level, np.nan)


def mouth_opening_from_crops(faces: np.ndarray) -> np.ndarray:
    """Mouth opening on aligned crops [T, S, S, 3]: the share of dark pixels in the mouth box.

    Alignment puts the mouth at a fixed place in every crop, so no landmarks are needed; the open mouth shows
    its dark cavity, the closed one shows lips and skin.
    """
    size = faces.shape[1]
    grey = faces.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    mouth = grey[:, int(0.55 * size):int(0.8 * size), int(0.35 * size):int(0.65 * size)]
    cheek = np.median(grey[:, int(0.45 * size):int(0.58 * size), int(0.18 * size):int(0.32 * size)], axis=(1, 2))
    return (mouth < 0.45 * cheek[:, None, None]).mean(axis=(1, 2))


def agreement_curve(opening: np.ndarray, envelope_at, frame_times: np.ndarray, max_lag: int) -> dict[int, float]:
    """The raw + detrended correlation of `lag_correlations`, for any envelope source `envelope_at(times)`."""
    result = {}
    for lag in range(-max_lag, max_lag + 1):
        envelope = envelope_at(frame_times + lag / EXPERT_CLOCK.fps)
        known = np.isfinite(envelope)  # only where both signals exist
        mouth, sound, times = opening[known], envelope[known], frame_times[known]
        raw = np.corrcoef(mouth, sound)[0, 1]
        fine = np.corrcoef(detrend(mouth, times), detrend(sound, times))[0, 1]
        result[lag] = float((raw + fine) / 2)
    return result
