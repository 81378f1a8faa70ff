"""The development clips in ../shared/data/real: real faces, codecs and rates (skipped where absent)."""

from __future__ import annotations

import pytest

from conftest import REAL_CLIPS
from pipelines.core.storage import StorageConfig
from pipelines.faces.base import FaceConfig
from pipelines.preprocess import PreprocessConfig, run
from pipelines.shards.writer import shard_stats

pytestmark = pytest.mark.skipif(not REAL_CLIPS.is_dir(), reason=f"{REAL_CLIPS} not present")


def test_every_real_clip_yields_samples_with_faces_found(tmp_path):
    clips = sorted(REAL_CLIPS.glob("*.mp4"))
    summary = run(PreprocessConfig(input=str(REAL_CLIPS), output=str(tmp_path), progress=False,
                                   faces=FaceConfig(aligner="dlib")))
    assert summary["videos_ok"] == len(clips) and not summary["videos_failed"]
    videos = [video for stats in shard_stats(str(tmp_path), StorageConfig()) for video in stats["videos"]]
    assert len(videos) == len(clips)
    for video in videos:
        assert video["samples"], video["key"]
        assert video["frames_with_face"] >= 0.95 * video["frames"], (video["key"], video["frames_with_face"])
