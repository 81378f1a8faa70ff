"""A reference training loader that works the way Wav2Lip's SyncNet `Dataset` does, for benchmarks only.

Our own code, written to reproduce the research loader's costs, not its source. Its layout (made once by
`build_layout` from our shards) is the research one: a folder per face segment holding one JPEG per frame
(`0.jpg`, `1.jpg`, ... OpenCV's default quality 95) and `audio.wav`, 16 kHz mono 16-bit. For every sample,
`ResearchDataset.__getitem__`:

* lists the segment's folder (`glob('*.jpg')`), picks a window start; a positive keeps the audio at that start,
  a negative takes the faces of another start of the same segment (the research negatives: random time);
* reads the window's 5 JPEGs with `cv2.imread`, resizes each to the crop size (`cv2.resize`, as the script
  does; our crops are already 96 px, which makes it cheap: generous to the reference);
* reads the whole wav and computes the log-mel of all of it, then cuts the 16 columns of the window: the mel is
  recomputed per sample, never cached (the research loader's best-known cost).

A torch `DataLoader` with workers batches the samples (its default collate, which builds batches in shared
memory inside workers). The samples have our batch's keys, shapes and dtypes (faces uint8 RGB [T, S, S, 3],
mels float32 [F, W], labels float32, shifts int64), so both loaders feed the same training step; the research
script would also convert the faces to float on the CPU (4x the bytes to move), which this reference does not.

Audio: the wav holds the segment's span of its source video's audio (`pipelines.media.read_audio`, mono 16 kHz
with `pipelines.audio.prepare`; no voice separation, as the research script has none); building a layout needs
the source videos the shards' json name. The mel is the project's `pipelines.audio.log_mel` where librosa is
installed; elsewhere (the GPU machine) `log_mel_numpy`, the same computation in numpy (scipy's FFT where
installed) with the settings and mel filterbank `build_layout` stored in `layout.json` / `mel_basis.npy` (equal
to log_mel within 1e-3, a test).
"""

from __future__ import annotations

import glob
import json
import os
import wave
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = ["ResearchDataset", "build_layout", "log_mel_numpy", "mel_function", "read_wav", "research_loader",
           "write_wav"]

LAYOUT_FILE, BASIS_FILE, WAV_FILE = "layout.json", "mel_basis.npy", "audio.wav"
WAV_PEAK = 32768.0  # 16-bit PCM full scale


# --- the layout, made once ---------------------------------------------------------------------------------

