"""Absolute sync: decoding puts audio sample 0 and video frame 0 where the container says, with no expert involved.

Every case of pipelines.synthetic.clock_cases (edit lists, AAC priming, late audio or video, Matroska CodecDelay,
GRID's MPEG-PS) is written from a clip of flashes and a noise waveform whose true positions are known; the
waveform is found in the decoded audio by cross-correlation, the flashes in the decoded frames. The real-clip
tests skip where ../shared/data is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.clock_check import (FLASH_FRAMES, FPS, SOURCE_RATE, audio_start_s, check_remuxed, expert_clock,
                               frames_agree, inspect_real, noise_waveform, remux_cases, write_flash_source)
from conftest import REAL_CLIPS, REAL_MORE_CLIPS
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.media import probe
from pipelines.synthetic.clock_cases import CLOCK_CASES, MPEG_PS_CASE, ClockCase, write_case

CASES = CLOCK_CASES + (MPEG_PS_CASE,)


@pytest.fixture(scope="module")
def flash_source(tmp_path_factory) -> Path:
    return write_flash_source(tmp_path_factory.mktemp("clock") / "flashes.mp4")


def written(case: ClockCase, source: Path, folder: Path) -> tuple[Path, np.ndarray, int]:
    rate = case.audio_rate or SOURCE_RATE
    reference = noise_waveform(rate)
    target = folder / f"{case.name}.{case.extension}"
    write_case(case, source, reference, rate, target)
    return target, reference[0], rate


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_audio_sample_zero_and_first_frame_land_where_the_case_put_them(case, flash_source, tmp_path):
    path, reference, rate = written(case, flash_source, tmp_path)
    audio_s, match = audio_start_s(path, reference, rate)
    assert match > 0.9, f"{case.name}: the waveform was not found in the decoded audio (correlation {match:.2f})"
    # One sample of rounding in the resampler (Opus decodes at 48 kHz whatever it was given), plus what the
    # container can store: an mp4 empty edit is in 1 ms ticks.
    assert audio_s == pytest.approx(case.audio_delay_s, abs=case.tolerance_s + 1.5 / rate)
    assert probe(path).frame_times[0] == pytest.approx(case.video_delay_s, abs=case.tolerance_s + 1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_decode_on_the_experts_clock_keeps_flash_and_waveform_together(case, flash_source, tmp_path):
    path, reference, rate = written(case, flash_source, tmp_path)
    flash, audio_s = expert_clock(path, reference, rate)
    assert flash == FLASH_FRAMES[0] + round(case.video_delay_s * FPS)
    assert audio_s == pytest.approx(case.audio_delay_s, abs=case.tolerance_s + 1.5 / EXPERT_CLOCK.sample_rate)


def test_grid_style_mpeg_ps_indexes_every_frame_from_its_first(flash_source, tmp_path):
    """Two packets at dts 0: a seek back to the start lands on the second, so a probe that seeks before reading the
    timestamps indexes one frame too few, starting a frame late, and decode shows every picture a frame late."""
    path, _, _ = written(MPEG_PS_CASE, flash_source, tmp_path)
    indexed, decoded, gap = frames_agree(path)
    assert indexed == decoded == 50 and gap < 1e-9
    assert probe(path).frame_times[0] == 0


# --- Real clips (skipped where absent) -------------------------------------------------------------------------

REAL_FOLDERS = [folder for folder in (REAL_CLIPS, REAL_MORE_CLIPS) if folder.is_dir()]
needs_real = pytest.mark.skipif(not REAL_FOLDERS, reason=f"{REAL_CLIPS} not present")


def real_clips() -> list[Path]:
    return [clip for folder in REAL_FOLDERS for clip in sorted(folder.iterdir())
            if clip.suffix in (".mp4", ".mpg")]


@needs_real
def test_every_real_clip_decodes_where_its_container_says():
    rows = [inspect_real(clip) for clip in real_clips()]
    assert rows
    for row in rows:
        assert row["frames_indexed"] == row["frames_decoded"], row
        assert row["audio_decoded_ms"] == pytest.approx(row["audio_expected_ms"], abs=0.1), row
        assert row["video_decoded_ms"] == pytest.approx(row["video_expected_ms"], abs=1e-3), row


@needs_real
def test_a_real_clips_audio_remuxed_in_every_case_lands_where_the_case_put_it(tmp_path):
    clip = real_clips()[0]
    for case in remux_cases(clip):
        row = check_remuxed(clip, case, tmp_path)
        assert row["match"] > 0.9 and row["ok"], row


def test_clock_check_bench_prints_and_writes_every_synthetic_case(tmp_path, capsys):
    from bench.clock_check import main

    empty = tmp_path / "no_clips"
    empty.mkdir()
    assert main(["--clips", str(empty), "--remux-clips", "0", "--out", str(tmp_path / "clock.json")]) == 0
    result = json.loads((tmp_path / "clock.json").read_text())
    assert [row["case"] for row in result["synthetic"]] == [case.name for case in CASES]
    assert all(row["ok"] for row in result["synthetic"]) and result["real"] == [] and result["remuxed"] == []
    assert f"{len(CASES)} synthetic cases, 0 real clips, 0 remuxed copies: 0 off" in capsys.readouterr().out


def test_clock_check_bench_refuses_a_negative_count(capsys):
    from bench.clock_check import main

    assert main(["--remux-clips", "-1", "--out", "unused.json"]) == 2
    assert "--remux-clips" in capsys.readouterr().err
