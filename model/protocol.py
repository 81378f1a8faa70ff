"""The published per-window protocol: offset accuracy by context length, pair accuracy by kind, LSE-D / LSE-C.

Offset figures in the literature (SyncNet, PerfectMatch, VocaLiST, ModEFormer, Synchformer) are not whole-video
offsets but per-window ones: every test window of C video frames chooses its offset among -15..+15 frames from
that window alone, and counts as correct when the choice lies within +-1 frame of the truth; accuracy is given
for C = 5, 7, 9, 11, 13, 15. An expert that sees T = 5 frames at once scores a window of C > T frames as
VocaLiST's released LRS2 evaluation (`test_lrs2.py`, adapted from syncnet_python) does: the scores of its
C - T + 1 sliding T-frame windows are averaged per offset, and the best mean wins. VocaLiST averages its raw
scores (logits); syncnet_python, over a whole video, Euclidean distances; here the score is the cosine
similarity, so the best mean similarity is the least mean cosine distance. (We checked VocaLiST's and
syncnet_python's code; the other papers describe the same protocol, their code was not checked.)

How it matches and where it differs, from VocaLiST's code:

- same: one test window per video frame (stride 1); offsets -15..+15 (`--max-offset`); correct within +-1 frame
  (`TOLERANCE`; exact agreement is reported too); accuracy per video, then the mean over videos (the published
  "sample-wise" mean); the figure for C averages the per-offset scores of the C - T + 1 windows inside it.
- differs, edges: VocaLiST pads the audio, masks the offsets whose audio falls outside the clip and, near the
  ends, averages fewer windows, so every T-frame window is a test window at every C. Here a test window is used
  only when its C frames and all its shifted audio windows lie inside one face segment: no padding and no
  truncated contexts, so the first and last `max_offset` frames of a segment never start a test window and
  a segment gives C - T fewer test windows at C than at T (`windows` in the table).
- differs, truth: the published sets are taken to be in sync (truth 0). Here the truth comes from a manifest
  of known offsets (the synthetic held-out videos: -15..+15) or is 0 for videos and shards assumed in sync;
  the search range stays -15..+15 whatever the truth.
- differs, units: a video is its face segments (`pipelines.samples`), each searched alone; the mel window of
  frame f starts at column round(16 f / 5) (`Clock.mel_column`), VocaLiST's at floor(16 f / 5): one column
  (12.5 ms) apart on some frames.

Pairs: binary accuracy at similarity `threshold` (0.5, as LatentSync reports its SyncNet's) and BCE, per kind
of negative: hard (audio 2-6 frames off), easy (7-75 frames) and other (another video's audio), the kinds of
`model.loader.windows` with its default shifts, each against as many positives: the same face windows with
their own audio. A segment with a known offset is first realigned (`model.sync.curate.realign`), so that a
positive is in sync whatever the manifest says.

LSE-D / LSE-C as syncnet_python computes them per video (the curve of mean distance over offsets: its minimum
and its median minus minimum), averaged over videos as Wav2Lip's evaluation scripts do; on cosine distances
(in [0, 1]) rather than SyncNet's Euclidean distances between its own embeddings (about 6-8 on LRS2), so they
compare experts of this project, not this expert with SyncNet. syncnet_python pads the audio with zeros and
scores every window at every offset; here only the windows of the protocol's grid are averaged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from model.loader.windows import KINDS, PairConfig, Windows, cut_windows, draw_windows
from model.loss import accuracy, sync_loss
from model.offset import offset_from_grid
from pipelines.core.clock import Clock
from pipelines.shards.reader import Segment

CONTEXTS = (5, 7, 9, 11, 13, 15)  # the published context lengths, in video frames
TOLERANCE = 1  # frames: the published "correct" is within +-1 frame of the truth
NEGATIVE_KINDS = KINDS[1:]
# One kind per draw, through the training loader's own fractions: a kind that a segment cannot offer (its
# fallback, in the loader) is dropped.
KIND_FRACTIONS = {"hard": dict(hard_fraction=1.0, easy_fraction=0.0),
                  "easy": dict(hard_fraction=0.0, easy_fraction=1.0),
                  "other": dict(hard_fraction=0.0, easy_fraction=0.0)}


@dataclass(frozen=True)
class ProtocolConfig:
    """The per-window protocol (`--protocol`): context lengths, and the pairs behind accuracy and BCE."""

    contexts: tuple[int, ...] = field(default=CONTEXTS, metadata={"help": "context lengths C, in video frames"})
    # Each face window of a negative is also scored with its own audio, the positive: balanced by construction,
    # and the face encoder (most of the cost) runs once for both.
    pairs_per_segment: int = field(default=8, metadata={
        "help": "negatives of each kind (hard, easy, other) drawn from each segment, each with its positive"})
    threshold: float = field(default=0.5, metadata={"help": "similarity above which a pair is called in sync"})
    seed: int = field(default=0, metadata={"help": "seed of the pair draws (the offset table draws nothing)"})

    def __post_init__(self):
        if not self.contexts or list(self.contexts) != sorted(set(self.contexts)) or self.contexts[0] < 1:
            raise ValueError(f"--contexts must be positive and increasing, got {list(self.contexts)}")
        if self.pairs_per_segment < 1 or not 0 < self.threshold < 1:
            raise ValueError("--pairs-per-segment must be >= 1 and --threshold in (0, 1)")


# --- offsets by context length (pure functions over similarity grids) ---------------------------------------

@dataclass(frozen=True, eq=False)
class SegmentGrid:
    """One searched segment: the video it belongs to, its true offset (frames, + = audio late) and the
    similarity of every T-frame window (consecutive starts) at every shift, as `model.offset.similarity_grid`
    gives them: shifts [S], similarity [S, W]."""

    video: str
    truth: int
    shifts: np.ndarray
    similarity: np.ndarray


def context_similarity(similarity: np.ndarray, context: int, window: int) -> np.ndarray:
    """[S, W] similarities of T-frame windows -> [S, W - (C - T)]: for each C-frame test window, the mean over the
    C - T + 1 consecutive T-frame windows inside it, per shift (empty when the segment is shorter than C)."""
    if context < window:
        raise ValueError(f"a context of {context} frames is shorter than the expert's window of {window}")
    span = context - window + 1
    if similarity.shape[1] < span:
        return similarity[:, :0]
    return np.lib.stride_tricks.sliding_window_view(similarity, span, axis=1).mean(axis=2)


def context_errors(grid: SegmentGrid, context: int, window: int) -> np.ndarray:
    """Estimated minus true offset of every C-frame test window of one segment [W - (C - T)]."""
    scores = context_similarity(grid.similarity, context, window)
    return grid.shifts[np.argmax(scores, axis=0)] - grid.truth


def accuracy_by_context(grids: list[SegmentGrid], contexts: tuple[int, ...], window: int) -> list[dict]:
    """One row per context length: test windows and videos counted, exact and within-TOLERANCE accuracy as the
    mean over videos of each video's share (the published figure) and pooled over all test windows."""
    rows = []
    for context in contexts:
        by_video: dict[str, list[np.ndarray]] = {}
        for grid in grids:
            by_video.setdefault(grid.video, []).append(context_errors(grid, context, window))
        errors = {video: np.concatenate(parts) for video, parts in by_video.items()}
        errors = {video: e for video, e in errors.items() if len(e)}
        pooled = np.concatenate(list(errors.values())) if errors else np.empty(0, np.int64)
        rows.append({"context": context, "windows": int(len(pooled)), "videos": len(errors),
                     "exact": _mean([np.mean(e == 0) for e in errors.values()]),
                     "within_1": _mean([np.mean(np.abs(e) <= TOLERANCE) for e in errors.values()]),
                     "pooled_exact": _mean(pooled == 0), "pooled_within_1": _mean(np.abs(pooled) <= TOLERANCE)})
    return rows


