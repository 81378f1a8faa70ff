"""Training pairs from real shards: exact windows, segment boundaries, balance, determinism, ranks, damage, S3."""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.expert import SyncExpert
from model.loader.stream import PairBatches, PairStream, to_torch
from model.loader.windows import OTHER_SEGMENT_SHIFT, PairConfig, sample_pairs
from model.loss import sync_loss
from model.offset import offset_curve
from pipelines.core.clock import EXPERT_CLOCK, Clock
from pipelines.core.storage import StorageConfig, write_bytes_atomic
from pipelines.faces.base import FaceConfig
from pipelines.preprocess import PreprocessConfig, run
from pipelines.shards.format import stats_of, tar_bytes
from pipelines.shards.reader import Segment, ShardWarning, iter_segments, list_shards, split_shards
from pipelines.shards.writer import ShardConfig
from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus
from s3_server import make_bucket

LOCAL = StorageConfig()
CONFIG = PairConfig()
CLOCK = EXPERT_CLOCK


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 videos, one shard each (so ranks can split by shard), 3 s to 4 s of faces apiece."""
    root = tmp_path_factory.mktemp("pairs")
    generate_corpus(SyntheticConfig(out=root / "corpus", num_videos=4, seed=1, min_seconds=3, max_seconds=4,
                                    workers=2, heldout_fraction=0), progress=False)
    run(PreprocessConfig(input=str(root / "corpus"), output=str(root / "shards"), progress=False,
                         faces=FaceConfig(aligner="dlib"), shards=ShardConfig(shard_max_samples=1)))
    return root / "shards"


@pytest.fixture(scope="module")
def uris(shards) -> list[str]:
    return list_shards(str(shards), LOCAL)


@pytest.fixture(scope="module")
def segments(uris) -> list[Segment]:
    found = list(iter_segments(uris, LOCAL, None))
    assert len(uris) == 4 and len(found) == 4
    assert {s.split for s in found} == {"train", "val"}, "the fixture needs both splits"
    return found


def finished(shard: Path, data: bytes) -> None:
    """Write a shard as the packer finishes one: the tar, then its stats json, the completion marker."""
    shard.write_bytes(data)
    Path(stats_of(str(shard))).write_text("{}")


def shard_members(uri: str) -> dict[str, bytes]:
    with tarfile.open(uri) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def take(stream: PairStream, batches: int) -> list[dict[str, np.ndarray]]:
    return [batch for _, batch in zip(range(batches), stream)]


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def check_pair(pair: dict, segment: Segment, other: Segment | None, config: PairConfig = CONFIG,
               clock: Clock = CLOCK) -> None:
    """Recompute a pair from its key, start and shift; every window inside its segment."""
    W, Wm = clock.window_frames, clock.mel_window
    start, shift = pair["start"], pair["shift"]
    assert pair["key"] == segment.key and 0 <= start and start + W <= segment.num_frames
    assert np.array_equal(pair["faces"], segment.faces[start:start + W])
    assert pair["faces"].dtype == np.uint8 and pair["mel"].dtype == np.float32 and pair["mel"].shape == (80, Wm)
    if pair["kind"] == "other":
        assert shift == OTHER_SEGMENT_SHIFT and pair["label"] == 0.0 and pair["mel_key"] == other.key
        assert other.source_key != segment.source_key
        audio, column = other, pair["mel_column"]
    else:
        assert 0 <= start + shift and start + shift + W <= segment.num_frames
        assert pair["mel_key"] == segment.key and pair["label"] == (1.0 if shift == 0 else 0.0)
        low, high = {"positive": (0, 0), "hard": (config.hard_shift_min, config.hard_shift_max),
                     "easy": (config.hard_shift_max + 1, config.easy_shift_max)}[pair["kind"]]
        assert low <= abs(shift) <= high
        audio, column = segment, clock.mel_column(start + shift)
        assert pair["mel_column"] == column
    assert 0 <= column and column + Wm <= audio.mel.shape[1]
    assert np.array_equal(pair["mel"], audio.mel[:, column:column + Wm])


# --- drawing pairs ---------------------------------------------------------------------------------------

def test_pair_config_is_validated():
    with pytest.raises(ValueError, match="hard_fraction"):
        PairConfig(hard_fraction=0.8, easy_fraction=0.5)


def test_pairs_are_exact_windows_of_their_segment(segments):
    rng = np.random.default_rng(0)
    kinds = set()
    for i, segment in enumerate(segments):
        other = segments[(i + 1) % len(segments)]
        for _ in range(40):
            for pair in sample_pairs(segment, CONFIG, CLOCK, rng, other):
                check_pair(pair, segment, other)
                kinds.add(pair["kind"])
    assert kinds == {"positive", "hard", "easy", "other"}


def test_short_segments_fall_back_and_stay_inside(segments):
    long, other = segments[0], segments[1]
    rng = np.random.default_rng(1)

    def cut(frames: int) -> Segment:
        columns = CLOCK.mel_column(frames)
        return Segment(long.key, long.source_key, long.speaker, long.split, long.faces[:frames],
                       long.mel[:, :columns])

    assert sample_pairs(cut(4), CONFIG, CLOCK, rng, other) == []  # shorter than one window
    for frames, partner, kinds in ((5, other, {"positive", "other"}),  # no shift fits in 5 frames
                                   (5, None, {"positive"}),  # nothing fits a negative: it is not drawn
                                   (8, None, {"positive", "hard"})):  # easy and other fall back to hard
        short = cut(frames)
        pairs = [p for _ in range(40) for p in sample_pairs(short, CONFIG, CLOCK, rng, partner)]
        assert {p["kind"] for p in pairs} == kinds
        for pair in pairs:
            check_pair(pair, short, partner)


# --- the stream ----------------------------------------------------------------------------------------

def test_batches_shapes_balance_and_kinds(uris):
    stream = PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=64, seed=0)
    batches = take(stream, 32)  # 2048 pairs
    first = batches[0]
    assert first["faces"].shape == (64, 5, 96, 96, 3) and first["faces"].dtype == np.uint8
    assert first["mels"].shape == (64, 80, 16) and first["mels"].dtype == np.float32
    assert first["labels"].dtype == np.float32 and first["shifts"].dtype == np.int64
    labels = np.concatenate([b["labels"] for b in batches])
    shifts = np.concatenate([b["shifts"] for b in batches])
    assert 0.45 <= labels.mean() <= 0.55
    assert np.array_equal(labels == 1, shifts == 0)
    counts = stream.counters
    negatives = counts["pairs_hard"] + counts["pairs_easy"] + counts["pairs_other"]
    assert abs(counts["pairs_hard"] / negatives - 0.5) < 0.08
    assert abs(counts["pairs_easy"] / negatives - 0.25) < 0.08
    assert abs(counts["pairs_other"] / negatives - 0.25) < 0.08
    tensors = to_torch(first)
    assert tensors["faces"].dtype == torch.uint8 and tensors["mels"].dtype == torch.float32


def test_a_seven_frame_expert_trains_on_the_same_shards(uris, segments):
    """The window is the clock's: a 7-frame expert reads the shards the 5-frame one does, and every shape from the
    shard to the loss (and the offset search) follows from the clock alone."""
    clock = Clock(window_frames=7)
    assert clock.mel_window == 22  # 7 frames at 25 fps are 22.4 mel columns at 80 per second
    batch = next(iter(PairStream(uris, LOCAL, "train", CONFIG, clock, batch_size=32, seed=0)))
    assert batch["faces"].shape == (32, 7, 96, 96, 3) and batch["mels"].shape == (32, 80, 22)
    for pair in sample_pairs(segments[0], CONFIG, clock, np.random.default_rng(0), segments[1]):
        check_pair(pair, segments[0], segments[1], clock=clock)
    expert = SyncExpert(ModelConfig(clock=clock, width=8))
    tensors = to_torch(batch)
    faces, mels = expert.prepare_faces(tensors["faces"]), expert.prepare_mels(tensors["mels"])
    assert faces.shape == (32, 21, 48, 96) and mels.shape == (32, 1, 80, 22)
    loss = sync_loss(expert(faces, mels), tensors["labels"])
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in expert.parameters())
    result = offset_curve(expert.eval(), segments[0].faces, segments[0].mel, max_shift=4)
    assert result.mean_similarity.shape == (9,) and len(result.window_starts) > 0


def test_streams_are_deterministic_and_differ_by_rank(uris):
    def stream(**kw) -> PairStream:
        return PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=32, **kw)

    assert same_batches(take(stream(seed=3), 4), take(stream(seed=3), 4))
    assert not same_batches(take(stream(seed=3), 4), take(stream(seed=4), 4))
    rank0 = take(stream(seed=3, rank=0, world_size=2), 4)
    rank1 = take(stream(seed=3, rank=1, world_size=2), 4)
    assert not same_batches(rank0, rank1)

    validation = PairStream(uris, LOCAL, "val", CONFIG, CLOCK, batch_size=32, seed=0, repeat=False)
    first, second = list(validation), list(validation)
    assert first and same_batches(first, second)
    assert sum(len(b["labels"]) for b in first) == validation.counters["segments"] * CONFIG.windows_per_segment


def test_loader_processes_read_disjoint_shares_in_shared_memory(uris):
    """PairBatches in a DataLoader: loader process i of 2 gives reader i's batches, as tensors (DataLoader takes
    batches from its processes in turn)."""
    dataset = PairBatches(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=16, seed=5)
    loaded = take(iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)), 4)
    readers = [take(PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=16, seed=5, rank=r, world_size=2), 2)
               for r in (0, 1)]
    for index, batch in enumerate(loaded):
        assert batch["faces"].dtype == torch.uint8 and batch["mels"].dtype == torch.float32
        expected = readers[index % 2][index // 2]
        assert all(np.array_equal(batch[k].numpy(), expected[k]) for k in expected)
    in_process = next(iter(dataset))  # no loader processes: the reader alone, the same batches as PairStream
    first = take(PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=16, seed=5), 1)[0]
    assert all(np.array_equal(in_process[k].numpy(), first[k]) for k in first)


def test_ranks_split_the_shards_of_their_split_only(uris):
    # 3 train shards and 1 val shard: splitting all 4 over 3 ranks would leave, in some passes, a rank with
    # only the val shard and nothing to train on.
    for seed in range(3):
        for rank in range(3):
            stream = PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=8, seed=seed, rank=rank, world_size=3)
            take(stream, 10)
            assert stream.counters["segments"] == stream.counters["shards"]  # never opened the val shard


def test_a_rank_with_nothing_to_read_fails_instead_of_spinning(uris):
    stream = PairStream(uris, LOCAL, "no-such-split", CONFIG, CLOCK, batch_size=8, seed=0)
    with pytest.raises(RuntimeError, match="drew no pairs"):
        next(iter(stream))
    assert list(PairStream(uris, LOCAL, "no-such-split", CONFIG, CLOCK, batch_size=8, seed=0, repeat=False)) == []


# --- ranks ---------------------------------------------------------------------------------------------

def test_split_shards_never_leaves_a_rank_empty():
    assert split_shards(["a"], 0, 2) == split_shards(["a"], 1, 2) == ["a"]
    four = ["a", "b", "c", "d"]
    assert split_shards(four, 0, 2) == ["a", "c"] and split_shards(four, 1, 2) == ["b", "d"]
    assert all(split_shards(four, r, 3) for r in range(3))
    with pytest.raises(ValueError):
        split_shards(four, 2, 2)


def test_one_shard_two_ranks_split_by_segment(uris, segments, tmp_path):
    combined = tmp_path / "shard-000000.tar"
    combined.write_bytes(tar_bytes({n: d for uri in uris for n, d in shard_members(uri).items()}))
    keys = [[s.key for s in iter_segments([str(combined)], LOCAL, None, rank, 2)] for rank in (0, 1)]
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(s.key for s in segments)


# --- safety and damage ---------------------------------------------------------------------------------

def _explode():
    raise RuntimeError("unpickled!")


class _Bomb:
    def __reduce__(self):
        return _explode, ()


def test_unknown_members_are_never_unpickled(uris, segments, tmp_path):
    bomb = pickle.dumps(_Bomb())
    with pytest.raises(RuntimeError, match="unpickled!"):
        pickle.loads(bomb)  # armed: reading it with pickle would raise
    members = shard_members(uris[0])
    key = next(iter(members)).split(".")[0]
    members[f"{key}.pickle"] = bomb
    members["x.pyd"] = bomb
    finished(tmp_path / "shard-000000.tar", tar_bytes(members))
    counters: dict = {}
    with pytest.warns(ShardWarning) as caught:
        read = list(iter_segments(list_shards(str(tmp_path), LOCAL), LOCAL, None, counters=counters))
    assert [str(w.message) for w in caught] == \
        [f"shard {tmp_path / 'shard-000000.tar'}: members passed over, of extensions pickle, pyd"]
    assert [s.key for s in read] == [segments[0].key]
    assert np.array_equal(read[0].faces, segments[0].faces) and np.array_equal(read[0].mel, segments[0].mel)
    assert counters["ignored_members"] == 2 and "bad_samples" not in counters


def test_truncated_and_garbage_shards_are_skipped_and_counted(shards, uris, segments, tmp_path):
    for path in sorted(shards.glob("shard-*")):
        shutil.copy(path, tmp_path / path.name)
    whole = Path(uris[2]).read_bytes()
    finished(tmp_path / "shard-000004.tar", whole[: int(len(whole) * 0.6)])
    finished(tmp_path / "shard-000099.tar", b"this is not a tar archive " * 100)
    counters: dict = {}
    with pytest.warns(ShardWarning) as caught:
        read = list(iter_segments(list_shards(str(tmp_path), LOCAL), LOCAL, None, counters=counters))
    messages = " ".join(str(w.message) for w in caught)
    assert "shard-000004.tar" in messages and "shard-000099.tar" in messages
    assert counters["bad_shards"] == 2 and counters["shards"] == 6
    assert sorted(s.key for s in read) == sorted(s.key for s in segments)


def test_truncation_at_a_member_boundary_and_bad_samples(uris, tmp_path):
    members = {n: d for uri in uris for n, d in shard_members(uri).items()}
    names = list(members)
    keys = list(dict.fromkeys(n.split(".")[0] for n in names))
    # Ends cleanly after 3 of 4 samples: only the stats json reveals it.
    finished(tmp_path / "shard-000000.tar", tar_bytes({n: members[n] for n in names[:9]}))
    (tmp_path / "shard-000000.json").write_text('{"samples": 4}')
    # One sample with a JPEG that is not one, one without its mel.
    damaged = dict(members, **{f"{keys[0]}.jpg": b"\xff\xd8 not really a jpeg"})
    del damaged[f"{keys[1]}.mel.npy"]
    finished(tmp_path / "shard-000001.tar", tar_bytes(damaged))
    counters: dict = {}
    with pytest.warns(ShardWarning) as caught:
        read = list(iter_segments(list_shards(str(tmp_path), LOCAL), LOCAL, None, counters=counters))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3 and "truncated: 3 samples read, its stats record 4" in messages[0]
    assert "not a JPEG" in messages[1] and "no mel.npy member" in messages[2]
    assert [s.key for s in read] == keys[:3] + keys[2:]
    assert counters["bad_shards"] == 1 and counters["bad_samples"] == 2


def test_a_cut_after_a_whole_sample_keeps_that_sample(uris, tmp_path):
    members = {n: d for uri in uris for n, d in shard_members(uri).items()}
    names = list(members)
    keys = list(dict.fromkeys(n.split(".")[0] for n in names))
    data = tar_bytes({n: members[n] for n in names[:9]})  # 3 samples of 3 members
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        third = tar.getmembers()[6]  # the third sample's first member
    finished(tmp_path / "shard-000000.tar", data[:third.offset_data + 10])  # cut in its data
    counters: dict = {}
    with pytest.warns(ShardWarning, match="skipped after 2 samples"):
        read = list(iter_segments(list_shards(str(tmp_path), LOCAL), LOCAL, None, counters=counters))
    assert [s.key for s in read] == keys[:2] and counters["bad_shards"] == 1


def test_list_shards_sees_only_finished_shards(tmp_path):
    # shard-000001.tar has no stats json: a run killed while packing it, not a shard yet.
    for name in ("shard-000002.tar", "shard-000001.tar", "shard-000000.tar", "shard-000000.json", "shard-000002.json",
                 "shard-000003.json", "notes.tar", "notes.json", "shard-1.tar", "shard-1.json",
                 "_parts/video/shard-000007.tar", "_parts/video/shard-000007.json", "_parts/video/c00000.tar"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_shards(str(tmp_path), LOCAL) == [str(tmp_path / "shard-000000.tar"),
                                                 str(tmp_path / "shard-000002.tar")]


# --- S3 ------------------------------------------------------------------------------------------------

def test_s3_reads_the_same_segments_and_pairs(s3_server, shards, uris, segments):
    make_bucket(s3_server, "pairs-test")
    storage = StorageConfig(endpoint=s3_server)
    for path in sorted(shards.glob("shard-*")):
        write_bytes_atomic(f"s3://pairs-test/shards/{path.name}", path.read_bytes(), storage)
    remote = list_shards("s3://pairs-test/shards", storage)
    assert [u.rsplit("/", 1)[1] for u in remote] == [Path(u).name for u in uris]
    read = list(iter_segments(remote, storage, None))
    assert [s.key for s in read] == [s.key for s in segments]
    for a, b in zip(read, segments):
        assert (a.source_key, a.speaker, a.split) == (b.source_key, b.speaker, b.split)
        assert np.array_equal(a.faces, b.faces) and np.array_equal(a.mel, b.mel)
    pairs = dict(config=CONFIG, clock=CLOCK, batch_size=16, seed=7)
    assert same_batches(take(PairStream(remote, storage, "train", **pairs), 3),
                        take(PairStream(uris, LOCAL, "train", **pairs), 3))
