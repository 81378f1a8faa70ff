"""The ground truth every later test leans on: lips and audio agree at the stated offset, and only there."""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.envelope_check import estimate_offset, mouth_opening


def test_offline_aligner_finds_the_face_on_95_percent_of_frames(aligned_clips):
    found = total = 0
    for key, clip in aligned_clips.items():
        hits = np.isfinite(clip["landmarks"][:, 0, 0])
        assert hits.mean() >= 0.9, f"{key}: face found on {hits.mean():.0%} of frames"
        found, total = found + hits.sum(), total + len(hits)
    assert found / total >= 0.95, f"face found on {found}/{total} frames"


def test_mouth_follows_speech_at_the_stated_offset(small_corpus, aligned_clips):
    _, rows = small_corpus
    margins = []
    for row in rows:
        if row["corrupt"]:
            continue
        clip = aligned_clips[row["key"]]
        opening = mouth_opening(clip["landmarks"])
        lag, agreement = estimate_offset(opening, clip["times"], clip["audio"], clip["sample_rate"], max_lag=20)
        truth = row["offset_frames"]
        assert abs(lag - truth) <= 1, f"{row['key']}: envelope check found {lag}, manifest says {truth}"
        elsewhere = max(score for k, score in agreement.items() if abs(k - truth) >= 4)
        assert agreement[lag] > elsewhere, row["key"]
        margins.append(agreement[lag] - elsewhere)
    # Not a lucky argmax: the agreement at the true offset stands clearly above every lag 4+ frames away.
    assert np.mean(margins) > 0.15, margins


def test_silence_keeps_the_mouth_closed(small_corpus, aligned_clips):
    _, rows = small_corpus
    for row in rows:
        if row["corrupt"]:
            continue
        clip = aligned_clips[row["key"]]
        opening = mouth_opening(clip["landmarks"])
        before_speech = clip["times"] < row["speech_start_s"] - 0.2
        talking = (clip["times"] > row["phonemes"][0][1]) & (clip["times"] < row["phonemes"][-1][2])
        assert np.nanmean(opening[before_speech]) < np.nanmean(opening[talking]) - 0.03, row["key"]
