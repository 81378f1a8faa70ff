"""Shared fixtures: one small synthetic corpus per test session, and the offline aligner's view of it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.faces.base import FaceConfig
from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

# The shared development clips sit beside the checkout (../shared), or beside the folder of worktrees.
SHARED_DATA = next((parent / "shared" / "data" for parent in Path(__file__).resolve().parents[1:4]
                    if (parent / "shared" / "data").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_CLIPS = SHARED_DATA / "real"
REAL_MORE_CLIPS = SHARED_DATA / "real_more"

# 12 videos walk every cycle of the planner once: 4 frame rates + VFR, 5 sample rates, 4 containers, mono and
# stereo; 4 of them held out with offsets -15, -5, 5, 15; the 5 broken inputs of each kind follow.
SMALL_CORPUS = dict(num_videos=12, seed=7, corrupt=5, heldout_fraction=0.34, min_seconds=3.0, max_seconds=4.5,
                    background_fraction=0.5, videos_per_speaker=2, workers=2)


@pytest.fixture(autouse=True)
def _thread_pools_kept():
    """Stages built in the test process (`size_thread_pools`) size OpenCV's and torch's pools and set
    OMP_NUM_THREADS for a torch loaded later, as an actor needs. Left so, they would size every later test's pools
    and Ray workers: the session's trained expert came out differently after such tests (float sums in another
    order over 800 steps) and missed its held-out offsets."""
    import cv2
    import torch

    omp, cv2_threads, torch_threads = os.environ.get("OMP_NUM_THREADS"), cv2.getNumThreads(), torch.get_num_threads()
    yield
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp
    cv2.setNumThreads(cv2_threads)
    torch.set_num_threads(torch_threads)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("corpus")
    rows = generate_corpus(SyntheticConfig(out=out, **SMALL_CORPUS), progress=False)
    return out, rows


@pytest.fixture(scope="session")
def aligned_clips(small_corpus) -> dict[str, dict[str, np.ndarray]]:
    """Per good clip: frame times, landmarks [N, 68, 2] from the offline aligner, and mono audio."""
    from pipelines.faces.dlib_aligner import DlibAligner
    from pipelines.media import iter_frames, read_audio

    out, rows = small_corpus
    aligner = DlibAligner()
    result = {}
    for row in rows:
        if row["corrupt"]:
            continue
        path = out / row["path"]
        times, frames = zip(*iter_frames(path))
        landmarks, _ = aligner(np.stack(frames))
        audio, sample_rate = read_audio(path)
        result[row["key"]] = dict(times=np.array(times), landmarks=landmarks, audio=audio.mean(axis=0),
                                  sample_rate=sample_rate)
    return result


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: nothing may download weights or data at run time."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# Enough training for the small corpus's held-out offsets to come out right (checked in test_sync.py); the
# local launcher (one process, no Ray start-up) keeps it to a minute or two of CPU.
EXPERT_TRAINING = dict(preset="cpu-small", launcher="local", max_steps=800, batch_size=32, log_every=50,
                       val_every=500, checkpoint_every=500, val_batches=1, val_segments=1, loader_workers=0,
                       progress=False)


@pytest.fixture(scope="session")
def trained_expert(small_corpus, tmp_path_factory) -> Path:
    """A cpu-small expert trained on the small corpus's in-sync videos: the run folder."""
    from pipelines.preprocess import PreprocessConfig, run
    from train_ray import TrainConfig, train

    out, _ = small_corpus
    root = tmp_path_factory.mktemp("expert")
    run(PreprocessConfig(input=str(out / "videos"), output=str(root / "shards"), val_fraction=0, progress=False,
                         faces=FaceConfig(aligner="dlib")))
    train(TrainConfig(shards=str(root / "shards"), output=str(root / "run"), **EXPERT_TRAINING))
    return root / "run"


@pytest.fixture(scope="session")
def untrained_scorer(tmp_path_factory):
    """A scorer (offline aligner) with a random-weight cpu-small expert: for what scoring finds without depending
    on what an expert learnt (inputs refused, face segments, messages), minus the minutes `trained_expert` takes."""
    from bench.scoring import random_checkpoint
    from model.sync.scoring import ScoreConfig, VideoScorer

    checkpoint = random_checkpoint("cpu-small", tmp_path_factory.mktemp("untrained"))
    return VideoScorer(ScoreConfig(checkpoint=checkpoint, device="cpu", faces=FaceConfig(aligner="dlib")))


from s3_server import s3_server  # noqa: E402,F401  (a session fixture: a moto S3 server on loopback)
