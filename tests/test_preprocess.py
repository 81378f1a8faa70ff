"""Preprocessing end to end on the synthetic corpus: shards, verdicts, alignment, splits, reruns, object storage."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.audio import AudioConfig
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import StorageConfig, list_files
from pipelines.decode import CONTEXT_FRAMES, DecodeConfig, DecodeStage
from pipelines.faces.base import FaceConfig
from pipelines.faces.stage import FaceStage
from pipelines.faces.tracks import face_tracks
from pipelines.preprocess import PreprocessConfig, run
from pipelines.samples import SampleConfig, SampleStage
from pipelines.shards.format import FORMAT_VERSION, clock_json
from pipelines.shards.reader import Segment, iter_segments, list_shards, segments_in_tar
from pipelines.shards.writer import shard_stats
from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus
from pipelines.synthetic.envelope_check import agreement_curve, mel_loudness, mouth_opening_from_crops

LOCAL = StorageConfig()


def all_segments(output: str, storage: StorageConfig = LOCAL) -> dict[str, Segment]:
    """Every sample of the output's shards by key; each has exactly the format's members, all sound."""
    segments, counters = {}, {}
    for segment in iter_segments(list_shards(output, storage), storage, None, counters=counters):
        assert segment.key not in segments, "a sample appears twice"
        segments[segment.key] = segment
    assert not {"bad_shards", "bad_samples", "ignored_members"} & counters.keys(), counters
    return segments


@pytest.fixture(scope="session")
def preprocessed(small_corpus, tmp_path_factory):
    corpus, rows = small_corpus
    output = tmp_path_factory.mktemp("shards")
    summary = run(PreprocessConfig(input=str(corpus), output=str(output), num_workers=2, progress=False,
                                   faces=FaceConfig(aligner="dlib")))
    return output, summary, rows, corpus


def test_samples_have_the_promised_shapes(preprocessed):
    output, summary, _, _ = preprocessed
    segments = all_segments(str(output))
    assert len(segments) == summary["segments"] > 0
    for key, segment in segments.items():
        meta, faces, mel = segment.meta, segment.faces, segment.mel
        assert "." not in key and meta["key"] == key
        assert meta["format"] == FORMAT_VERSION and meta["clock"] == clock_json(EXPERT_CLOCK)
        assert faces.shape == (meta["num_frames"], 96, 96, 3) and faces.dtype == np.uint8
        assert mel.dtype == np.float32 and mel.shape[0] == 80
        assert mel.shape[1] == round(meta["num_frames"] * 80 / 25)  # 16 mel frames per 5 video frames
        assert -4.0 <= mel.min() and mel.max() <= 4.0
        assert meta["num_frames"] >= 5 and meta["fps"] == 25 and meta["aligner"] == "dlib"
        assert meta["end_s"] - meta["start_s"] == pytest.approx(meta["num_frames"] / 25)


def test_every_input_gets_its_verdict(preprocessed):
    output, summary, rows, _ = preprocessed
    index = pq.read_table(output / "index.parquet").to_pylist()
    failures = {Path(r["source"]).name: r["reason"] for r in index if r["kind"] == "failure"}
    expected = {Path(r["path"]).name: r["expected_error"] for r in rows if r["corrupt"]}
    assert failures == expected
    ok_sources = {Path(r["source"]).name for r in index if r["kind"] == "sample"}
    assert ok_sources == {Path(r["path"]).name for r in rows if not r["corrupt"]}
    assert summary["videos_ok"] == 12 and sum(summary["videos_failed"].values()) == 5
    assert all(r["detail"] for r in index if r["kind"] == "failure")


def test_faces_found_and_splits_never_leak(preprocessed):
    output, _, _, _ = preprocessed
    for stats in shard_stats(str(output), LOCAL):
        for video in stats["videos"]:
            if video["status"] == "ok":
                assert video["frames_with_face"] >= 0.95 * video["frames"], video["key"]
    index = [r for r in pq.read_table(output / "index.parquet").to_pylist() if r["kind"] == "sample"]
    for field in ("source_key", "speaker"):
        sides = {}
        for row in index:
            if row[field]:  # a folder input names no speakers
                sides.setdefault(row[field], set()).add(row["split"])
        assert all(len(s) == 1 for s in sides.values()), f"{field} in both splits"
    assert {r["split"] for r in index} <= {"train", "val"}


def test_known_offsets_survive_preprocessing(preprocessed):
    """Resampling to 25 fps and 16 kHz kept lips and audio aligned: the shard data alone gives the offsets.

    A segment carries only its own audio, so at a lag of L frames only T - |L| frames can be compared; the
    check needs about 2.6 s of that to be unambiguous, which the short clips of this corpus give for all but
    the largest offsets.
    """
    output, _, rows, _ = preprocessed
    truth = {Path(r["path"]).name: r["offset_frames"] for r in rows if not r["corrupt"]}
    checked = set()
    for segment in all_segments(str(output)).values():
        meta, faces, mel = segment.meta, segment.faces, segment.mel
        offset = truth[Path(meta["source"]).name]
        if meta["num_frames"] - abs(offset) < 65:
            continue
        times = np.arange(meta["num_frames"]) / meta["fps"]
        curve = agreement_curve(mouth_opening_from_crops(faces), lambda t: mel_loudness(mel, meta["mel_fps"], t),
                                times, max_lag=18)
        lag = max(curve, key=curve.get)
        assert abs(lag - offset) <= 1, (meta["key"], offset, lag)
        checked.add(offset)
    assert 0 in checked and len(checked - {0}) >= 2, checked


def test_rerun_changes_nothing(preprocessed):
    output, first, _, corpus = preprocessed
    before = {p: p.read_bytes() for p in output.glob("shard-*")}
    again = run(PreprocessConfig(input=str(corpus), output=str(output), num_workers=2, progress=False,
                                 faces=FaceConfig(aligner="dlib")))
    assert again["videos_skipped_already_done"] == again["videos_listed"] == 17
    assert {p: p.read_bytes() for p in output.glob("shard-*")} == before
    assert again["segments"] == first["segments"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate_corpus(SyntheticConfig(out=out, num_videos=4, seed=11, heldout_fraction=0, min_seconds=3.0,
                                    max_seconds=3.5, workers=2), progress=False)
    return out / "videos"


class FailsOnCall:
    """Wraps a stage's callable so that its `fail_on`-th call (counted from 0) raises, as a bug or bad data would."""

    def __init__(self, call, fail_on: int):
        self.call, self.fail_on, self.calls = call, fail_on, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls - 1 == self.fail_on:
            raise RuntimeError("boom")
        return self.call(*args)


