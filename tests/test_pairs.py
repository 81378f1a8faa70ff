"""Training pairs from real shards: exact windows, segment boundaries, balance, determinism, ranks, damage, S3."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.expert import SyncExpert
from model.loader.pool import PoolConfig, SegmentPool
from model.loader.stream import PairStream
from model.loader.windows import KINDS, OTHER_SEGMENT_SHIFT, PairConfig, sample_pairs, source_weight
from model.loss import sync_loss
from model.offset import offset_curve
from pipelines.core.clock import EXPERT_CLOCK, Clock
from pipelines.core.storage import StorageConfig, write_bytes_atomic
from pipelines.faces.base import FaceConfig
from pipelines.preprocess import PreprocessConfig, run
from pipelines.shards.format import encode_faces, npy_bytes, stats_of, tar_bytes
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


def take(stream: PairStream, batches: int) -> list[dict]:
    return [batch for _, batch in zip(range(batches), stream)]


def same_batches(a: list[dict], b: list[dict]) -> bool:
    def equal(x, y) -> bool:
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    return len(a) == len(b) and all(equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def check_batch(batch: dict, by_key: dict[str, Segment], config: PairConfig = CONFIG, clock: Clock = CLOCK) -> None:
    """Every pair of a stream's batch is the window its key, start and column name, inside its segments."""
    for i, kind in enumerate(batch["kinds"].tolist()):
        segment, audio = by_key[batch["keys"][i]], by_key[batch["mel_keys"][i]]
        pair = {"faces": segment.faces[batch["starts"][i]:batch["starts"][i] + clock.window_frames],
                "mel": batch["mels"][i].numpy(), "label": float(batch["labels"][i]), "shift": int(batch["shifts"][i]),
                "key": segment.key, "start": int(batch["starts"][i]), "kind": KINDS[kind], "mel_key": audio.key,
                "mel_column": int(batch["columns"][i])}
        side = segment.faces.shape[1]
        assert np.array_equal(batch["faces"][i].numpy(), pair["faces"][:, side // 2:])  # the lower halves
        check_pair(pair, segment, audio, config, clock)


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

def test_batches_shapes_balance_and_kinds(uris, segments):
    stream = PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=64, seed=0)
    batches = take(stream, 40)  # 2560 pairs: the 3 training segments' tickets, drawn and replaced ~7 times
    first = batches[0]
    assert first["faces"].shape == (64, 5, 48, 96, 3) and first["faces"].dtype == torch.uint8
    assert first["mels"].shape == (64, 80, 16) and first["mels"].dtype == torch.float32
    assert first["labels"].dtype == torch.float32 and first["shifts"].dtype == torch.int64
    by_key = {s.key: s for s in segments}
    for batch in batches[:3] + batches[-2:]:
        check_batch(batch, by_key)
    labels = torch.cat([b["labels"] for b in batches])
    shifts = torch.cat([b["shifts"] for b in batches])
    kinds = torch.cat([b["kinds"] for b in batches]).numpy()
    assert 0.45 <= labels.mean() <= 0.55
    assert torch.equal(labels == 1, shifts == 0)
    drawn = np.bincount(kinds, minlength=4) / len(kinds)  # in the batches, not only in what was admitted
    negatives = drawn[1:].sum()
    assert abs(drawn[1] / negatives - 0.5) < 0.08 and abs(drawn[2] / negatives - 0.25) < 0.08
    assert abs(drawn[3] / negatives - 0.25) < 0.08
    counts = stream.counters
    assert sum(counts[f"pairs_{k}"] for k in KINDS) == counts["segments_admitted"] * CONFIG.windows_per_segment
    assert all(b["segments"] == len(set(b["keys"])) for b in batches)
    assert max(b["segments"] for b in batches) == 3  # every training segment in one batch


def test_every_segment_gives_exactly_its_pairs_and_leaves(uris, segments):
    """One pass: each segment's windows_per_segment tickets are all drawn, none twice; the pool ends empty."""
    config = PairConfig(windows_per_segment=40)
    stream = PairStream(uris, LOCAL, "train", config, CLOCK, batch_size=16, seed=2, repeat=False)
    batches = list(stream)
    keys = [key for b in batches for key in b["keys"]]
    train = [s.key for s in segments if s.split == "train"]
    assert sorted(set(keys)) == sorted(train) and all(keys.count(k) == 40 for k in train)
    assert [len(b["labels"]) for b in batches[:-1]] == [16] * (len(batches) - 1)
    pairs = {(k, int(st), int(c), int(sh)) for b in batches for k, st, c, sh in
             zip(b["keys"], b["starts"], b["columns"], b["shifts"])}
    assert len(pairs) > 0.8 * len(keys)  # drawn, not repeated (a few coincide by chance)
    assert stream.counters["pool_segments"] == 0 and stream.counters["pool_tickets"] == 0


def test_source_weights_multiply_a_segments_pairs(uris, segments):
    """One pass with one training video weighted 3: its segment gives 3x the pairs, the others theirs; the first
    matching rule wins, validation-style streams without rules are untouched."""
    train = [s for s in segments if s.split == "train"]
    heavy = train[0]
    rules = (f"*{Path(heavy.source).name}=3", "*=5")  # the second rule never reaches the heavy one
    config = PairConfig(windows_per_segment=40, source_weights=rules)
    stream = PairStream(uris, LOCAL, "train", config, CLOCK, batch_size=16, seed=2, repeat=False)
    keys = [key for b in stream for key in b["keys"]]
    assert keys.count(heavy.key) == 120
    assert all(keys.count(s.key) == 200 for s in train[1:])
    assert source_weight(heavy.source, ()) == 1 and source_weight("/a/real/x.mp4", ("*/real/*=8",)) == 8
    for bad in ("*/real/*", "=3", "*/real/*=0", "*/real/*=1.5"):
        with pytest.raises(ValueError, match="GLOB=K"):
            PairConfig(source_weights=(bad,))


def test_a_seven_frame_expert_trains_on_the_same_shards(uris, segments):
    """The window is the clock's: a 7-frame expert reads the shards the 5-frame one does, and every shape from the
    shard to the loss (and the offset search) follows from the clock alone."""
    clock = Clock(window_frames=7)
    assert clock.mel_window == 22  # 7 frames at 25 fps are 22.4 mel columns at 80 per second
    batch = next(iter(PairStream(uris, LOCAL, "train", CONFIG, clock, batch_size=32, seed=0)))
    assert batch["faces"].shape == (32, 7, 48, 96, 3) and batch["mels"].shape == (32, 80, 22)
    check_batch(batch, {s.key: s for s in segments}, clock=clock)
    for pair in sample_pairs(segments[0], CONFIG, clock, np.random.default_rng(0), segments[1]):
        check_pair(pair, segments[0], segments[1], clock=clock)
    expert = SyncExpert(ModelConfig(clock=clock, width=8))
    faces, mels = expert.prepare_lower_faces(batch["faces"]), expert.prepare_mels(batch["mels"])
    assert faces.shape == (32, 21, 48, 96) and mels.shape == (32, 1, 80, 22)
    whole = torch.from_numpy(np.stack([segments[0].faces[:7]] * 2))
    assert torch.equal(expert.prepare_faces(whole), expert.prepare_lower_faces(whole[:, :, 48:]))
    loss = sync_loss(expert(faces, mels), batch["labels"])
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in expert.parameters())
    result = offset_curve(expert.eval(), segments[0].faces, segments[0].mel, max_shift=4)
    assert result.mean_similarity.shape == (9,) and len(result.window_starts) > 0


