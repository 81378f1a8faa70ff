"""The training bench at its smallest size on a CPU, and the research loader's mel against the project's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.baselines.research_loader import BASIS_FILE, LAYOUT_FILE, build_layout, log_mel_numpy, read_wav
from bench.training import main
from pipelines.audio import AudioConfig, _mel_basis, log_mel, prepare
from pipelines.faces.base import FaceConfig
from pipelines.media import read_audio


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 short videos in one shard (fewer shards than loader processes: the bench also repacks them)."""
    from pipelines.preprocess import PreprocessConfig, run
    from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

    root = tmp_path_factory.mktemp("bench_training")
    generate_corpus(SyntheticConfig(out=root / "corpus", num_videos=4, seed=1, min_seconds=3, max_seconds=4,
                                    workers=2, heldout_fraction=0), progress=False)
    run(PreprocessConfig(input=str(root / "corpus"), output=str(root / "shards"), progress=False,
                         faces=FaceConfig(aligner="dlib")))
    return root / "shards"


def assert_rate_counts_its_samples(measured: dict, batch: int) -> None:
    """A loader measurement: whole batches counted, and the rate is what was counted over the time it took."""
    assert measured["samples"] % batch == 0 and measured["samples"] >= 2 * batch
    assert measured["samples_per_s"] == pytest.approx(measured["samples"] / measured["seconds"])


def test_training_bench_tiny_on_cpu(shards, tmp_path, capsys):
    out = tmp_path / "training.json"
    result = main(["--shards", str(shards), "--size", "tiny", "--device", "cpu", "--preset", "cpu-small",
                   "--loader-workers", "2", "--out", str(out), "--quiet", "--strict"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))

    steps = {(r["precision"], r["batch"]) for r in result["step"]}
    assert steps == {(p, b) for p in ("fp32", "bf16-cl") for b in (4, 8)}
    for row in result["step"]:  # samples/s and ms/step are one measurement of `steps` steps of `batch`
        assert row["steps"] >= 2 and row["samples_per_s"] * row["ms_per_step"] / 1000 == pytest.approx(row["batch"])

    loaders = [(r["loader"], r["shards"], r["workers"]) for r in result["loader"]]
    assert loaders == [("PairStream", "given (1)", 0), ("PairStream", "given (1)", 2),
                       ("PairStream", "resharded (2)", 2)]
    for row in result["loader"]:
        assert "error" not in row
        assert_rate_counts_its_samples(row, 8)
    [e2e] = result["end_to_end"]
    assert_rate_counts_its_samples(e2e, 8)
    assert e2e["ceiling_samples_per_s"] == max(r["samples_per_s"] for r in result["step"] if r["batch"] == 8)
    assert e2e["ratio_to_ceiling"] == pytest.approx(e2e["samples_per_s"] / e2e["ceiling_samples_per_s"])
    profile = result["loader_profile"]
    assert profile["top"] and 0 < sum(r["share"] for r in profile["top"]) <= 1 + 1e-9

    research = result["research"]
    assert_rate_counts_its_samples(research["alone"], 8)
    assert_rate_counts_its_samples(research["end_to_end"], 8)
    assert research["layout"]["segments"] > 0 and research["mel"] == "librosa"
    # Both loaders feed the same step: ours holds the crops' lower halves, the research loader whole crops, which
    # the bench cuts to their lower halves on the way to the step; the mels and labels are alike.
    ours, theirs = result["loader"][0]["batch"], research["alone"]["batch"]
    assert ours["faces"] == {"dtype": "uint8", "shape": [8, 5, 48, 96, 3]}
    assert theirs["faces"] == {"dtype": "uint8", "shape": [8, 5, 96, 96, 3]}
    assert {k: theirs[k] for k in ("mels", "labels")} == {k: ours[k] for k in ("mels", "labels")}
    assert research["sample"] == {k: {"dtype": v["dtype"], "shape": v["shape"][1:]} for k, v in theirs.items()}

    # The headline numbers are the rows' own, and their ratios.
    summary, ours_alone = result["summary"], max(r["samples_per_s"] for r in result["loader"] if r["workers"] == 2)
    assert summary["ceiling_samples_per_s"] == e2e["ceiling_samples_per_s"]
    assert summary["our_loader_samples_per_s"] == ours_alone
    assert (summary["end_to_end_samples_per_s"], summary["ratio_to_ceiling"]) == (e2e["samples_per_s"],
                                                                                   e2e["ratio_to_ceiling"])
    assert summary["ours_over_research_alone"] == pytest.approx(ours_alone / research["alone"]["samples_per_s"])
    assert summary["ours_over_research_end_to_end"] == pytest.approx(
        e2e["samples_per_s"] / research["end_to_end"]["samples_per_s"])
    # The printed step table is the JSON's rows.
    printed = capsys.readouterr().out.splitlines()
    step_lines = [line.split()[:2] for line in printed if line.split()[:1] in (["fp32"], ["bf16-cl"])]
    assert step_lines == [[r["precision"], str(r["batch"])] for r in result["step"]]


def test_numpy_mel_matches_the_projects_log_mel(shards, tmp_path):
    """The research loader computes log_mel without librosa where it is absent (the GPU machine)."""
    layout = build_layout(shards, tmp_path / "layout", max_segments=2)
    assert layout["segments"] and (tmp_path / "layout" / LAYOUT_FILE).is_file()
    config = AudioConfig()
    basis = np.load(tmp_path / "layout" / BASIS_FILE)
    np.testing.assert_array_equal(basis, _mel_basis(config))
    wav, rate = read_wav(tmp_path / "layout" / layout["segments"][0]["key"] / "audio.wav")
    source = json.loads(sorted(shards.glob("shard-*.json"))[0].read_text())["videos"][0]["uri"]
    audio, source_rate = read_audio(source)
    settings = layout["audio"]
    for samples in (wav, prepare(audio, source_rate, config), np.zeros(1000, np.float32)):
        expected = log_mel(samples, config)
        got = log_mel_numpy(samples, settings, basis)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-3)
    assert rate == config.clock.sample_rate and len(wav) == layout["segments"][0]["frames"] * config.clock.samples_per_frame