def lip_sync_errors(grids: list[SegmentGrid]) -> dict:
    """LSE-D and LSE-C: per video (its segments' windows pooled, as `model.sync score` pools them), the minimum
    and the median minus minimum of the mean cosine-distance curve; then the mean over videos."""
    by_video: dict[str, list[np.ndarray]] = {}
    for grid in grids:
        by_video.setdefault(grid.video, []).append(grid.similarity)
    results = [offset_from_grid(grids[0].shifts, np.arange(sum(s.shape[1] for s in parts)),
                                np.concatenate(parts, axis=1)) for parts in by_video.values()]
    return {"lse_d": _mean([r.min_distance for r in results]), "lse_c": _mean([r.confidence for r in results]),
            "videos": len(results)}


def _mean(values) -> float | None:
    """The mean, or None of nothing: a figure with nothing behind it is missing, never 0."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else None


# --- the whole protocol over a stream of segments ----------------------------------------------------------

class PerWindowProtocol:
    """Takes a corpus one searched segment at a time (`add`), then gives the protocol's figures (`summary`).

    Only the similarity grids and the pairs' similarities are kept, and the faces of the last segment of the
    last two videos, so a test set of any size streams through. Pairs of kind other take their audio from the
    latest segment of another video; the corpus's first video has none before it, so its segments give none.
    """

    def __init__(self, expert, config: ProtocolConfig, batch_size: int = 256):
        self.expert, self.config, self.batch_size = expert, config, batch_size
        self.clock: Clock = expert.config.clock
        if config.contexts[0] < self.clock.window_frames:
            raise ValueError(f"--contexts {config.contexts[0]} is shorter than the expert's window of "
                             f"{self.clock.window_frames} frames")
        self.rng = np.random.default_rng(config.seed)
        self.grids: list[SegmentGrid] = []
        self.similarities: dict[str, list[np.ndarray]] = {kind: [] for kind in NEGATIVE_KINDS}  # [2, n] each
        self._recent: dict[str, Segment] = {}  # the latest realigned segment of the last two videos seen
        self.seconds = 0.0  # spent here: what the protocol adds to the scoring that made the grids

    def add(self, video: str, truth: int, segment: Segment, grid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """One segment of `video`, whose audio is `truth` frames late, with its `similarity_grid` (step 1)."""
        started = time.perf_counter()
        shifts, starts, similarity = grid
        if len(starts) > 1 and not np.all(np.diff(starts) == 1):
            raise ValueError("the per-window protocol needs a window at every frame (a grid of step 1)")
        self.grids.append(SegmentGrid(video, truth, shifts, similarity))
        faces, mel, _ = _realign(segment, truth, self.clock)
        aligned = replace(segment, faces=faces, mel=mel)
        other = next((s for v, s in reversed(self._recent.items()) if v != video), None)
        for kind, similarity in self._pair_similarity(aligned, other).items():
            self.similarities[kind].append(similarity)
        self._recent.pop(video, None)
        self._recent[video] = aligned
        while len(self._recent) > 2:
            self._recent.pop(next(iter(self._recent)))
        self.seconds += time.perf_counter() - started

    def _pair_similarity(self, segment: Segment, other: Segment | None) -> dict[str, np.ndarray]:
        """Per negative kind, similarity [2, n] of n drawn negatives' face windows with their own audio (row 0)
        and with the negative's (row 1); all kinds in one pass through the expert."""
        drawn = {}
        for kind in NEGATIVE_KINDS:
            pairs = PairConfig(windows_per_segment=self.config.pairs_per_segment, positive_fraction=0.0,
                               **KIND_FRACTIONS[kind])
            drawn[kind] = _only(draw_windows(segment, pairs, self.clock, self.rng, other), KINDS.index(kind))
        counts = [len(windows) for windows in drawn.values()]
        if not sum(counts):
            return {kind: np.empty((2, 0), np.float32) for kind in drawn}
        negatives = Windows(*(np.concatenate([getattr(w, name) for w in drawn.values()])
                              for name in ("kinds", "starts", "shifts", "columns")))
        faces, negative_mels = cut_windows(segment, other, negatives, self.clock)
        in_sync = Windows(np.zeros_like(negatives.kinds), negatives.starts, np.zeros_like(negatives.shifts),
                          self.clock.mel_column(negatives.starts))
        _, positive_mels = cut_windows(segment, None, in_sync, self.clock)
        similarity = paired_similarity(self.expert, faces, positive_mels, negative_mels, batch_size=self.batch_size)
        return dict(zip(drawn, np.split(similarity, np.cumsum(counts)[:-1], axis=1)))

    def summary(self) -> dict:
        """The protocol's figures (see `SCHEMA`)."""
        started = time.perf_counter()
        window = self.clock.window_frames
        grids = self.grids
        summary = {"contexts": accuracy_by_context(grids, self.config.contexts, window),
                   "pairs": pair_figures(self.similarities, self.config.threshold),
                   **lip_sync_errors(grids),
                   "segments": len(grids), "max_offset": int(grids[0].shifts.max()) if grids else 0,
                   "tolerance": TOLERANCE, "window_frames": window, "threshold": self.config.threshold,
                   "seed": self.config.seed}
        summary["seconds"] = round(self.seconds + time.perf_counter() - started, 3)
        return summary


