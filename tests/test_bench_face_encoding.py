"""A CPU smoke run of the face-crop encoding benchmark on real shards."""

from __future__ import annotations

import json
import math

import pytest

from bench.face_encoding import FPS, WINDOWS_PER_SEGMENT, main


def test_face_encoding_bench_measures_every_encoding(trained_expert, tmp_path, capsys):
    out = tmp_path / "face_encoding.json"
    assert main(["--shards", str(trained_expert.parent / "shards"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["encoding"]: row for row in result["results"]}
    assert len(rows) == 6 and result["crop_size"] == 96
    # The first 8 segments (--size 1) of the shards, or all of them where there are fewer.
    stats = [json.loads(p.read_text()) for p in sorted((trained_expert.parent / "shards").glob("shard-*.json"))]
    assert stats, "the fixture's shards come with their stats"
    assert result["segments"] == min(8, sum(s["samples"] for s in stats)) >= 4
    for row in rows.values():
        assert row["decode_ms_per_window"] * WINDOWS_PER_SEGMENT == pytest.approx(row["decode_ms_per_segment"])
        assert row["gb_per_video_hour"] == pytest.approx(row["bytes_per_frame"] * FPS * 3600 / 1e9)
    side = result["crop_size"]
    # Lossless encodings come back exact; raw arrays cost their pixels plus a small header.
    assert math.isinf(rows["raw npy"]["psnr_db"]) and math.isinf(rows["png strip"]["psnr_db"])
    assert side * side * 3 <= rows["raw npy"]["bytes_per_frame"] < side * side * 3 + 200
    # The stored layout (one JPEG per segment) is smaller than the raw pixels and than a JPEG per frame.
    chosen, per_frame, raw = rows["jpeg strip q95"], rows["jpeg per frame q95"], rows["raw npy"]
    assert chosen["bytes_per_frame"] < per_frame["bytes_per_frame"] < raw["bytes_per_frame"]
    assert chosen["psnr_db"] > 35
    printed = capsys.readouterr().out
    assert f"{result['segments']} segments, {result['frames']} frames of 96 px crops" in printed
    lines = printed.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("encoding ")) + 1:][:len(rows)]
    assert [line.split()[-1] for line in table] == [f"{row['psnr_db']:.1f}" for row in rows.values()]
    assert all(line.startswith(name + " ") for line, name in zip(table, rows))


def test_face_encoding_bench_names_an_empty_folder(tmp_path, capsys):
    assert main(["--shards", str(tmp_path), "--out", str(tmp_path / "out.json")]) == 2
    assert "no samples found" in capsys.readouterr().err