@pytest.mark.parametrize("stage, method, reason", [(1, "align", "faces_error"), (2, "segment_sample", "samples_error")])
def test_a_stage_failing_on_one_video_fails_that_video_alone(tiny_corpus, tmp_path, stage, method, reason):
    """An error inside the face or the sample stage on one chunk is its video's failure, with the reason and the
    error, and every other video is processed: a raise would have ended the Ray job and every video with it."""
    from pipelines.preprocess import FusedStages, source_rows
    from pipelines.shards.writer import PartWriter, ShardConfig, pack
    from pipelines.sources import list_sources

    config = PreprocessConfig(input=str(tiny_corpus), output=str(tmp_path), faces=FaceConfig(aligner="dlib"),
                              decode=DecodeConfig(chunk_seconds=1.0))
    audio = AudioConfig()
    fused = FusedStages([(DecodeStage, (config.decode, audio, config.storage)), (FaceStage, (config.faces,)),
                         (SampleStage, (audio, config.samples)), (PartWriter, (config.output, config.storage))], 1.0)
    target = fused.stages[stage]
    setattr(target, method, FailsOnCall(getattr(target, method), fail_on=1))  # the first video's 2nd chunk
    rows = source_rows(list_sources(config.input, config.storage), config.val_fraction)
    for row in rows:
        for _ in fused({name: np.array([value]) for name, value in row.items()}):
            pass
    pack(config.output, config.storage, ShardConfig())
    videos = {video["key"]: video for stats in shard_stats(config.output, LOCAL) for video in stats["videos"]}
    failed = [video for video in videos.values() if video["status"] != "ok"]
    assert len(videos) == len(rows) == 4 and len(failed) == 1
    assert failed[0]["key"] == rows[0]["key"] and failed[0]["reason"] == reason
    assert failed[0]["detail"] == "RuntimeError: boom" and failed[0]["samples"] == []
    assert all(video["samples"] for video in videos.values() if video["status"] == "ok")


