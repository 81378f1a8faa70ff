"""Commands' options come from their config dataclasses, nested sub-configs flattened."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from model.sync.curate import CurateConfig
from pipelines.core.cli import parse_command, parse_config
from pipelines.decode import DecodeConfig
from pipelines.faces.base import FaceConfig
from pipelines.preprocess import PreprocessConfig
from train_ray import TrainConfig


@dataclass(frozen=True)
class Inner:
    """inner settings"""

    size: int = field(default=3, metadata={"help": "a size"})
    name: str = field(default="x", metadata={"help": "a name"})


@dataclass(frozen=True)
class Outer:
    path: Path = field(metadata={"help": "where"})
    inner: Inner = field(default_factory=Inner, metadata={"help": "the inner part", "omit": ("name",)})
    flag: bool = field(default=False, metadata={"help": "a switch"})


def test_nested_options_are_flat_and_rebuild_the_tree(capsys):
    config = parse_config(Outer, "test", ["--path", "a/b", "--size", "7", "--flag"])
    assert config == Outer(path=Path("a/b"), inner=Inner(size=7), flag=True)
    with pytest.raises(SystemExit):
        parse_config(Outer, "test", ["--path", "a", "--name", "y"])  # omitted: the command sets it itself
    with pytest.raises(SystemExit):
        parse_config(Outer, "test", ["--help"])
    help_text = capsys.readouterr().out
    assert "the inner part:" in help_text and "--size SIZE" in help_text and "--name" not in help_text


def test_one_name_in_two_places_is_refused():
    @dataclass(frozen=True)
    class Clash:
        size: int = 1
        inner: Inner = field(default_factory=Inner)

    with pytest.raises(ValueError, match="--size is both size and inner.size"):
        parse_config(Clash, "test", [])


# Options as they were before configs were nested (2026-11-30): each must still parse.
OLD_PREPROCESS = ["--input", "in", "--output", "out", "--endpoint", "http://x", "--aligner", "dlib", "--device", "cpu",
                  "--crop-size", "64", "--chunk-seconds", "4", "--max-side", "320", "--no-separate",
                  "--min-segment-frames", "7", "--val-fraction", "0.1", "--num-workers", "3", "--no-fuse-stages",
                  "--max-cpus", "2", "--face-workers", "1", "--shard-max-samples", "10", "--shard-max-mb", "8",
                  "--ray-address", "auto", "--no-progress"]


def test_preprocess_options_keep_their_names():
    config = parse_config(PreprocessConfig, "test", OLD_PREPROCESS)
    assert config.storage.endpoint == "http://x" and config.faces == FaceConfig(aligner="dlib", device="cpu", crop_size=64)
    assert config.decode == DecodeConfig(chunk_seconds=4.0, max_side=320)
    assert (config.samples.separate, config.samples.min_segment_frames) == (False, 7)
    assert (config.shards.shard_max_samples, config.shards.shard_max_mb) == (10, 8.0)
    assert (config.val_fraction, config.num_workers, config.fuse_stages, config.max_cpus, config.face_workers,
            config.ray_address, config.progress) == (0.1, 3, False, 2.0, 1, "auto", False)


def test_train_options_keep_their_names():
    config = parse_config(TrainConfig, "test", [
        "--shards", "s", "--endpoint", "http://x", "--preset", "full", "--windows-per-segment", "64",
        "--hard-shift-min", "3", "--hard-shift-max", "5", "--easy-shift-max", "50", "--hard-fraction", "0.4",
        "--easy-fraction", "0.3", "--batch-size", "32"])
    assert config.pairs.windows_per_segment == 64 and config.pairs.hard_shift_min == 3
    assert (config.pairs.hard_shift_max, config.pairs.easy_shift_max, config.pairs.hard_fraction,
            config.pairs.easy_fraction) == (5, 50, 0.4, 0.3)
    assert (config.storage.endpoint, config.preset, config.batch_size) == ("http://x", "full", 32)


def test_curate_options_keep_their_names_and_scoring_nests():
    commands = {"curate": (CurateConfig, "curate")}
    name, config = parse_command(commands, "sync", "test", argv=[
        "curate", "--input", "i", "--output", "o", "--checkpoint", "c", "--aligner", "dlib", "--device", "cpu",
        "--max-offset", "9", "--max-abs-offset", "4", "--chunk-seconds", "5", "--no-separate", "--endpoint", "e"])
    assert name == "curate" and config.score.checkpoint == "c" and config.score.faces.aligner == "dlib"
    assert (config.score.device, config.score.max_offset, config.max_abs_offset) == ("cpu", 9, 4)
    assert config.score.decode.chunk_seconds == 5.0 and not config.score.samples.separate
    assert config.storage.endpoint == "e"
    with pytest.raises(ValueError, match="--max-abs-offset 10 lies outside the searched --max-offset 9"):
        parse_command(commands, "sync", "test", argv=["curate", "--input", "i", "--output", "o", "--checkpoint", "c",
                                                      "--max-offset", "9", "--max-abs-offset", "10"])
