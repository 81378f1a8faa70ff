"""The shard format and the records the part writer takes: old shards still read, the version is written, keys
pick no paths, records survive a batch and the writer's parts, verdicts come from what producers set."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from model.loader.stream import PairStream
from model.loader.windows import PairConfig
from pipelines.core.clock import EXPERT_CLOCK, Clock
from pipelines.core.storage import StorageConfig, join
from pipelines.shards.format import (FORMAT_VERSION, clock_json, part_folder, sample_clock, sample_key,
                                     sample_members, sample_track, shard_number, stats_of, tar_bytes, track_json)
from pipelines.shards import reader
from pipelines.shards.reader import ShardWarning, iter_segments, list_shards
from pipelines.shards.records import (ChunkRecord, EndRecord, Failure, SampleSummary, batch_of, chunk_part,
                                      records_of)
from pipelines.shards.writer import PartWriter, ShardConfig, complete_videos, pack, shard_stats, write_index

LOCAL = StorageConfig()
CROP = 32


def finished(shard: Path, data: bytes) -> None:
    """Write a shard as the packer finishes one: the tar, then its stats json, the completion marker."""
    shard.write_bytes(data)
    Path(stats_of(str(shard))).write_text("{}")


def grey_faces(frames: int, level: int) -> np.ndarray:
    """Crops a JPEG keeps to within a level or two: flat grey, one shade per frame."""
    shades = (level + 3 * np.arange(frames)).astype(np.uint8)
    return np.repeat(shades, CROP * CROP * 3).reshape(frames, CROP, CROP, 3)


def sample(key: str, frames: int, start_frame: int = 0, clock: Clock = EXPERT_CLOCK, level: int = 40) -> tuple:
    """(faces, mel, meta) of one sample as a producer hands it to `chunk_part`."""
    mel = np.random.default_rng(frames).standard_normal((80, clock.mel_column(frames))).astype(np.float32)
    meta = {"key": key, "source": f"/in/{key}.mp4", "source_key": key.split("_f")[0], "start_frame": start_frame,
            "speaker": "spk", "split": "train", "aligner": "dlib"}
    return grey_faces(frames, level), mel, meta


def old_layout_tar(samples: list[tuple], mel_fps: float) -> bytes:
    """Samples as shards were written before the format had a version: no "format", no "clock", by hand."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for faces, mel, meta in samples:
            key, frames = meta["key"], len(faces)
            strip = np.ascontiguousarray(faces.reshape(-1, CROP, 3)[..., ::-1])
            npy = io.BytesIO()
            np.save(npy, mel, allow_pickle=False)
            old_meta = dict(meta, num_frames=frames, start_s=meta["start_frame"] / 25,
                            end_s=(meta["start_frame"] + frames) / 25, fps=25, mel_fps=mel_fps, crop_size=CROP,
                            source_fps=30.0, source_sample_rate=44100, separated=True, quality={})
            members = {f"{key}.jpg": cv2.imencode(".jpg", strip, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(),
                       f"{key}.mel.npy": npy.getvalue(), f"{key}.json": json.dumps(old_meta).encode()}
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_shards_of_the_old_layout_read_as_before(tmp_path):
    samples = [sample("a_f0000000", 7), sample("a_f0000020", 12, start_frame=20, level=90)]
    finished(tmp_path / "shard-000000.tar", old_layout_tar(samples, mel_fps=80.0))
    part, summaries = chunk_part(samples, EXPERT_CLOCK)
    finished(tmp_path / "shard-000001.tar", part)
    # A version-0 shard at another mel rate: its clock is derived from its rates, at 16 kHz.
    other = Clock(hop_length=160)
    finished(tmp_path / "shard-000002.tar", old_layout_tar([sample("b_f0000000", 9, clock=other)], 100.0))

    counters: dict = {}
    old, new, other_rate = [list(iter_segments([uri], LOCAL, None, counters=counters))
                            for uri in list_shards(str(tmp_path), LOCAL)]
    assert counters == {"shards": 3, "samples": 5, "segments": 5}
    assert [s.key for s in old] == [s.key for s in new] == ["a_f0000000", "a_f0000020"]
    for before, after, (faces, mel, _) in zip(old, new, samples):
        assert np.array_equal(before.faces, after.faces) and np.abs(before.faces - faces.astype(int)).max() <= 2
        assert np.array_equal(before.mel, mel) and np.array_equal(after.mel, mel)
        assert "format" not in before.meta and "clock" not in before.meta and sample_clock(before.meta) == EXPERT_CLOCK
        assert after.meta["format"] == FORMAT_VERSION == 1 and after.meta["clock"] == clock_json(EXPERT_CLOCK)
        assert sample_clock(after.meta) == EXPERT_CLOCK
        assert {k: after.meta[k] for k in ("num_frames", "start_s", "end_s", "fps", "mel_fps", "crop_size")} == \
            {k: before.meta[k] for k in ("num_frames", "start_s", "end_s", "fps", "mel_fps", "crop_size")}
    assert summaries == tuple(SampleSummary.from_meta(s.meta) for s in new)
    assert sample_clock(other_rate[0].meta) == other and other_rate[0].mel.shape == (80, other.mel_column(9))


def test_training_refuses_samples_of_another_clock(tmp_path):
    """The rates alone (25 fps, 80 columns/s) agree; the sample rate they were computed at does not."""
    at_48k = Clock(sample_rate=48000, hop_length=600)
    part, _ = chunk_part([sample("a_f0000000", 30, clock=at_48k)], at_48k)
    finished(tmp_path / "shard-000000.tar", part)
    uris = list_shards(str(tmp_path), LOCAL)
    assert [s.mel.shape for s in iter_segments(uris, LOCAL, None)] == [(80, 96)]
    stream = PairStream(uris, LOCAL, None, PairConfig(), EXPERT_CLOCK, batch_size=4, seed=0, repeat=False)
    with pytest.raises(ValueError, match="preprocess with the expert's clock"):
        next(iter(stream))


def test_training_refuses_box_crops(tmp_path):
    """Box crops (what curation with an imported Wav2Lip expert writes) are not what our experts train on."""
    faces, mel, meta = sample("a_f0000000", 30)
    part, _ = chunk_part([(faces, mel, {**meta, "crop": "box"})], EXPERT_CLOCK)
    finished(tmp_path / "shard-000000.tar", part)
    stream = PairStream(list_shards(str(tmp_path), LOCAL), LOCAL, None, PairConfig(), EXPERT_CLOCK, batch_size=4,
                        seed=0, repeat=False)
    with pytest.raises(ValueError, match="holds box face crops"):
        next(iter(stream))


def test_unknown_versions_and_keys_that_are_paths_are_skipped(tmp_path):
    members = {}
    for key, change in [("a_f0000000", {}), ("a_f0000010", {"format": FORMAT_VERSION + 1}),
                        ("a_f0000020", {"source_key": "../../elsewhere"})]:
        part, _ = chunk_part([sample(key, 6)], EXPERT_CLOCK)
        with tarfile.open(fileobj=io.BytesIO(part)) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                if member.name.endswith(".json"):
                    data = json.dumps(json.loads(data) | change).encode()
                members[member.name] = data
    finished(tmp_path / "shard-000000.tar", tar_bytes(members))
    counters: dict = {}
    with pytest.warns(ShardWarning) as caught:
        read = list(iter_segments(list_shards(str(tmp_path), LOCAL), LOCAL, None, counters=counters))
    assert [s.key for s in read] == ["a_f0000000"] and counters["bad_samples"] == 2
    messages = " ".join(str(w.message) for w in caught)
    assert f"format {FORMAT_VERSION + 1}" in messages and "'../../elsewhere' is not a key" in messages
    for key in ("../x", "a/b", "a.b", ""):
        with pytest.raises(ValueError, match="is not a key"):
            part_folder(str(tmp_path), key)


def test_shard_paths():
    assert shard_number("s3://b/out/shard-000012.tar", "tar") == 12
    assert shard_number("out/shard-000012.json", "json") == 12
    assert shard_number("out/shard-000012.json", "tar") is None
    assert shard_number("out/_parts/v/shard-000001.tar", "tar") is None
    assert shard_number("out/myshard-000001.tar", "tar") is None
    assert stats_of("s3://b/out/shard-000012.tar") == "s3://b/out/shard-000012.json"


def test_records_go_through_a_batch_and_the_part_writer_to_verdicts(tmp_path):
    output = str(tmp_path / "out")
    part, summaries = chunk_part([sample("ok_f0000000", 8), sample("ok_f0000030", 6, start_frame=30)], EXPERT_CLOCK)
    notes = ({"segment": "ok_f0000000", "score": 0.5}, {"segment": "ok_f0000030", "score": None})
    items = [
        (ChunkRecord("ok", "/in/ok.mp4", 0, samples=summaries, frames=40, frames_with_face=36, dropped_short=1,
                     annotations=notes), part),
        (ChunkRecord("ok", "/in/ok.mp4", 1, frames=3, frames_with_face=3, dropped_short=1), b""),
        (EndRecord("ok", "/in/ok.mp4", chunks=2), b""),
        (EndRecord("broken", "/in/broken.mp4", chunks=0, failure=Failure("no_audio", "has no audio stream")), b""),
        (ChunkRecord("faceless", "/in/faceless.mp4", 0, frames=25), b""),
        (EndRecord("faceless", "/in/faceless.mp4", chunks=1), b""),
        (ChunkRecord("skipped", "/in/skipped.mp4", 0, frames=25, frames_with_face=25), b""),
        (EndRecord("skipped", "/in/skipped.mp4", chunks=1, empty_reason="out_of_sync"), b""),
        (ChunkRecord("unfinished", "/in/unfinished.mp4", 0, frames=25, frames_with_face=25), b""),
    ]
    batch = batch_of(items)
    assert set(batch) == {"record", "part"} and records_of(batch) == [record for record, _ in items]
    out = PartWriter(output, LOCAL)(batch)
    assert set(out) == {"record"} and records_of(out) == [record for record, _ in items]

    complete = complete_videos(output, LOCAL)
    assert sorted(complete) == ["broken", "faceless", "ok", "skipped"]  # "unfinished" has no end record yet
    assert complete["ok"] == [record for record, _ in items[:3]]

    [stats] = pack(output, LOCAL, ShardConfig())
    assert stats == shard_stats(output, LOCAL)[0] and stats["shard"] == "shard-000000.tar" and stats["samples"] == 2
    videos = {video["key"]: video for video in stats["videos"]}
    assert videos["ok"] == {"key": "ok", "uri": "/in/ok.mp4", "status": "ok", "reason": "", "detail": "",
                            "frames": 43, "frames_with_face": 39, "dropped_short": 2,
                            "samples": [asdict(s) for s in summaries],
                            "annotations": list(notes)}
    assert (videos["broken"]["status"], videos["broken"]["reason"], videos["broken"]["detail"]) == \
        ("failed", "no_audio", "has no audio stream")
    assert [videos[k]["reason"] for k in ("faceless", "skipped")] == ["no_face", "out_of_sync"]
    assert all("annotations" not in videos[k] for k in ("broken", "faceless", "skipped"))
    assert [s.key for s in iter_segments(list_shards(output, LOCAL), LOCAL, None)] == ["ok_f0000000", "ok_f0000030"]
    assert list((tmp_path / "out" / "_parts").iterdir()) == [tmp_path / "out" / "_parts" / "unfinished"]

    assert write_index(output, LOCAL) == {"sample": 2, "failure": 3}
    index = pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()
    assert [(r["kind"], r["key"], r["source_key"], r["num_frames"]) for r in index if r["kind"] == "sample"] == \
        [("sample", "ok_f0000000", "ok", 8), ("sample", "ok_f0000030", "ok", 6)]


def claiming(part: bytes, name: str, size: int) -> bytes:
    """The tar `part` with one more member, `name`, whose header claims `size` bytes (GNU base-256 sizes reach
    2**63), and a little data after it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(part)) as source:
        tar = tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT)
        for member in source.getmembers():
            tar.addfile(member, source.extractfile(member))
    info = tarfile.TarInfo(name)
    info.size = size
    return buffer.getvalue() + info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 4096  # tar never closed: no end blocks


def read_in_thread(uris: list[str], counters: dict) -> list:
    """iter_segments' keys, read in a thread so that a reader that hangs fails the test instead of stalling it."""
    keys: list = []
    reader = threading.Thread(target=lambda: keys.extend(s.key for s in iter_segments(uris, LOCAL, None,
                                                                                      counters=counters)),
                              daemon=True)
    with pytest.warns(ShardWarning) as caught:
        reader.start()
        reader.join(timeout=60)
    assert not reader.is_alive(), "the reader hangs on a member's claim"
    return keys, " ".join(str(w.message) for w in caught)


@pytest.mark.parametrize("name", ["a_f0000010.pad", "a_f0000010.jpg"])  # passed over, and read
def test_a_member_that_claims_more_than_the_shard_holds_is_a_bad_shard(tmp_path, name):
    for number, key in enumerate(["a_f0000000", "b_f0000000"]):
        finished(tmp_path / f"shard-00000{number * 2}.tar", chunk_part([sample(key, 6)], EXPERT_CLOCK)[0])
    part, _ = chunk_part([sample("c_f0000000", 6)], EXPERT_CLOCK)
    finished(tmp_path / "shard-000001.tar", claiming(part, name, 2 ** 62))
    counters: dict = {}
    keys, messages = read_in_thread(list_shards(str(tmp_path), LOCAL), counters)
    assert keys == ["a_f0000000", "c_f0000000", "b_f0000000"]  # c_f0000000 was whole before the damage: kept
    assert counters["bad_shards"] == 1 and f"{name}' claims {2 ** 62} bytes" in messages


def test_a_member_bigger_than_any_the_format_holds_is_a_bad_shard(tmp_path, monkeypatch):
    part, _ = chunk_part([sample("a_f0000000", 6)], EXPERT_CLOCK)
    finished(tmp_path / "shard-000000.tar", part)
    monkeypatch.setattr(reader, "MAX_MEMBER_BYTES", 1000)  # a real bound's worth of test data would be 1 GiB
    counters: dict = {}
    keys, messages = read_in_thread(list_shards(str(tmp_path), LOCAL), counters)
    assert keys == [] and counters["bad_shards"] == 1 and "more than a member may hold (1000)" in messages


def test_no_path_built_from_what_a_shard_says_leaves_the_output(tmp_path):
    output = tmp_path / "deep" / "out"
    for part in ("..", "a/../../b", "./a", "a/."):
        with pytest.raises(ValueError, match="would leave"):
            join(str(output), "_parts", part)
    assert join(str(output), "/etc/", "x") == f"{output}/etc/x"  # slashes stripped: a part never resets the path

    # The reader passes over samples whose key or source_key is a path, the part writer refuses them.
    members = {}
    for key, change in [("a_f0000000", {}), ("b_f0000000", {"source_key": "../../x"}), ("../y", {})]:
        written, _ = sample_members(*sample("c_f0000000", 6), EXPERT_CLOCK)  # a key, or sample_members refuses
        by_ext = {name.split(".", 1)[1]: data for name, data in written.items()}
        by_ext["json"] = json.dumps(json.loads(by_ext["json"]) | change).encode()
        members |= {f"{key}.{ext}": data for ext, data in by_ext.items()}
    output.mkdir(parents=True)
    finished(output / "shard-000000.tar", tar_bytes(members))
    counters: dict = {}
    with pytest.warns(ShardWarning, match="is not a key"):
        read = list(iter_segments(list_shards(str(output), LOCAL), LOCAL, None, counters=counters))
    assert [s.key for s in read] == ["a_f0000000"] and counters["bad_samples"] == 2
    for key in ("../x", "../../x"):
        batch = batch_of([(ChunkRecord(key, "/in/x.mp4", 0, frames=3), b"part"),
                          (EndRecord(key, "/in/x.mp4", chunks=1), b"")])
        with pytest.raises(ValueError, match="is not a key"):
            PartWriter(str(output), LOCAL)(batch)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == \
        [Path("deep"), Path("deep/out"), Path("deep/out/shard-000000.json"), Path("deep/out/shard-000000.tar")]


def test_parts_a_killed_run_left_of_packed_videos_are_deleted_when_packing_starts(tmp_path):
    output = str(tmp_path / "out")

    def parts_of(key: str) -> dict:
        part, summaries = chunk_part([sample(f"{key}_f0000000", 6)], EXPERT_CLOCK)
        return batch_of([(ChunkRecord(key, f"/in/{key}.mp4", 0, samples=summaries, frames=6, frames_with_face=6),
                          part), (EndRecord(key, f"/in/{key}.mp4", chunks=1), b"")])

    PartWriter(output, LOCAL)(parts_of("a"))
    [first] = pack(output, LOCAL, ShardConfig())
    PartWriter(output, LOCAL)(parts_of("a"))  # as a run killed after the stats json, before the deletion, left them
    PartWriter(output, LOCAL)(parts_of("b"))
    [second] = pack(output, LOCAL, ShardConfig())
    assert [v["key"] for v in first["videos"]] == ["a"] and [v["key"] for v in second["videos"]] == ["b"]
    assert list((tmp_path / "out" / "_parts").iterdir()) == []
    assert [s.key for s in iter_segments(list_shards(output, LOCAL), LOCAL, None)] == ["a_f0000000", "b_f0000000"]


def test_a_sample_names_its_face_and_older_samples_are_the_first_face():
    assert sample_key("vid", 53) == "vid_f0000053" == sample_key("vid", 53, face=0)  # as written before
    assert sample_key("vid", 53, face=1) == "vid_g0000053" and len(sample_key("vid", 53, face=7)) == len("vid_f0000053")
    assert sample_track({"face": 2, "track": 5}) == (2, 5) and sample_track({}) == (0, 0)
    assert track_json(1, 3, np.array([0.1, 0.2, 0.3, 0.4])) == {"face": 1, "track": 3, "box": [0.1, 0.2, 0.3, 0.4]}
    assert track_json(0, 0, np.full(4, np.nan)) == {"face": 0, "track": 0}
