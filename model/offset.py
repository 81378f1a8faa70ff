"""Audio-video offset of a face segment, SyncNet's way.

For every window of T frames, the face embedding is compared with audio embeddings shifted by -K..+K frames;
similarities are averaged over windows, and the shift with the highest mean similarity is the offset. Positive
means the audio is late: the sound of a mouth shape arrives `offset` frames after the lips make it. The
confidence is SyncNet's, on distances (1 - similarity): median minus minimum of the mean distance curve.
On this expert's cosine distances, SyncNet's LSE-D is that minimum and LSE-C that confidence.

Shapes: faces uint8 [N, S, S, 3] (aligned crops on the 25 fps clock), mel float32 [n_mels, M] with column j at
j / mel_fps seconds from frame 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


# SyncNet smooths its per-window confidence over this many windows (0.36 s at one window per frame).
CONFIDENCE_SMOOTHING = 9


@dataclass(frozen=True)
class OffsetResult:
    offset_frames: int
    confidence: float  # median - min of the mean distance curve (LSE-C, on cosine distances)
    best_similarity: float  # mean similarity at the offset: P(in sync) once the offset is corrected
    shifts: np.ndarray  # [2K+1] the shifts tried, -K..K
    mean_similarity: np.ndarray  # [2K+1] mean over windows, per shift
    window_similarity: np.ndarray  # [W] per-window similarity at the best shift (sync over time)
    window_starts: np.ndarray  # [W] first frame of each window
    window_confidence: np.ndarray  # [W] per-window median - min of distance over shifts, median-filtered

    @property
    def min_distance(self) -> float:
        """LSE-D on cosine distances: 1 - the mean similarity at the offset."""
        return 1.0 - self.best_similarity

    def similarity_at(self, shift: int) -> float:
        return float(self.mean_similarity[list(self.shifts).index(shift)])


@torch.no_grad()
def offset_curve(expert, faces: np.ndarray, mel: np.ndarray, max_shift: int = 15, audio_delay: int = 0,
                 step: int = 1, batch_size: int = 256) -> OffsetResult:
    """Mean similarity per shift over every window that keeps all its shifted mel windows inside the segment.

    `audio_delay` simulates audio that is late by that many frames (for validation on in-sync data): the
    recovered offset should then equal it.
    """
    shifts, starts, similarity = similarity_grid(expert, faces, mel, max_shift, audio_delay, step, batch_size)
    return offset_from_grid(shifts, starts, similarity)


@torch.no_grad()
def similarity_grid(expert, faces: np.ndarray, mel: np.ndarray, max_shift: int = 15, audio_delay: int = 0,
                    step: int = 1, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity of every scorable window against every shift: (shifts [2K+1], window starts [W],
    similarity [2K+1, W]). Grids of several segments of one video concatenate along the windows."""
    config = expert.config
    window, mel_window = config.window_frames, config.mel_window
    frames, columns = len(faces), mel.shape[1]
    device = next(expert.parameters()).device
    margin = max_shift + abs(audio_delay)
    starts = np.arange(margin, frames - window - margin + 1, step)
    starts = starts[config.clock.mel_column(starts + margin) + mel_window <= columns]
    if len(starts) == 0:
        raise ValueError(f"segment of {frames} frames is too short for windows of {window} shifted by "
                         f"+-{margin}; it needs at least {window + 2 * margin} frames")
    shifts = np.arange(-max_shift, max_shift + 1)
    face_embeddings = _embed_faces(expert, faces, starts, window, device, batch_size)
    audio_frames = np.arange(starts.min() - margin, starts.max() + margin + 1)
    audio_embeddings = _embed_audio(expert, mel, audio_frames, mel_window, device, batch_size)
    similarity = np.empty((len(shifts), len(starts)), np.float32)
    for k, shift in enumerate(shifts):
        # Audio late by `audio_delay`: what the lips show at t was heard at t + delay in the recording.
        rows = starts + shift - audio_delay - audio_frames[0]
        similarity[k] = (face_embeddings * audio_embeddings[rows]).sum(axis=1)
    return shifts, starts, similarity


def offset_from_grid(shifts: np.ndarray, starts: np.ndarray, similarity: np.ndarray) -> OffsetResult:
    """SyncNet's offset and confidence from a similarity grid [2K+1, W] (see `similarity_grid`)."""
    mean = similarity.mean(axis=1)
    best = int(np.argmax(mean))
    distance = 1.0 - mean
    window_distance = 1.0 - similarity
    window_confidence = np.median(window_distance, axis=0) - window_distance.min(axis=0)
    return OffsetResult(offset_frames=int(shifts[best]), confidence=float(np.median(distance) - distance.min()),
                        best_similarity=float(mean[best]), shifts=shifts, mean_similarity=mean,
                        window_similarity=similarity[best], window_starts=starts,
                        window_confidence=median_filter(window_confidence, CONFIDENCE_SMOOTHING))


def median_filter(values: np.ndarray, width: int) -> np.ndarray:
    """Running median over `width` neighbours (odd), the ends padded with their edge values."""
    if len(values) == 0 or width <= 1:
        return values
    half = width // 2
    padded = np.pad(values, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width), axis=1).astype(values.dtype)


def _embed_faces(expert, faces, starts, window, device, batch_size) -> np.ndarray:
    out = []
    for i in range(0, len(starts), batch_size):
        chunk = np.stack([faces[s:s + window] for s in starts[i:i + batch_size]])
        tensor = expert.prepare_faces(torch.from_numpy(chunk).to(device))
        out.append(expert.embed_faces(tensor).float().cpu().numpy())
    return np.concatenate(out)


def _embed_audio(expert, mel, frames, mel_window, device, batch_size) -> np.ndarray:
    config = expert.config
    columns = config.clock.mel_column(frames)
    padded = np.pad(mel, ((0, 0), (0, max(0, columns.max() + mel_window - mel.shape[1]))), constant_values=mel.min())
    out = []
    for i in range(0, len(columns), batch_size):
        chunk = np.stack([padded[:, c:c + mel_window] for c in columns[i:i + batch_size]])
        tensor = expert.prepare_mels(torch.from_numpy(chunk).to(device))
        out.append(expert.embed_audio(tensor).float().cpu().numpy())
    return np.concatenate(out)
