"""The synthetic-face speed bench: both face kinds measured, every row a positive rate, the JSON written."""

from __future__ import annotations

import json

from bench.synthetic_faces import main


def test_synthetic_faces_bench_measures_both_kinds(tmp_path):
    out = tmp_path / "faces.json"
    assert main(["--frames", "5", "--videos", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(row["faces"], row["frame_size"]) for row in rows] == [
        (faces, size) for faces in ("drawn", "photo") for size in ("256x256", "480x360", "corpus mix")]
    assert all(row["frames_per_s"] > 0 for row in rows)
    assert all(row["video_s_per_s"] > 0 for row in rows if row["frame_size"] == "corpus mix")