def test_streams_are_deterministic_and_differ_by_rank_and_resume(uris):
    def stream(**kw) -> PairStream:
        return PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=32, **kw)

    assert same_batches(take(stream(seed=3), 6), take(stream(seed=3), 6))
    assert not same_batches(take(stream(seed=3), 4), take(stream(seed=4), 4))
    # A resumed run seeds with the step it resumes from: it does not replay the pairs it trained on.
    assert not same_batches(take(stream(seed=(3, 0)), 4), take(stream(seed=(3, 200)), 4))
    rank0 = take(stream(seed=3, rank=0, world_size=2), 4)
    rank1 = take(stream(seed=3, rank=1, world_size=2), 4)
    assert not same_batches(rank0, rank1)
    assert not {k for b in rank0 for k in b["keys"]} & {k for b in rank1 for k in b["keys"]}

    validation = PairStream(uris, LOCAL, "val", CONFIG, CLOCK, batch_size=32, seed=0, repeat=False)
    first, second = list(validation), list(validation)
    assert first and same_batches(first, second)
    assert sum(len(b["labels"]) for b in first) == validation.counters["segments"] * CONFIG.windows_per_segment


def test_loader_processes_read_disjoint_shares_deterministically(uris, segments):
    """Segments decoded in 2 loader processes (each its share: reader i of 2) give the same batches on every run,
    whatever the processes' timing; the faces cross from the processes through shared memory."""
    def run() -> list[dict]:
        return take(PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=16, seed=5, loader_workers=2), 12)

    first = run()
    assert same_batches(first, run())
    check_batch(first[-1], {s.key: s for s in segments})
    train = {s.key for s in segments if s.split == "train"}
    assert {k for b in first for k in b["keys"]} == train  # both processes' shares reached the pool


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
    with pytest.raises(RuntimeError, match="found no segment"):
        next(iter(stream))
    assert list(PairStream(uris, LOCAL, "no-such-split", CONFIG, CLOCK, batch_size=8, seed=0, repeat=False)) == []


