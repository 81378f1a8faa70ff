"""Audio stages of preprocessing: mono 16 kHz audio, voice separation, and the expert's log-mel spectrogram.

Rates and the frame -> mel-column formula are the expert's clock (`pipelines.core.clock`), which
:class:`AudioConfig` carries; nothing here computes an index from a literal rate.

Dimension legend: ``C`` channels, ``N`` samples, ``M`` mel bins (``n_mels``), ``T`` mel frames.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import soxr

from pipelines.core.clock import EXPERT_CLOCK, Clock

# librosa, SciPy's signal module and scikit-learn load in the functions that use them: a decoder, which only
# resamples, then starts without them (1.9 s of imports per actor, bench/README.md, GPU preprocessing).


@dataclass(frozen=True)
class AudioConfig:
    """The expert's audio settings (Wav2Lip / SyncNet recipe) and the voice-separation settings."""

    clock: Clock = field(default=EXPERT_CLOCK)  # sample rate, mel hop and video frame rate
    n_fft: int = 800
    win_length: int = 800
    n_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    min_level_db: float = -100.0
    ref_level_db: float = 20.0
    max_abs_value: float = 4.0
    separation_width_s: float = 2.0  # REPET-SIM: neighbours must be at least this far apart in time
    separation_margin: float = 10.0  # foreground soft-mask margin
    separation_power: float = 2.0

    def __post_init__(self) -> None:
        for name in ("n_fft", "win_length", "n_mels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"AudioConfig.{name} must be positive, got {getattr(self, name)}")
        if self.win_length > self.n_fft:
            raise ValueError(f"AudioConfig.win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if not 0 <= self.fmin < self.fmax <= self.clock.sample_rate / 2:
            raise ValueError(f"AudioConfig needs 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, "
                             f"fmax={self.fmax}, sample_rate={self.clock.sample_rate}")
        if self.min_level_db >= 0 or self.max_abs_value <= 0:
            raise ValueError("AudioConfig needs min_level_db < 0 and max_abs_value > 0")
        if self.separation_width_s <= 0:
            raise ValueError(f"AudioConfig.separation_width_s must be positive, got {self.separation_width_s}")


# --- Format ----------------------------------------------------------------------------------------------


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average ``[C, N]`` float audio to ``[N]`` float32; a 1-D array is taken as already mono."""
    audio = np.asarray(audio)
    if not np.issubdtype(audio.dtype, np.floating):
        # Integer PCM would need a full-scale factor; guessing it wrong would shift every level in the mel.
        raise TypeError(f"to_mono expects float audio in [-1, 1], got dtype {audio.dtype}")
    if audio.ndim == 1:
        return audio.astype(np.float32)
    if audio.ndim != 2:
        raise ValueError(f"to_mono expects [channels, samples], got shape {audio.shape}")
    return audio.mean(axis=0, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample mono audio with soxr (high quality, linear phase, delay compensated): float32 out.

    The output has ``ceil(N * target / rate)`` samples and sample ``i`` still plays at ``i / target`` s.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if rate <= 0 or target <= 0:
        raise ValueError(f"resample needs positive rates, got {rate} -> {target}")
    if rate == target:
        return samples.copy()
    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


def prepare(audio: np.ndarray, rate: int, config: AudioConfig) -> np.ndarray:
    """``[C, N]`` audio at ``rate`` -> mono float32 at the clock's sample rate, sample 0 still at time 0."""
    return resample(_finite(to_mono(audio)), rate, config.clock.sample_rate)


# Blocks handed to prepare_stream are gathered to about this long before each call into soxr: a decoded frame
# (1024 samples of AAC) per call would cost more in calls than in resampling.
_STREAM_PIECE_S = 1.0


def prepare_stream(blocks: Iterable[np.ndarray], rate: int, config: AudioConfig) -> Iterator[np.ndarray]:
    """`prepare` for audio that arrives as ``[C, n]`` blocks: mono float32 pieces at the clock's rate whose
    concatenation equals ``prepare`` of the concatenated blocks sample for sample (soxr's streaming resampler
    carries its filter state from piece to piece; tests/test_long_audio.py), with about a second in memory."""
    target = config.clock.sample_rate
    if rate <= 0 or target <= 0:
        raise ValueError(f"resample needs positive rates, got {rate} -> {target}")
    resampler = None if rate == target else soxr.ResampleStream(rate, target, 1, dtype="float32", quality="HQ")
    for piece in _gathered(blocks, max(1, round(_STREAM_PIECE_S * rate))):
        mono = _finite(to_mono(piece))
        yield mono if resampler is None else resampler.resample_chunk(mono)
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)  # the filter's tail


def _gathered(blocks: Iterable[np.ndarray], samples: int) -> Iterator[np.ndarray]:
    """``[C, n]`` blocks joined into pieces of at least ``samples`` (the last may be shorter)."""
    held, count = [], 0
    for block in blocks:
        held.append(block)
        count += block.shape[-1]
        if count >= samples:
            yield np.concatenate(held, axis=-1)
            held, count = [], 0
    if held:
        yield np.concatenate(held, axis=-1)


def _finite(mono: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(mono)):
        raise ValueError("prepare: audio contains NaN or infinite samples")
    return mono


def compile_kernels(config: AudioConfig) -> None:
    """Separate and log-mel a second of noise, so that librosa's numba kernels are compiled and left in numba's
    on-disk cache (beside librosa, or in the user's cache folder): see `start_compiling_kernels`."""
    noise = np.random.default_rng(0).standard_normal(config.clock.sample_rate).astype(np.float32)
    separate_voice(noise, config)
    segment_mel(noise, 0, config.clock.window_frames, config)


def start_compiling_kernels() -> subprocess.Popen:
    """`compile_kernels` in a process of its own, started now: wait for it before the workers that need the
    kernels start, and they load them from the cache.

    Each sample writer otherwise compiled its own on a first run: 21 CPU-s apiece on the H200 machine, a third
    of the CPU time of a 30-minute corpus with 16 writers (bench/README.md). A process rather than a thread of
    the caller: in a thread of the test process, numpy's OpenBLAS once spun forever in its first matrix product.
    Workers on other machines of a cluster still compile their own, once per machine."""
    code = "from pipelines.audio import AudioConfig, compile_kernels; compile_kernels(AudioConfig())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


# A first compile took 22-24 s (2-core CPU, H200 machine); later runs load the kernels in 2-4 s.
KERNEL_COMPILE_TIMEOUT_S = 120


def wait_for_kernels(compiling: subprocess.Popen) -> None:
    """Wait for `start_compiling_kernels`' process, at most KERNEL_COMPILE_TIMEOUT_S: one still running then is
    stopped, and the writers compile their own."""
    try:
        compiling.wait(timeout=KERNEL_COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        compiling.kill()
        compiling.wait()


# --- Voice separation (REPET-SIM) --------------------------------------------------------------------------

# Smallest nearest-neighbour exclusion width librosa accepts; a clip that cannot fit it is left as it is.
_MIN_SEPARATION_WIDTH = 1


def separate_voice(samples: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Keep the voice, suppress the repeating background (REPET-SIM, librosa's vocal-separation example).

    The background is estimated per frame as the median of the most similar frames (cosine) at least
    ``separation_width_s`` away; a soft mask keeps what stands out above it. For clips shorter than about
    twice that width the minimum distance shrinks to fit (librosa requires ``width < (frames - 1) // 2``),
    so short clips are still separated, less well. A clip under 4 hops (0.05 s by default), or pure
    silence, is returned unchanged. Output: float32, same length as the input.
    """
    import librosa

    samples = np.asarray(samples, dtype=np.float32)
    width = _separation_width(1 + len(samples) // config.clock.hop_length, config)
    if width < _MIN_SEPARATION_WIDTH or not samples.any():
        return samples.copy()
    stft = _stft(samples, config)
    magnitude = np.abs(stft)
    background = np.minimum(magnitude, repeating_background(magnitude, width))
    mask = librosa.util.softmask(magnitude - background, config.separation_margin * background,
                                 power=config.separation_power)
    voice = librosa.istft(mask * stft, hop_length=config.clock.hop_length, win_length=config.win_length,
                          n_fft=config.n_fft, length=len(samples))
    return voice.astype(np.float32)


def repeating_background(magnitude: np.ndarray, width: int) -> np.ndarray:
    """``[F, T]`` magnitudes -> ``[F, T]``: each frame's repeating part, the per-bin median of its neighbours, as
    ``librosa.decompose.nn_filter(magnitude, aggregate=np.median, metric="cosine", width=width)`` finds them:
    of the ``k + 2 width`` frames nearest to it (cosine; sklearn's search, as librosa's), those at least ``width``
    frames away, the ``k`` earliest of them, ``k = 2 ceil(sqrt(T - 2 width + 1))``.

    librosa edits a sparse matrix entry by entry to pick them, which was most of the sample stage's CPU time
    (`bench/README.md`); here the same picks are array operations and the medians one sort per block of frames.
    The earliest rather than the nearest: that is what librosa keeps (its links all weigh 1, so its sort by
    weight keeps their index order), and it separates better, the median then being over a broad set of similar
    frames rather than the few that share the voice too (the nearest k: 1.2-1.7 dB better than the mixture in
    tests/test_audio.py, against 2.8-5.1 dB). The search is sklearn's own so that ties (digital silence is
    equally far from every frame) fall as they fall in librosa.
    """
    from sklearn.neighbors import NearestNeighbors

    frames = magnitude.shape[1]
    k = int(2 * np.ceil(np.sqrt(frames - 2 * width + 1)))
    searched = min(frames - 1, k + 2 * width)
    search = NearestNeighbors(n_neighbors=searched, metric="cosine", algorithm="auto")
    nearest = search.fit(magnitude.T).kneighbors(return_distance=False)  # [T, searched], itself left out
    index = np.arange(frames)
    far = np.abs(nearest - index[:, None]) >= width
    kept = np.sort(np.where(far, nearest, frames), axis=1)[:, :k]  # [T, k], index `frames` = none
    count = np.minimum(far.sum(axis=1), k)
    # A frame's bins side by side for the gather and the sort; the extra row, +inf, fills rows with fewer than k.
    by_frame = np.vstack([magnitude.T, np.full((1, magnitude.shape[0]), np.inf, magnitude.dtype)])
    background = np.empty_like(magnitude.T)
    for start in range(0, frames, _BACKGROUND_BLOCK):
        rows = slice(start, start + _BACKGROUND_BLOCK)
        ordered = np.sort(by_frame[kept[rows]], axis=1)  # [b, k, F]; the missing (+inf) sort last
        counts = count[rows, None, None]
        low = np.take_along_axis(ordered, (counts - 1) // 2, axis=1)[:, 0]
        high = np.take_along_axis(ordered, counts // 2, axis=1)[:, 0]
        background[rows] = 0.5 * (low + high)
    return background.T


# Frames whose medians are taken at once: bounds the gathered neighbours (~40 MB).
_BACKGROUND_BLOCK = 256


def _separation_width(frames: int, config: AudioConfig) -> int:
    """STFT frames for ``separation_width_s``, shrunk to the largest width librosa accepts for this clip."""
    wanted = round(config.separation_width_s * config.clock.sample_rate / config.clock.hop_length)
    return min(wanted, (frames - 1) // 2 - 1)


def _stft(samples: np.ndarray, config: AudioConfig) -> np.ndarray:
    import librosa

    # Explicit zero padding: segment_mel reproduces these frames by padding slices with zeros.
    return librosa.stft(samples, n_fft=config.n_fft, hop_length=config.clock.hop_length, win_length=config.win_length,
                        center=True, pad_mode="constant")


# --- Log-mel spectrogram -----------------------------------------------------------------------------------


def log_mel(samples: np.ndarray, config: AudioConfig) -> np.ndarray:
    """The expert's log-mel of 16 kHz mono audio: float32 ``[M, 1 + N // hop]`` in ``[-max_abs, max_abs]``.

    Mel frame ``t`` is centred on sample ``t * clock.hop_length`` (the signal is zero-padded at both ends).
    """
    samples = np.asarray(samples, dtype=np.float32)
    return _normalise(_mel_magnitude(np.abs(_stft(_preemphasise(samples, config), config)), config), config)


def segment_mel(samples: np.ndarray, start_frame: int, end_frame: int, config: AudioConfig) -> np.ndarray:
    """Log-mel of video frames ``[start_frame, end_frame)`` of a clip whose 16 kHz mono audio is ``samples``.

    Returns ``[M, mel_column(end) - mel_column(start)]`` (the clock's formula); column ``j`` equals column
    ``mel_column(start) + j`` of ``log_mel(samples)``. Only the samples those frames see are processed, with the whole clip's
    zero padding reproduced, so frames before 0 or past the end read silence.
    """
    import librosa

    if end_frame < start_frame:
        raise ValueError(f"segment_mel: end_frame {end_frame} is before start_frame {start_frame}")
    first, stop = config.clock.mel_column(start_frame), config.clock.mel_column(end_frame)
    if stop == first:
        return np.zeros((config.n_mels, 0), np.float32)
    # Mel frame t reads samples [t * hop - n_fft // 2, t * hop - n_fft // 2 + n_fft), as librosa's centring does.
    hop = config.clock.hop_length
    begin = first * hop - config.n_fft // 2
    end = (stop - 1) * hop - config.n_fft // 2 + config.n_fft
    emphasised = _emphasised_span(np.asarray(samples, dtype=np.float32), begin, end, config)
    spectrum = librosa.stft(emphasised, n_fft=config.n_fft, hop_length=hop,
                            win_length=config.win_length, center=False)
    return _normalise(_mel_magnitude(np.abs(spectrum), config), config)


def _emphasised_span(samples: np.ndarray, begin: int, end: int, config: AudioConfig) -> np.ndarray:
    """Samples ``[begin, end)`` of the pre-emphasised clip, zeros outside it, as the full-clip path sees them."""
    span = np.zeros(end - begin, np.float32)
    inside_begin, inside_end = max(begin, 0), min(end, len(samples))
    if inside_begin >= inside_end:
        return span
    # The filter reads one sample of history; take it so the first emphasised sample matches the full clip.
    history = 1 if inside_begin > 0 else 0
    emphasised = _preemphasise(samples[inside_begin - history:inside_end], config)[history:]
    span[inside_begin - begin:inside_end - begin] = emphasised
    return span


def _preemphasise(samples: np.ndarray, config: AudioConfig) -> np.ndarray:
    from scipy.signal import lfilter

    return lfilter([1.0, -config.preemphasis], [1.0], samples).astype(np.float32)


def _mel_magnitude(magnitude: np.ndarray, config: AudioConfig) -> np.ndarray:
    return _mel_basis(config) @ magnitude


def _normalise(mel: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Amplitude -> dB relative to ``ref_level_db``, then mapped linearly from [min_level_db, 0] to +-max_abs."""
    floor = 10.0 ** (config.min_level_db / 20.0)  # 1e-5 for -100 dB
    db = 20.0 * np.log10(np.maximum(floor, mel)) - config.ref_level_db
    scaled = 2 * config.max_abs_value * (db - config.min_level_db) / -config.min_level_db - config.max_abs_value
    return np.clip(scaled, -config.max_abs_value, config.max_abs_value).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _mel_basis(config: AudioConfig) -> np.ndarray:
    import librosa

    basis = librosa.filters.mel(sr=config.clock.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                fmin=config.fmin, fmax=config.fmax)
    basis.setflags(write=False)  # shared between calls and threads
    return basis