def test_same_file_name_in_two_folders(tiny_corpus, tmp_path, capfd):
    source = sorted(tiny_corpus.glob("*"))[0]
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        shutil.copy(source, tmp_path / "in" / folder / "clip.mp4")
    run(PreprocessConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), num_workers=2, progress=False,
                         faces=FaceConfig(aligner="dlib"), decode=DecodeConfig(chunk_seconds=2.0)))
    sources = {s.source_key for s in all_segments(str(tmp_path / "out")).values()}
    assert len(sources) == 2
    console = "".join(capfd.readouterr())
    assert "Execution plan of Dataset" not in console and "Starting execution" not in console  # Ray Data's, not ours
    assert "Started a local Ray instance" not in console


def test_a_video_under_a_very_long_path_gives_samples(tiny_corpus, tmp_path):
    # Its key names the samples' tar members, which a USTAR tar holds to 100 bytes: a key cut too long once
    # made the writer raise inside Ray, ending the run.
    folder = tmp_path / "in" / "/".join(["a long folder name, with spaces"] * 6)
    folder.mkdir(parents=True)
    shutil.copy(sorted(tiny_corpus.glob("*"))[0], folder / "the interview, recorded one sunny afternoon.mp4")
    assert len(str(next((tmp_path / "in").rglob("*.mp4")).relative_to(tmp_path / "in"))) > 200
    summary = run(PreprocessConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), num_workers=2,
                                   progress=False, faces=FaceConfig(aligner="dlib"),
                                   decode=DecodeConfig(chunk_seconds=2.0)))
    assert summary["videos_ok"] == 1 and summary["segments"] == len(all_segments(str(tmp_path / "out"))) > 0


def test_unusable_names_are_failed_videos_and_a_linked_file_one_video(tiny_corpus, tmp_path):
    """A name that is not UTF-8, a link to nothing or to itself: each a failed video with its reason, the rest
    processed. A link to a video is not a second video (it could land in the other split), a loop ends."""
    videos, corpus = sorted(tiny_corpus.glob("*")), tmp_path / "in"
    (corpus / "real").mkdir(parents=True)
    shutil.copy(videos[0], corpus / "real" / "clip.mp4")
    (corpus / "same.mp4").symlink_to("real/clip.mp4")
    (corpus / "loop").symlink_to(".")
    (corpus / "gone.mp4").symlink_to("nowhere.mp4")
    (corpus / "self.mp4").symlink_to("self.mp4")
    with open(os.fsencode(corpus) + b"/caf\xe9.mp4", "wb") as out:  # Latin-1, not UTF-8
        out.write(videos[1].read_bytes())
    config = PreprocessConfig(input=str(corpus), output=str(tmp_path / "out"), num_workers=2, progress=False,
                              faces=FaceConfig(aligner="dlib"), decode=DecodeConfig(chunk_seconds=2.0))
    summary = run(config)
    assert (summary["videos_listed"], summary["videos_ok"]) == (4, 1)
    assert summary["videos_failed"] == {"bad_name": 1, "broken_link": 2}
    index = pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()
    failures = {Path(r["source"]).name: (r["reason"], r["detail"]) for r in index if r["kind"] == "failure"}
    assert {name: reason for name, (reason, _) in failures.items()} == \
        {"caf\\xe9.mp4": "bad_name", "gone.mp4": "broken_link", "self.mp4": "broken_link"}
    assert "nowhere.mp4" in failures["gone.mp4"][1]
    assert {r["source"] for r in index if r["kind"] == "sample"} == {str(corpus / "real" / "clip.mp4")}
    assert run(config)["videos_skipped_already_done"] == 4  # failures are recorded for good, like any other