def build_layout(shards: str | Path, out: str | Path, max_segments: int | None = None, split: str | None = "train",
                 sources: str | Path | None = None, jpeg_quality: int = 95) -> dict:
    """Write the research layout of the segments in `shards` (local shard-*.tar) into `out`; returns layout.json.

    `sources`: a folder to find the source videos in by file name, when the paths the json records are gone.
    Segments whose source video cannot be read are skipped and counted.
    """
    from pipelines.audio import AudioConfig, _mel_basis, prepare
    from pipelines.core.storage import StorageConfig
    from pipelines.media import MediaError, read_audio
    from pipelines.shards.reader import iter_segments, list_shards

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    audio_config = AudioConfig()
    clock = audio_config.clock
    samples_per_frame = clock.samples_per_frame
    audio_cache: dict[str, np.ndarray | None] = {}
    written, skipped = [], 0
    storage = StorageConfig()
    for segment in iter_segments(list_shards(str(shards), storage), storage, split):
        meta = segment.meta
        source = _find_source(meta.get("source", ""), sources)
        if source not in audio_cache:
            try:
                audio, rate = read_audio(source)
                audio_cache[source] = prepare(audio, rate, audio_config)
            except (MediaError, OSError):
                audio_cache[source] = None
        audio = audio_cache[source]
        if audio is None:
            skipped += 1
            continue
        folder = out / segment.key
        folder.mkdir(exist_ok=True)
        faces = segment.faces
        for index, face in enumerate(faces):
            cv2.imwrite(str(folder / f"{index}.jpg"), face[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        begin = round(meta["start_s"] * clock.sample_rate)
        span = np.zeros(len(faces) * samples_per_frame, np.float32)
        piece = audio[begin:begin + len(span)]
        span[:len(piece)] = piece
        write_wav(folder / WAV_FILE, span, clock.sample_rate)
        written.append({"key": segment.key, "frames": len(faces)})
        if max_segments is not None and len(written) == max_segments:
            break
    np.save(out / BASIS_FILE, np.asarray(_mel_basis(audio_config), np.float32), allow_pickle=False)
    layout = {"segments": written, "skipped_no_source": skipped, "crop_size": int(meta["crop_size"]) if written else 0,
              "audio": asdict(clock) | {k: v for k, v in asdict(audio_config).items()
                                       if k != "clock" and not k.startswith("separation")},
              "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}
    (out / LAYOUT_FILE).write_text(json.dumps(layout, indent=1))
    return layout


def _find_source(recorded: str, sources: str | Path | None) -> str:
    if sources is not None and not os.path.exists(recorded):
        found = sorted(Path(sources).rglob(Path(recorded).name))
        if found:
            return str(found[0])
    return recorded


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = np.clip(np.round(samples * WAV_PEAK), -WAV_PEAK, WAV_PEAK - 1).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """16-bit mono wav -> float32 samples in [-1, 1) and the rate (what librosa.load gives for it)."""
    with wave.open(str(path), "rb") as source:
        rate, count = source.getframerate(), source.getnframes()
        data = source.readframes(count)
    return np.frombuffer(data, "<i2").astype(np.float32) / WAV_PEAK, rate


# --- the mel, per sample -----------------------------------------------------------------------------------

def log_mel_numpy(samples: np.ndarray, audio: dict, basis: np.ndarray) -> np.ndarray:
    """`pipelines.audio.log_mel` without librosa (numpy, and scipy's FFT where installed): `audio` holds
    AudioConfig's fields (layout.json), `basis` its mel filterbank [M, n_fft/2 + 1]. Pre-emphasis, centred STFT
    (zero padding, periodic Hann), magnitude, mel, dB, scaled to [-max_abs, max_abs]: float32 [M, 1 + N // hop].
    """
    n_fft, hop, win = audio["n_fft"], audio["hop_length"], audio["win_length"]
    x = np.asarray(samples, np.float32)
    emphasised = np.empty_like(x)
    emphasised[:1] = x[:1]
    emphasised[1:] = x[1:] - np.float32(audio["preemphasis"]) * x[:-1]
    padded = np.pad(emphasised, n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = np.zeros(n_fft, np.float32)
    offset = (n_fft - win) // 2  # librosa centres a shorter window inside the frame
    window[offset:offset + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    magnitude = np.abs(_rfft(frames * window, axis=1)).astype(np.float32).T
    mel = basis @ magnitude
    floor = 10.0 ** (audio["min_level_db"] / 20.0)
    db = 20.0 * np.log10(np.maximum(floor, mel)) - audio["ref_level_db"]
    top = audio["max_abs_value"]
    scaled = 2 * top * (db - audio["min_level_db"]) / -audio["min_level_db"] - top
    return np.clip(scaled, -top, top).astype(np.float32)


def _rfft(frames: np.ndarray, axis: int) -> np.ndarray:
    try:  # scipy's FFT runs these frames about 20x faster than numpy's (float32, 800 points)
        from scipy.fft import rfft
    except ImportError:
        rfft = np.fft.rfft
    return rfft(frames, axis=axis)


def mel_function(layout: str | Path, implementation: str = "auto"):
    """(name, samples -> log-mel) for a layout: "librosa" (the project's log_mel), "numpy", or "auto" (librosa
    when it is installed)."""
    if implementation in ("auto", "librosa"):
        try:
            from pipelines.audio import AudioConfig, log_mel
        except ImportError:
            if implementation == "librosa":
                raise
        else:
            config = AudioConfig()
            return "librosa", lambda samples: log_mel(samples, config)
    settings = json.loads((Path(layout) / LAYOUT_FILE).read_text())["audio"]
    basis = np.load(Path(layout) / BASIS_FILE, allow_pickle=False)
    return "numpy", lambda samples: log_mel_numpy(samples, settings, basis)


# --- the dataset -------------------------------------------------------------------------------------------

class ResearchDataset(torch.utils.data.Dataset):
    """Samples the way the research loader makes them (module docstring); item i comes from segment i % count,
    with a window drawn from a generator seeded by (seed, i), so a run is reproducible."""

    def __init__(self, layout: str | Path, window_frames: int = 5, video_fps: int = 25, mel_fps: float = 80.0,
                 length: int = 10**9, seed: int = 0, mel: str = "auto"):
        self.layout = Path(layout)
        description = json.loads((self.layout / LAYOUT_FILE).read_text())
        self.folders = [str(self.layout / s["key"]) for s in description["segments"]
                        if s["frames"] >= window_frames + 1]
        if not self.folders:
            raise ValueError(f"{layout}: no segment of at least {window_frames + 1} frames")
        self.crop_size = description["crop_size"]
        self.window_frames, self.video_fps, self.mel_fps = window_frames, video_fps, mel_fps
        self.mel_window = round(window_frames * mel_fps / video_fps)
        self.length, self.seed, self.mel = length, seed, mel
        self.mel_name, self._log_mel = mel_function(self.layout, mel)

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):  # the mel function is rebuilt in each worker
        return {k: v for k, v in self.__dict__.items() if k != "_log_mel"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.mel_name, self._log_mel = mel_function(self.layout, self.mel)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, index))
        folder = self.folders[index % len(self.folders)]
        frames = len(glob.glob(os.path.join(folder, "*.jpg")))
        last = frames - self.window_frames
        start = int(rng.integers(0, last + 1))
        positive = rng.random() < 0.5
        face_start = start
        if not positive:  # another time of the same segment
            face_start = int(rng.integers(0, last))
            face_start += face_start >= start
        window = []
        for frame in range(face_start, face_start + self.window_frames):
            image = cv2.imread(os.path.join(folder, f"{frame}.jpg"))
            if image is None:
                raise FileNotFoundError(f"{folder}/{frame}.jpg")
            window.append(cv2.resize(image, (self.crop_size, self.crop_size))[..., ::-1])
        samples, _ = read_wav(os.path.join(folder, WAV_FILE))
        mel = self._log_mel(samples)  # the whole segment's, for one window
        column = round(start * self.mel_fps / self.video_fps)
        return {"faces": np.stack(window), "mels": np.ascontiguousarray(mel[:, column:column + self.mel_window]),
                "labels": np.float32(positive), "shifts": np.int64(start - face_start)}


def research_loader(dataset: ResearchDataset, batch_size: int, workers: int, pin_memory: bool = False,
                    seed: int = 0) -> torch.utils.data.DataLoader:
    """The research script's DataLoader: shuffled, workers, default collate."""
    generator = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=dataset.length,
                                             generator=generator)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       pin_memory=pin_memory, drop_last=True, worker_init_fn=worker_init)


def worker_init(_: int) -> None:
    """One thread per loader process for numpy's BLAS (the mel's matrix product): by default each of N
    processes would start a thread per CPU and they would fight over the cores. A fairer reference than the
    research script, which sets nothing. OpenCV's pool is left alone: `imread` does not use it, and calling
    `cv2.setNumThreads` in a forked worker deadlocked when the parent had used OpenCV's threads before."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)