def _realign(segment: Segment, truth: int, clock: Clock):
    from model.sync.curate import realign  # curation's own trim: its imports (Ray Data) only when needed

    return realign(segment.faces, segment.mel, truth, clock)


def _only(windows: Windows, code: int) -> Windows:
    keep = windows.kinds == code
    return Windows(windows.kinds[keep], windows.starts[keep], windows.shifts[keep], windows.columns[keep])


@torch.no_grad()
def paired_similarity(expert, faces: np.ndarray, *mels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Similarity [len(mels), N] of face windows uint8 [N, T, S, S, 3] with each set of mel windows [N, M, W],
    in batches; each face window is embedded once."""
    device = next(expert.parameters()).device
    out = []
    for i in range(0, len(faces), batch_size):
        face = expert.embed_faces(expert.prepare_faces(torch.from_numpy(faces[i:i + batch_size]).to(device)))
        out.append(np.stack([
            (face * expert.embed_audio(expert.prepare_mels(torch.from_numpy(m[i:i + batch_size]).to(device))))
            .sum(dim=1).float().cpu().numpy() for m in mels]))
    return np.concatenate(out, axis=1)


def pair_figures(similarities: dict[str, list[np.ndarray]], threshold: float) -> list[dict]:
    """Per negative kind, on its n negatives and the n positives of the same face windows: accuracy at
    `threshold`, BCE, and each side's share decided right."""
    rows = []
    for kind, parts in similarities.items():
        positives, negatives = np.concatenate(parts, axis=1) if parts else np.empty((2, 0), np.float32)
        n = len(negatives)
        similarity = torch.from_numpy(np.concatenate([positives, negatives]))
        labels = torch.cat([torch.ones(n), torch.zeros(n)])
        rows.append({"kind": kind, "pairs": 2 * n,
                     "accuracy": float(accuracy(similarity, labels, threshold)) if n else None,
                     "bce": float(sync_loss(similarity, labels)) if n else None,
                     "positives_right": _mean(positives > threshold), "negatives_right": _mean(negatives <= threshold)})
    return rows


# --- reporting ---------------------------------------------------------------------------------------------

# What `summary()` holds, key by key: the schema the JSON keeps (tests check it). A figure with nothing to
# measure it on (no test window at that context, no pair of that kind) is None, null in the JSON.
FIGURE = (float, type(None))
SCHEMA = {
    "contexts": [{"context": int, "windows": int, "videos": int, "exact": FIGURE, "within_1": FIGURE,
                  "pooled_exact": FIGURE, "pooled_within_1": FIGURE}],
    "pairs": [{"kind": str, "pairs": int, "accuracy": FIGURE, "bce": FIGURE, "positives_right": FIGURE,
               "negatives_right": FIGURE}],
    "lse_d": FIGURE, "lse_c": FIGURE, "videos": int, "segments": int, "max_offset": int, "tolerance": int,
    "window_frames": int, "threshold": float, "seed": int, "seconds": float,
}


def format_table(summary: dict) -> str:
    """The protocol's figures as a person reads them."""
    lines = [f"per-window offset accuracy (offsets +-{summary['max_offset']}, correct within "
             f"+-{summary['tolerance']} frame; mean over {summary['videos']} videos, {summary['segments']} segments)",
             f"  {'context':>7}  {'windows':>7}  {'exact':>6}  {'+-1':>6}"]
    lines += [f"  {row['context']:>7}  {row['windows']:>7}  {_shown(row['exact']):>6}  {_shown(row['within_1']):>6}"
              for row in summary["contexts"]]
    lines.append(f"pairs at similarity {summary['threshold']}: each kind of negative, and as many positives "
                 f"(the same face windows with their own audio)")
    lines.append(f"  {'kind':>7}  {'pairs':>7}  {'acc':>6}  {'BCE':>6}  {'pos ok':>6}  {'neg ok':>6}")
    lines += [f"  {row['kind']:>7}  {row['pairs']:>7}  {_shown(row['accuracy']):>6}  {_shown(row['bce'], '.3f'):>6}  "
              f"{_shown(row['positives_right']):>6}  {_shown(row['negatives_right']):>6}" for row in summary["pairs"]]
    lines.append(f"LSE-D {_shown(summary['lse_d'], '.3f')}  LSE-C {_shown(summary['lse_c'], '.3f')}  "
                 f"(cosine distances, mean over videos)")
    return "\n".join(lines)


def _shown(value: float | None, spec: str = ".1%") -> str:
    return "-" if value is None else format(value, spec)


def plot_protocol(summary: dict, path: Path) -> None:
    """Accuracy (exact and within +-1) against context length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["contexts"]
    contexts = [row["context"] for row in rows]
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, style, label in (("within_1", "o-", f"within +-{summary['tolerance']} frame"), ("exact", "s--", "exact")):
        axes.plot(contexts, np.array([row[key] for row in rows], dtype=float), style, label=label)  # None: a gap
    # A guess among the 2K + 1 offsets lands within +-1 of the truth this often: the floor to read the curves by.
    axes.axhline((2 * summary["tolerance"] + 1) / (2 * summary["max_offset"] + 1), color="grey", linestyle=":",
                 label=f"chance, within +-{summary['tolerance']}")
    axes.set(xlabel="context length C (video frames)", ylabel="offset accuracy (mean over videos)", ylim=(0, 1.02),
             xticks=contexts,
             title=f"per-window offsets in +-{summary['max_offset']} frames, {summary['videos']} videos")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