@pytest.mark.parametrize("kind", ["a file", "under a file", "not writable"])
def test_an_unusable_output_is_one_line_and_exit_2_before_ray_starts(tmp_path, kind, monkeypatch, capsys):
    import pipelines.preprocess as preprocess

    def no_ray(*args):
        raise AssertionError("Ray started")

    monkeypatch.setattr(preprocess, "ray_for_job", no_ray)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "clip.mp4").write_bytes(b"not decoded: the output is refused first")
    (tmp_path / "file").write_bytes(b"x")
    output = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "shards", "not writable": Path("/sys")}
    if kind == "not writable" and not output[kind].is_dir():
        pytest.skip("needs Linux's /sys, which no one (root included) may write to")
    assert preprocess.main(["--input", str(tmp_path / "in"), "--output", str(output[kind]), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: output {str(output[kind])!r} ") and error.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_clean(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus in 1 s chunks (several per video), in one run with the default (fused) stages."""
    output = tmp_path_factory.mktemp("tiny_clean")
    run(PreprocessConfig(input=str(tiny_corpus), output=str(output), num_workers=2, progress=False,
                         faces=FaceConfig(aligner="dlib"), decode=DecodeConfig(chunk_seconds=1.0)))
    return output


def test_stages_in_separate_pools_give_the_same_shards(tiny_corpus, tiny_clean, tmp_path):
    """The layout a GPU face stage gets (an actor pool per stage, a cap on the object store) against the fused one,
    here with the face stage on CPUs: byte for byte the same shards."""
    separate = tmp_path / "separate"
    run(PreprocessConfig(input=str(tiny_corpus), output=str(separate), num_workers=2, fuse_stages=False,
                         progress=False, faces=FaceConfig(aligner="dlib"), decode=DecodeConfig(chunk_seconds=1.0)))
    fused_files = {p.name: p.read_bytes() for p in tiny_clean.glob("shard-*")}
    assert len(fused_files) >= 2 and {p.name: p.read_bytes() for p in separate.glob("shard-*")} == fused_files


def map_operators(dataset) -> list:
    """The dataset's map stages in order, from its logical plan (a private Ray Data API: `_logical_plan`)."""
    operators, operator = [], dataset._logical_plan.dag
    while operator.input_dependencies:
        operators.append(operator)
        operator = operator.input_dependencies[0]
    return operators[::-1]


def test_stage_layout_fits_the_cpus_ray_is_given():
    """Every stage's actors fit at once in `num_workers` CPUs, so the chain streams rather than running stage after
    stage: on CPUs one fused actor of one CPU per worker; with a GPU face stage (or --no-fuse-stages) a pool per
    stage whose shares add up to at most `num_workers`, face actors on GPUs, and a cap on what waits between them."""
    import ray

    from pipelines.faces.stage import FaceStage
    from pipelines.preprocess import (FACE_ACTORS_PER_GPU, QUEUED_CHUNKS_PER_FACE_ACTOR,
                                      QUEUED_CHUNKS_PER_GPU_FACE_ACTOR, DecodePool, FacePool, FusedStages, SamplePool,
                                      build_dataset, chunk_bytes_bound)
    from pipelines.samples import SampleStage
    from pipelines.shards.writer import PartWriter

    rows = [{"key": "a", "uri": "/in/a.mp4", "speaker": "", "split": "train"}]
    workers = 3
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        fused = map_operators(build_dataset(rows, PreprocessConfig(input="in", num_workers=workers), use_gpu=False))
        assert [op.fn for op in fused] == [FusedStages]
        assert fused[0].ray_remote_args == {"num_cpus": 1.0}
        assert fused[0].fn_constructor_args[1] == 1.0
        assert fused[0].compute.min_size == fused[0].compute.max_size == workers
        assert fused[0].compute.max_tasks_in_flight_per_actor == 1  # a task is a whole video: no queue per actor
        assert [stage for stage, _ in fused[0].fn_constructor_args[0]][:2] == [DecodeStage, FaceStage]
        for use_gpu, fuse in [(True, True), (False, False)]:
            config = PreprocessConfig(input="in", num_workers=workers, face_workers=1 if use_gpu else 0,
                                      fuse_stages=fuse)
            dataset = build_dataset(rows, config, use_gpu=use_gpu)
            stages = map_operators(dataset)
            assert [op.fn for op in stages] == [DecodePool, FacePool, SamplePool]  # a name per pool, for profiles
            assert [[stage for stage, _ in op.fn_constructor_args[0]] for op in stages] == \
                [[DecodeStage], [FaceStage], [SampleStage, PartWriter]]
            # each actor sizes its thread pools to the CPUs it asks Ray for
            assert [op.fn_constructor_args[1] for op in stages] == [op.ray_remote_args["num_cpus"] for op in stages]
            assert stages[1].ray_remote_args.get("num_gpus", 0) == (1 if use_gpu else 0)
            cpus = sum(op.ray_remote_args["num_cpus"] * op.compute.max_size for op in stages)
            assert cpus <= workers + 1e-9, (use_gpu, cpus)
            cap = dataset.context.execution_options.resource_limits.object_store_memory
            # by default more chunks wait for a GPU face actor than for a CPU one (measured: bench/README.md)
            queued = QUEUED_CHUNKS_PER_GPU_FACE_ACTOR if use_gpu else QUEUED_CHUNKS_PER_FACE_ACTOR
            assert cap == queued * stages[1].compute.max_size * chunk_bytes_bound(DecodeConfig())
        # Left to itself on one GPU, the face stage shares it among FACE_ACTORS_PER_GPU actors, no more than workers.
        shared = map_operators(build_dataset(rows, PreprocessConfig(input="in", num_workers=workers), use_gpu=True))[1]
        actors = min(FACE_ACTORS_PER_GPU, workers)
        assert shared.compute.min_size == shared.compute.max_size == actors
        assert shared.ray_remote_args["num_gpus"] == pytest.approx(1 / actors, abs=1e-4)
        # --queued-chunks scales what may wait between the stages
        deeper = build_dataset(rows, PreprocessConfig(input="in", num_workers=workers, queued_chunks=3), use_gpu=True)
        assert deeper.context.execution_options.resource_limits.object_store_memory == \
            3 * actors * chunk_bytes_bound(DecodeConfig())
        capped = build_dataset(rows, PreprocessConfig(input="in", num_workers=workers, max_cpus=2), use_gpu=False)
        assert capped.context.execution_options.resource_limits.cpu == 2
        assert map_operators(capped)[0].compute.min_size == 1
    finally:
        ray.shutdown()


def test_an_actor_sizes_its_thread_pools_to_its_cpus():
    """OpenCV and torch otherwise start a thread per core of the machine in every actor (measured: 16 one-CPU
    actors on 16 cores spent 2.8x the CPU time of 4 on the same videos)."""
    import cv2
    import torch

    from pipelines.preprocess import FusedStages

    before = cv2.getNumThreads(), torch.get_num_threads()
    try:
        FusedStages([], cpus=1.0)
        assert (cv2.getNumThreads(), torch.get_num_threads()) == (1, 1)
        FusedStages([], cpus=0.25)  # a share of a CPU still gets one thread
        assert (cv2.getNumThreads(), torch.get_num_threads()) == (1, 1)
        FusedStages([], cpus=2.0)
        assert (cv2.getNumThreads(), torch.get_num_threads()) == (2, 2)
    finally:
        cv2.setNumThreads(before[0])
        torch.set_num_threads(before[1])


def test_an_actor_that_never_uses_torch_never_loads_it_and_a_later_import_gets_its_share():
    """Decoders and sample writers do without torch (1.2 CPU-s and 180 MB an actor spent loading it, bench/README.md):
    sizing their pools leaves it unloaded, and if a stage loads it afterwards its pool still has the actor's size."""
    probe = ("import sys; from pipelines.core.ray_session import size_thread_pools; size_thread_pools(2.0); "
             "loaded = 'torch' in sys.modules; import torch; print(loaded, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "7"}).stdout.split()
    assert out == ["False", "2"]


def test_killed_run_resumes_to_the_same_samples(tiny_corpus, tiny_clean, tmp_path):
    clean, killed = tiny_clean, tmp_path / "killed"
    args = ["--input", str(tiny_corpus), "--aligner", "dlib", "--num-workers", "2", "--chunk-seconds", "1.0",
            "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "pipelines.preprocess", *args, "--output", str(killed)],
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("_parts/*/c*.json"))) < 3:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and every Ray worker it started
    process.wait()
    assert not list(killed.glob("shard-*.json")), "killed too late to test resuming"
    resumed = run(PreprocessConfig(input=str(tiny_corpus), output=str(killed), num_workers=2, progress=False,
                                   faces=FaceConfig(aligner="dlib"), decode=DecodeConfig(chunk_seconds=1.0)))
    assert resumed["videos_ok"] == 4
    clean_segments, resumed_segments = all_segments(str(clean)), all_segments(str(killed))
    assert clean_segments.keys() == resumed_segments.keys()
    for key, segment in clean_segments.items():
        resumed = resumed_segments[key]
        assert np.array_equal(segment.faces, resumed.faces) and np.array_equal(segment.mel, resumed.mel)
        assert segment.meta == resumed.meta
    assert not list(killed.glob("_parts/*/*")), "parts left behind after packing"


def test_s3_to_s3(tiny_corpus, s3_server):
    from pipelines.core.storage import write_bytes_atomic
    from s3_server import make_bucket

    storage = StorageConfig(endpoint=s3_server)
    make_bucket(s3_server, "corpus")
    for path in sorted(tiny_corpus.glob("*"))[:2]:
        write_bytes_atomic(f"s3://corpus/videos/{path.name}", path.read_bytes(), storage)
    summary = run(PreprocessConfig(input="s3://corpus/videos", output="s3://corpus/shards", num_workers=2,
                                   progress=False, storage=StorageConfig(endpoint=s3_server),
                                   faces=FaceConfig(aligner="dlib")))
    assert summary["videos_ok"] == 2
    segments = all_segments("s3://corpus/shards", storage)
    assert len(segments) == summary["segments"] > 0
    assert all(s.source.startswith("s3://corpus/videos/") for s in segments.values())
    assert "s3://corpus/shards/index.parquet" in list_files("s3://corpus/shards", storage)


def test_split_follows_speaker_then_video():
    from pipelines.preprocess import assign_split, source_rows
    from pipelines.sources import Source

    sources = [Source(uri=f"/v/{i}.mp4", key=f"v{i}", speaker=f"spk{i % 7}", split=None, size_bytes=1)
               for i in range(70)] + [Source(uri="/v/x.mp4", key="x", speaker=None, split="val", size_bytes=1)]
    rows = source_rows(sources, val_fraction=0.2)
    by_speaker = {}
    for row in rows[:70]:
        by_speaker.setdefault(row["speaker"], set()).add(row["split"])
    assert all(len(sides) == 1 for sides in by_speaker.values())
    assert rows[-1]["split"] == "val"  # a manifest's own split wins
    shares = np.mean([assign_split(f"video{i}", 0.2) == "val" for i in range(4000)])
    assert 0.17 < shares < 0.23


def test_samples_are_cut_from_the_face_stage_tracks():
    """The sample stage cuts the tracks the face stage smoothed along: here a cut the face stage saw, in a face
    that does not move (face_tracks of the landmarks alone find one track), ends a segment."""
    rng = np.random.default_rng(0)
    frames, start = 20, 50
    landmarks = np.repeat(rng.uniform(30, 60, (1, 68, 2)).astype(np.float32), frames, axis=0)
    assert face_tracks(landmarks, 0.3) == [(0, frames)]
    clock = EXPERT_CLOCK
    row = {"key": "vid", "uri": "/in/vid.mp4", "chunk": 3, "end": False, "error": "", "detail": "",
           "start_frame": start, "faces": np.repeat(10 * np.arange(frames, dtype=np.uint8), 96 * 96 * 3).reshape(
               frames, 96, 96, 3),  # frame t all grey 10 t: a JPEG keeps it to the level
           "landmarks": landmarks, "scores": np.ones(frames, np.float32),
           "tracks": np.array([[0, 3], [3, 11], [11, frames]]),
           "audio": 0.1 * rng.standard_normal((frames + 2 * CONTEXT_FRAMES) * clock.samples_per_frame, np.float32),
           "source_fps": 30.0, "source_rate": 44100, "speaker": "spk", "split": "train", "aligner": "dlib",
           "crop": "aligned"}
    record, part = SampleStage(AudioConfig(), SampleConfig(separate=False)).chunk_samples(row)
    assert (record.chunk, record.frames, record.frames_with_face, record.dropped_short) == (3, frames, frames, 1)
    assert [(s.key, s.start_frame, s.num_frames) for s in record.samples] == [("vid_f0000053", 53, 8),
                                                                            ("vid_f0000061", 61, 9)]
    segments = segments_in_tar(part, "chunk")
    assert [s.key for s in segments] == ["vid_f0000053", "vid_f0000061"]
    for segment, (begin, end) in zip(segments, [(3, 11), (11, frames)]):
        assert segment.faces.shape == (end - begin, 96, 96, 3)
        assert np.abs(segment.faces.astype(int) - row["faces"][begin:end]).max() <= 1
        assert segment.mel.shape == (80, clock.mel_column(end - begin))
        assert segment.meta["start_s"] == (start + begin) / 25 and segment.meta["format"] == FORMAT_VERSION


def test_each_followed_face_gives_samples_of_its_own():
    """Two layers of 12 frames (two faces followed): a sample per face track, the second face's keyed "g", each
    recording its face, track and median box; frames with a face are counted once, whichever face shows."""
    rng = np.random.default_rng(1)
    frames, clock = 12, EXPERT_CLOCK
    faces = np.concatenate([np.full((frames, 96, 96, 3), 40, np.uint8), np.full((frames, 96, 96, 3), 200, np.uint8)])
    landmarks = rng.uniform(30, 60, (2 * frames, 68, 2)).astype(np.float32)
    landmarks[frames + 8:] = np.nan  # the second face leaves after 8 frames
    boxes = np.tile(np.array([[0.1, 0.2, 0.4, 0.6]], np.float32), (2 * frames, 1))
    boxes[frames:] += 0.5
    row = {"key": "vid", "uri": "/in/vid.mp4", "chunk": 0, "end": False, "error": "", "detail": "",
           "start_frame": 100, "faces": faces, "landmarks": landmarks, "scores": np.ones(2 * frames, np.float32),
           "boxes": boxes, "tracks": np.array([[0, frames, 0], [0, 8, 1]]), "faces_followed": 2,
           "audio": 0.1 * rng.standard_normal((frames + 2 * CONTEXT_FRAMES) * clock.samples_per_frame, np.float32),
           "source_fps": 25.0, "source_rate": 16000, "speaker": "spk", "split": "train", "aligner": "dlib",
           "crop": "aligned"}
    record, part = SampleStage(AudioConfig(), SampleConfig(separate=False)).chunk_samples(row)
    assert (record.frames, record.frames_with_face) == (frames, frames)
    segments = {s.key: s for s in segments_in_tar(part, "chunk")}
    assert sorted(segments) == ["vid_f0000100", "vid_g0000100"]
    first, second = segments["vid_f0000100"], segments["vid_g0000100"]
    assert (first.meta["face"], first.meta["track"], second.meta["face"], second.meta["track"]) == (0, 0, 1, 1)
    assert first.meta["box"] == pytest.approx([0.1, 0.2, 0.4, 0.6]) and second.meta["box"][0] == pytest.approx(0.6)
    assert (first.num_frames, second.num_frames) == (frames, 8)
    assert abs(int(first.faces.mean()) - 40) <= 1 and abs(int(second.faces.mean()) - 200) <= 1  # each its own face
    assert first.mel.shape == (80, clock.mel_column(frames)) and "speaking" not in first.meta  # nobody judged


def test_a_speaker_expert_needs_several_faces_and_crops_it_reads(tmp_path):
    with pytest.raises(ValueError, match="--max-faces 2 or more"):
        PreprocessConfig(input="in", samples=SampleConfig(speaker_expert=str(tmp_path)))
    with pytest.raises(ValueError, match=f"--speaker-expert {tmp_path}: no expert.pt"):
        PreprocessConfig(input="in", faces=FaceConfig(max_faces=2), samples=SampleConfig(speaker_expert=str(tmp_path)))
    with pytest.raises(ValueError, match="--keep-tracks"):
        SampleConfig(keep_tracks="loudest")