def test_segments_shorter_than_a_window_give_no_pairs(uris, segments, tmp_path):
    """A shard whose segments are shorter than the window: counted, never admitted; alone, it fails clearly."""
    short = tmp_path / "short"
    short.mkdir()
    members = shard_members(uris[0])
    meta_name = next(name for name in members if name.endswith(".json"))
    segment = next(s for s in segments if s.key == meta_name.split(".")[0])
    key = segment.key + "_short"
    meta = json.loads(members[meta_name])
    meta.update(num_frames=4, key=key)
    cut = {f"{key}.json": json.dumps(meta).encode(), f"{key}.jpg": encode_faces(segment.faces[:4], 95),
           f"{key}.mel.npy": npy_bytes(segment.mel[:, :CLOCK.mel_column(4)])}
    finished(short / "shard-000000.tar", tar_bytes(cut))
    Path(stats_of(str(short / "shard-000000.tar"))).write_text(json.dumps(
        {"samples": 1, "videos": [{"samples": [{"split": meta["split"]}]}]}))
    alone = PairStream(list_shards(str(short), LOCAL), LOCAL, meta["split"], CONFIG, CLOCK, batch_size=8, seed=0)
    with pytest.raises(RuntimeError, match="found no segment of 5\\+ frames"):
        next(iter(alone))
    mixed = PairStream([*list_shards(str(short), LOCAL), *uris], LOCAL, meta["split"], CONFIG, CLOCK, batch_size=8,
                       seed=0, repeat=False)
    batches = list(mixed)
    assert key not in {k for b in batches for k in b["keys"]} and mixed.counters["short_segments"] == 1


def test_a_corpus_smaller_than_the_pool_is_held_once(uris):
    stream = PairStream(uris, LOCAL, "train", PairConfig(windows_per_segment=8), CLOCK, batch_size=8, seed=1)
    sizes = []
    for batch in take(stream, 60):  # 480 pairs: 20 passes over the 3 training segments' 24 tickets
        sizes.append(stream.counters["pool_segments"])
    assert max(sizes) <= 3 + 1 and stream.counters["segments_admitted"] >= 55  # replaced, never piled up


def make_segment(frames: int, side: int = 8, bins: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    faces = torch.from_numpy(rng.integers(0, 256, (frames, side // 2, side, 3), dtype=np.uint8))
    return faces, torch.from_numpy(rng.standard_normal((CLOCK.mel_column(frames), bins)).astype(np.float32))


def test_the_pool_mixes_hundreds_of_segments_within_its_memory_bound():
    """600 segments of 600 videos in a pool bounded to hold ~400: batches of 256 each draw from over 150 distinct
    segments (median), memory stays under the bound, and every pair is its segment's window."""
    config = PairConfig(windows_per_segment=64)
    frames, side, bins = 60, 8, 4
    per_frame = side // 2 * side * 3 + CLOCK.sample_rate / CLOCK.hop_length / CLOCK.fps * bins * 4
    bound = int(400 * 64 * per_frame)  # 64 frames a segment once paged
    pool = SegmentPool(config, CLOCK, torch.device("cpu"), bound)
    rng = np.random.default_rng(0)
    stored, admitted, distinct = {}, 0, []
    for index in range(600):
        faces, mel = make_segment(frames, side, bins, seed=index)
        while not pool.fits(len(faces), len(mel)):
            batch = pool.draw(256, rng)
            distinct.append(batch["segments"])
            for i, key in enumerate(batch["keys"]):
                start = int(batch["starts"][i])
                assert torch.equal(batch["faces"][i], stored[key][0][start:start + CLOCK.window_frames])
                column = int(batch["columns"][i])
                assert torch.equal(batch["mels"][i], stored[batch["mel_keys"][i]][1][column:column + 16].T)
        pool.admit(faces, mel, video=index, key=f"s{index}", rng=rng)
        stored[f"s{index}"] = (faces, mel)
        admitted += 1
        assert pool.memory()["allocated_bytes"] <= bound
    assert distinct and np.median(distinct) > 150  # (a draw that frees room for the next admission may see fewer)
    with pytest.raises(ValueError, match="unlike the stream's first segment"):
        pool.admit(*make_segment(frames, side=16), video=0, key="odd", rng=rng)


def test_a_pool_too_small_for_a_batch_says_what_to_raise(uris):
    stream = PairStream(uris, LOCAL, "train", CONFIG, CLOCK, batch_size=4096, seed=0,
                        pool=PoolConfig(memory_gib=0.002))
    with pytest.raises(ValueError, match="raise --memory-gib"):
        next(iter(stream))


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
    # Training's stream passes the readers' counts on from its loader process (they go to metrics.jsonl).
    stream = PairStream(list_shards(str(tmp_path), LOCAL), LOCAL, None, CONFIG, CLOCK, batch_size=8, seed=0,
                        repeat=False, loader_workers=1)
    assert sum(len(b["labels"]) for b in stream) == len(segments) * CONFIG.windows_per_segment
    assert stream.counters["bad_shards"] == 2 and stream.counters["shards"] == 6


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
