"""A CPU smoke run of the face-crop encoding benchmark on real shards."""

from __future__ import annotations

import json
import math

from bench.face_encoding import main


def test_face_encoding_bench_measures_every_encoding(trained_expert, tmp_path, capsys):
    out = tmp_path / "face_encoding.json"
    assert main(["--shards", str(trained_expert.parent / "shards"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["encoding"]: row for row in result["results"]}
    assert len(rows) == 6 and result["segments"] > 0 and result["crop_size"] == 96
    side = result["crop_size"]
    # Lossless encodings come back exact; raw arrays cost their pixels plus a small header.
    assert math.isinf(rows["raw npy"]["psnr_db"]) and math.isinf(rows["png strip"]["psnr_db"])
    assert side * side * 3 <= rows["raw npy"]["bytes_per_frame"] < side * side * 3 + 200
    # The stored layout (one JPEG per segment) is smaller than the raw pixels and than a JPEG per frame.
    chosen, per_frame, raw = rows["jpeg strip q95"], rows["jpeg per frame q95"], rows["raw npy"]
    assert chosen["bytes_per_frame"] < per_frame["bytes_per_frame"] < raw["bytes_per_frame"]
    assert chosen["psnr_db"] > 35 and chosen["decode_ms_per_window"] > 0
    assert "jpeg strip q95" in capsys.readouterr().out


def test_face_encoding_bench_names_an_empty_folder(tmp_path, capsys):
    assert main(["--shards", str(tmp_path), "--out", str(tmp_path / "out.json")]) == 2
    assert "no samples found" in capsys.readouterr().err
