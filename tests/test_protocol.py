"""The per-window protocol (model.protocol, `model.evaluate --protocol`): exact tables from an expert whose
similarities are known, determinism, and the JSON, table and plot of the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.evaluate import EvaluateConfig
from model.evaluate import main as evaluate_main
from model.loss import EPS
from model.offset import similarity_grid
from model.protocol import SCHEMA, PerWindowProtocol, ProtocolConfig, SegmentGrid, accuracy_by_context, format_table
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.shards.format import sample_members, stats_of, tar_bytes
from pipelines.shards.reader import Segment

CLOCK = EXPERT_CLOCK
HARD = [k for size in range(2, 7) for k in (size, -size)]  # the default hard shifts (PairConfig)
ALPHA, BETA = 0.6, 0.8  # the time-code expert's similarity in sync, and its weight on hard shifts
HARD_SIMILARITY = BETA / math.sqrt(len(HARD))
CODES = 4096


class TimeCodeExpert(nn.Module):
    """An expert whose similarity is known: faces and mel carry a time code (`coded_segment`); a face window
    is one-hot at its first frame's code, an audio window has ALPHA at its own code and BETA spread over the
    hard shifts around it. So a pair in sync scores ALPHA, a hard negative HARD_SIMILARITY, anything else 0.

    `glitches` {residue: shift}: face windows whose code modulo 8 is a residue read as that many frames later,
    a wrong answer on that window alone.
    """

    def __init__(self, glitches: dict[int, int] | None = None):
        super().__init__()
        self.config = ModelConfig(face_size=4)
        self.glitches = glitches or {}
        self.anchor = nn.Parameter(torch.zeros(1))  # where the expert lives, for the code that asks

    @staticmethod
    def prepare_faces(windows: torch.Tensor) -> torch.Tensor:
        return windows[:, 0, 0, 0, 0].long() + 256 * windows[:, 0, 0, 0, 1].long()

    @staticmethod
    def prepare_mels(mels: torch.Tensor) -> torch.Tensor:
        return mels[:, 0, 0].round().long()

    def embed_faces(self, codes: torch.Tensor) -> torch.Tensor:
        late = torch.tensor([self.glitches.get(int(c) % 8, 0) for c in codes])
        return F.one_hot(codes + late, CODES).float()

    def embed_audio(self, codes: torch.Tensor) -> torch.Tensor:
        spread = sum(F.one_hot(codes + k, CODES).float() for k in HARD) / math.sqrt(len(HARD))
        return ALPHA * F.one_hot(codes, CODES).float() + BETA * spread


def coded_segment(video: int, frames: int, truth: int, start: int = 0) -> Segment:
    """Frames of video `video` from `start` on, coded 100 + 1000 * video + frame; the audio is `truth` frames
    late, so the mel column of frame a carries the code of frame a - truth (every column that of its nearest
    frame, so a window cut one column early or late reads the same frame)."""
    base = 100 + 1000 * video + start
    faces = np.zeros((frames, 4, 4, 3), np.uint8)
    codes = base + np.arange(frames)
    faces[:, 0, 0, 0], faces[:, 0, 0, 1] = codes % 256, codes // 256
    columns = CLOCK.mel_column(frames)
    nearest = np.rint(np.arange(columns) * CLOCK.fps / CLOCK.mel_fps)
    mel = np.repeat((base + nearest - truth)[None].astype(np.float32), 80, axis=0)
    return Segment(key=f"v{video}_f{start}", source_key=f"v{video}", speaker=f"s{video}", split="val", faces=faces,
                   mel=mel)


# Video 0: audio 3 frames late, two segments; video 1: audio 7 frames early, one segment.
CORPUS = [("v0", 3, 90, 0), ("v0", 3, 44, 200), ("v1", -7, 70, 0)]


def protocol_of(expert, config: ProtocolConfig = ProtocolConfig(), corpus=CORPUS) -> dict:
    protocol = PerWindowProtocol(expert, config)
    for video, truth, frames, start in corpus:
        segment = coded_segment(int(video[1]), frames, truth, start)
        protocol.add(video, truth, segment, similarity_grid(expert, segment.faces, segment.mel, 15))
    return protocol.summary()


def test_offset_table_is_exact_for_a_known_expert():
    """A window whose face reads 5 frames late (code = 0 mod 8) misses at C = 5, one reading 1 late (4 mod 8)
    is off by one; from C = 7 on no context holds two of them, so every window is right."""
    glitches = {0: 5, 4: 1}
    summary = protocol_of(TimeCodeExpert(glitches))
    codes = {}  # per video, the codes of the first frames of its searchable 5-frame windows
    for video, _, frames, start in CORPUS:
        # Searchable: 15 frames of room either way, within the segment.
        first = 100 + 1000 * int(video[1]) + start
        codes.setdefault(video, []).extend(first + np.arange(15, frames - 5 - 15 + 1))
    codes = {video: np.array(c) for video, c in codes.items()}
    exact = np.mean([np.mean(~np.isin(c % 8, list(glitches))) for c in codes.values()])
    within = np.mean([np.mean(c % 8 != 0) for c in codes.values()])
    rows = {row["context"]: row for row in summary["contexts"]}
    assert list(rows) == [5, 7, 9, 11, 13, 15]
    assert rows[5]["exact"] == pytest.approx(exact) and rows[5]["within_1"] == pytest.approx(within)
    assert rows[5]["windows"] == sum(len(c) for c in codes.values()) and rows[5]["videos"] == 2
    pooled = np.concatenate(list(codes.values()))
    assert rows[5]["pooled_exact"] == pytest.approx(np.mean(~np.isin(pooled % 8, list(glitches))))
    for context in (7, 9, 11, 13, 15):
        assert rows[context]["exact"] == rows[context]["within_1"] == 1.0
        # A context of C frames holds C - 4 windows: C - 5 fewer test windows per segment than at C = 5.
        assert rows[context]["windows"] == rows[5]["windows"] - 3 * (context - 5)


def test_pairs_and_lse_are_exact_for_a_known_expert():
    summary = protocol_of(TimeCodeExpert())
    assert summary["contexts"][0]["exact"] == 1.0
    rows = {row["kind"]: row for row in summary["pairs"]}
    assert list(rows) == ["hard", "easy", "other"]
    in_sync = -math.log(ALPHA)
    expected_bce = {"hard": (in_sync - math.log(1 - HARD_SIMILARITY)) / 2, "easy": (in_sync - math.log(1 - EPS)) / 2,
                    "other": (in_sync - math.log(1 - EPS)) / 2}
    for kind, row in rows.items():
        assert row["accuracy"] == row["positives_right"] == row["negatives_right"] == 1.0
        assert row["bce"] == pytest.approx(expected_bce[kind], rel=1e-5)
    # Each negative with the positive of its face window. Video 0's segments come first: no other video's audio
    # before them, so only video 1 gives other-video pairs.
    per_segment = 2 * ProtocolConfig().pairs_per_segment
    assert rows["hard"]["pairs"] == rows["easy"]["pairs"] == len(CORPUS) * per_segment
    assert rows["other"]["pairs"] == per_segment
    # In sync at the truth 1 - ALPHA; ten hard shifts at 1 - HARD_SIMILARITY and twenty at 1: the median is 1.
    assert summary["lse_d"] == pytest.approx(1 - ALPHA) and summary["lse_c"] == pytest.approx(ALPHA)
    assert summary["videos"] == 2 and summary["segments"] == 3


def test_a_threshold_above_the_in_sync_similarity_calls_every_pair_out_of_sync():
    summary = protocol_of(TimeCodeExpert(), ProtocolConfig(threshold=ALPHA + 0.1))
    for row in summary["pairs"]:
        assert row["positives_right"] == 0.0 and row["negatives_right"] == 1.0 and row["accuracy"] == 0.5


def test_the_protocol_is_deterministic_and_its_seed_moves_only_the_pairs():
    expert = TimeCodeExpert({0: 5, 4: 1})  # glitched positives: which windows are drawn shows in the figures
    first, again = protocol_of(expert), protocol_of(expert)
    other_seed = protocol_of(expert, ProtocolConfig(seed=1))
    for summary in (first, again, other_seed):
        summary.pop("seconds")
    assert first == again
    assert other_seed["contexts"] == first["contexts"] and other_seed["lse_d"] == first["lse_d"]
    assert other_seed["pairs"] != first["pairs"]


def test_a_figure_with_nothing_to_measure_it_on_is_missing_not_zero():
    summary = protocol_of(TimeCodeExpert(), corpus=CORPUS[:2])  # one video: no other video's audio to pair with
    other = summary["pairs"][-1]
    assert other["kind"] == "other" and other["pairs"] == 0 and other["accuracy"] is other["bce"] is None
    assert format_table(summary).splitlines()[-2].split() == ["other", "0", "-", "-", "-", "-"]
    assert json.loads(json.dumps(summary))["pairs"][-1]["accuracy"] is None


def test_short_segments_and_videos_drop_out_of_the_longer_contexts():
    shifts = np.arange(-2, 3)
    similarity = np.zeros((5, 3))
    similarity[2] = 1.0  # every window right at shift 0
    rows = accuracy_by_context([SegmentGrid("a", 0, shifts, similarity)], (5, 7, 9), 5)
    assert [(r["windows"], r["videos"], r["exact"]) for r in rows] == [(3, 1, 1.0), (1, 1, 1.0), (0, 0, None)]


def test_settings_are_checked_before_any_work():
    with pytest.raises(ValueError, match="contexts"):
        ProtocolConfig(contexts=(7, 5))
    with pytest.raises(ValueError, match="shorter than the expert.s window of 5"):
        PerWindowProtocol(TimeCodeExpert(), ProtocolConfig(contexts=(3, 5)))
    with pytest.raises(ValueError, match="name a corpus"):
        EvaluateConfig(checkpoint="x")
    with pytest.raises(ValueError, match="add --protocol"):
        EvaluateConfig(checkpoint="x", shards="s", plot="p.png")


# --- the command on shards ------------------------------------------------------------------------------

def write_shard(folder, segments: list[Segment]) -> None:
    members = {}
    for segment in segments:
        meta = {"key": segment.key, "source": f"{segment.source_key}.mp4", "source_key": segment.source_key,
                "start_frame": 0, "speaker": segment.speaker, "split": segment.split, "aligner": "test"}
        members.update(sample_members(segment.faces, segment.mel, meta, CLOCK)[0])
    folder.mkdir()
    (folder / "shard-000000.tar").write_bytes(tar_bytes(members))
    Path(stats_of(str(folder / "shard-000000.tar"))).write_text(json.dumps({"samples": len(segments)}))


def random_segment(video: int, frames: int, rng: np.random.Generator) -> Segment:
    return Segment(key=f"v{video}", source_key=f"v{video}", speaker=f"s{video}", split="val",
                   faces=rng.integers(0, 256, (frames, 96, 96, 3), dtype=np.uint8),
                   mel=rng.uniform(-4, 4, (80, CLOCK.mel_column(frames))).astype(np.float32))


def check_schema(value, schema, where="protocol"):
    if isinstance(schema, dict):
        assert isinstance(value, dict) and set(value) == set(schema), (where, sorted(value))
        for key, kind in schema.items():
            check_schema(value[key], kind, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list) and value, where
        for item in value:
            check_schema(item, schema[0], f"{where}[]")
    else:
        assert isinstance(value, schema) and not isinstance(value, bool), (where, value)
        assert value is not None, f"{where}: every figure has something to measure it on here"


def test_the_command_prints_the_table_writes_its_json_and_draws_it(tmp_path, capsys):
    from bench.scoring import random_checkpoint

    checkpoint = random_checkpoint("cpu-small", tmp_path)
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "shards", [random_segment(0, 50, rng), random_segment(1, 45, rng)])
    args = ["--checkpoint", checkpoint, "--shards", str(tmp_path / "shards"), "--device", "cpu", "--protocol",
            "--pairs-per-segment", "4"]
    outputs = []
    for run in ("first", "again"):
        assert evaluate_main(args + ["--json", str(tmp_path / f"{run}.json"), "--plot", str(tmp_path / "c.png")]) == 0
        outputs.append(json.loads((tmp_path / f"{run}.json").read_text()))
    printed = capsys.readouterr().out
    protocol = outputs[0]["protocol"]
    check_schema(protocol, SCHEMA)
    assert [row["context"] for row in protocol["contexts"]] == [5, 7, 9, 11, 13, 15]
    assert protocol["videos"] == 2 and protocol["segments"] == 2 and protocol["max_offset"] == 15
    # 50 and 45 frames: 50 - 5 - 30 + 1 and 45 - 5 - 30 + 1 windows searched at C = 5.
    assert protocol["contexts"][0]["windows"] == 16 + 11
    for row in protocol["contexts"]:
        assert f"{row['context']:>7}  {row['windows']:>7}  {row['exact']:>6.1%}" in printed
    assert "LSE-D" in printed and "per-window offset accuracy" in printed
    assert (tmp_path / "c.png").stat().st_size > 10_000
    for output in outputs:
        output["protocol"].pop("seconds")
        output.pop("wall_s"), output.pop("video_seconds_per_second")
    assert outputs[0] == outputs[1]


def test_the_command_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--protocol" in text and "--contexts" in text and "--videos" in text and "--plot" in text
