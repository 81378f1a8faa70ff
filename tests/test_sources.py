"""Listing inputs (sources.py) and reading/writing local folders and S3 alike (storage.py).

The listing never decodes media, so the "videos" here are a few bytes each. S3 tests run against moto's
server on loopback (tests/s3_server.py), the same HTTP API pyarrow speaks to AWS.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import tarfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipelines.core import storage
from pipelines.core.storage import StorageConfig
from pipelines.shards.format import MEL, sample_key
from pipelines.sources import Source, list_sources, make_key
from s3_server import make_bucket

LOCAL = StorageConfig()
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+\Z")

# Relative path -> content. Two clip.mp4 in different folders, an upper-case extension, and files that
# are not videos.
TREE = {
    "a/clip.mp4": b"a" * 10,
    "b/clip.mp4": b"b" * 20,
    "b/deep/take.1.MKV": b"c" * 30,
    "c/talk.webm": b"d" * 40,
    "a/clip.wav": b"not a video",
    "notes.txt": b"not a video either",
}
VIDEOS = ("a/clip.mp4", "b/clip.mp4", "b/deep/take.1.MKV", "c/talk.webm")


def write_tree(root: Path, files: dict[str, bytes] = TREE) -> Path:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "corpus")


def by_uri(sources: list[Source]) -> dict[str, Source]:
    return {source.uri: source for source in sources}


# --- keys -------------------------------------------------------------------------------------------------


def test_key_is_readable_webdataset_safe_and_distinguishes_paths_that_sanitise_alike():
    key = make_key("spk 1/take.2 (final).mp4")
    assert KEY_PATTERN.match(key) and "." not in key
    assert key.startswith("spk_1__take_2__final__mp4_")
    assert make_key("a_b.mp4") != make_key("a.b.mp4")  # both sanitise to "a_b_mp4"
    assert make_key("a/b.mp4") != make_key("a__b.mp4")  # both sanitise to "a__b_mp4"
    assert make_key("a/clip.mp4") == make_key("a/clip.mp4")


@pytest.mark.parametrize("relative", [
    "/".join(["folder"] * 100) + "/x.mp4",
    "/".join(["dossier été"] * 20) + "/entretien à Zürich.mp4",  # 2-byte UTF-8 characters
    "/".join(["講演"] * 60) + "/録画.mp4",  # 3-byte ones
    "x" * 250 + ".mp4",
])
def test_key_of_a_long_path_names_tar_members_that_fit_ustar(relative: str):
    key = make_key(relative)
    assert KEY_PATTERN.match(key) and len(key.encode("utf-8")) == len(key)
    # The longest member a sample of this input gets, written as the shards write it.
    longest = f"{sample_key(key, 9_999_999)}.{MEL}"
    info = tarfile.TarInfo(longest)
    with tarfile.open(fileobj=io.BytesIO(), mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    assert make_key(relative) != make_key(relative.replace(".mp4", ".mkv"))  # the cut part still counts


# --- folders and globs ------------------------------------------------------------------------------------


def test_folder_is_listed_recursively_videos_only_sorted_by_key(tree: Path):
    sources = list_sources(str(tree), LOCAL)
    assert sorted(s.uri for s in sources) == sorted(str(tree / v) for v in VIDEOS)
    assert [s.key for s in sources] == sorted(s.key for s in sources)
    for source in sources:
        relative = os.path.relpath(source.uri, tree)
        assert source.key == make_key(relative)
        assert KEY_PATTERN.match(source.key) and "." not in source.key
        assert source.size_bytes == len(TREE[relative])
        assert source.speaker is None and source.split is None


def test_same_name_in_two_folders_gives_two_keys(tree: Path):
    keys = {os.path.relpath(s.uri, tree): s.key for s in list_sources(str(tree), LOCAL)}
    assert keys["a/clip.mp4"] != keys["b/clip.mp4"]
    assert keys["a/clip.mp4"].startswith("a__clip_mp4_") and keys["b/clip.mp4"].startswith("b__clip_mp4_")


def test_keys_are_stable_across_runs_and_across_moving_the_tree(tree: Path, tmp_path: Path):
    first = list_sources(str(tree), LOCAL)
    assert list_sources(str(tree) + "/", LOCAL) == first
    moved = shutil.copytree(tree, tmp_path / "elsewhere" / "corpus")
    assert [s.key for s in list_sources(str(moved), LOCAL)] == [s.key for s in first]


def test_relative_folder_resolves_against_the_working_directory(tree: Path, monkeypatch):
    monkeypatch.chdir(tree.parent)
    assert list_sources("corpus", LOCAL) == list_sources(str(tree), LOCAL)


def test_a_single_file_keys_as_it_does_in_its_folder(tree: Path):
    [single] = list_sources(str(tree / "c" / "talk.webm"), LOCAL)
    assert single == Source(uri=str(tree / "c" / "talk.webm"), key=make_key("talk.webm"), speaker=None,
                            split=None, size_bytes=40)


@pytest.mark.parametrize("pattern, expected, root", [
    ("**/*.mp4", ["a/clip.mp4", "b/clip.mp4"], ""),
    ("*/clip.mp4", ["a/clip.mp4", "b/clip.mp4"], ""),
    ("b/**", ["b/clip.mp4", "b/deep/take.1.MKV"], "b"),
    ("b/**/*.MKV", ["b/deep/take.1.MKV"], "b"),
    ("[ac]/*", ["a/clip.mp4", "a/clip.wav", "c/talk.webm"], ""),  # a glob takes any extension it names
    ("*.txt", ["notes.txt"], ""),  # "*" does not cross folders
])
def test_glob_matches_and_keys_from_its_fixed_prefix(tree: Path, pattern: str, expected: list[str], root: str):
    sources = list_sources(f"{tree}/{pattern}", LOCAL)
    assert sorted(s.uri for s in sources) == sorted(str(tree / e) for e in expected)
    for source in sources:
        assert source.key == make_key(os.path.relpath(source.uri, tree / root))


def test_relative_glob(tree: Path, monkeypatch):
    monkeypatch.chdir(tree)
    assert [s.uri for s in list_sources("**/clip.mp4", LOCAL)] == [str(tree / "a/clip.mp4"),
                                                                    str(tree / "b/clip.mp4")]


# --- manifests --------------------------------------------------------------------------------------------


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """The same rows as .csv, .jsonl or .parquet, chosen by `path`'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        columns = {name: [row.get(name) for row in rows] for name in {n for row in rows for n in row}}
        pq.write_table(pa.table({n: pa.array(v, type=pa.string()) for n, v in columns.items()}), path)
    else:
        names = list(dict.fromkeys(n for row in rows for n in row))
        lines = [",".join(names)] + [",".join(str(row.get(n) or "") for n in names) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_relative_and_absolute_paths_with_speaker_and_split(tree: Path, suffix: str):
    rows = [
        {"path": "a/clip.mp4", "speaker": "spk1", "split": "train"},
        {"path": str(tree / "b" / "clip.mp4"), "speaker": "007", "split": "val"},  # "007" stays text
        {"path": "./c/../c/talk.webm", "speaker": None, "split": None},
        {"path": "gone/missing.mp4", "speaker": "spk2", "split": "train"},
    ]
    manifest = write_manifest(tree / f"manifest{suffix}", rows)
    sources = by_uri(list_sources(str(manifest), LOCAL))

    assert sorted(sources) == sorted(str(tree / p) for p in ["a/clip.mp4", "b/clip.mp4", "c/talk.webm",
                                                              "gone/missing.mp4"])
    clip_a, clip_b = sources[str(tree / "a/clip.mp4")], sources[str(tree / "b/clip.mp4")]
    assert (clip_a.speaker, clip_a.split, clip_a.size_bytes) == ("spk1", "train", 10)
    assert (clip_b.speaker, clip_b.split, clip_b.size_bytes) == ("007", "val", 20)
    talk = sources[str(tree / "c/talk.webm")]
    assert (talk.speaker, talk.split, talk.size_bytes) == (None, None, 40)
    missing = sources[str(tree / "gone/missing.mp4")]
    assert (missing.speaker, missing.size_bytes) == ("spk2", 0)  # listed; the pipeline records the failure
    # Inside the manifest's folder, keys match a folder listing of the same files, absolute or relative.
    folder_keys = {s.uri: s.key for s in list_sources(str(tree), LOCAL)}
    for uri in (str(tree / "a/clip.mp4"), str(tree / "b/clip.mp4"), str(tree / "c/talk.webm")):
        assert sources[uri].key == folder_keys[uri]


def test_jsonl_manifest_may_carry_any_other_fields(tree: Path):
    # The synthetic corpus's manifest holds nested objects and mixed-type lists next to `path`.
    rows = [{"key": "x", "path": "a/clip.mp4", "speaker": 3, "voice": {"name": "m1"},
             "phonemes": [["a", 0.1, 0.2]], "corrupt": None}]
    [source] = list_sources(str(write_manifest(tree / "rich.jsonl", rows)), LOCAL)
    assert (source.uri, source.speaker, source.split) == (str(tree / "a/clip.mp4"), "3", None)


def test_manifest_paths_resolve_against_its_own_folder(tree: Path):
    manifest = write_manifest(tree / "lists" / "m.csv", [{"path": "../a/clip.mp4"}])
    [source] = list_sources(str(manifest), LOCAL)
    assert (source.uri, source.size_bytes) == (str(tree / "a/clip.mp4"), 10)


# --- names that are not text, links ----------------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_a_failed_input_named_with_escapes(tree: Path):
    root = os.fsencode(tree)
    os.mkdir(root + b"/caf\xe9")  # Latin-1, as an old archive might hold
    for name in (b"/bad\xff.mp4", b"/caf\xe9/talk.mkv", b"/notes\xff.txt"):
        with open(root + name, "wb") as out:
            out.write(b"v")
    sources = list_sources(str(tree), LOCAL)
    assert sorted(s.uri for s in sources if not s.error) == sorted(str(tree / v) for v in VIDEOS)
    failed = {s.uri: s for s in sources if s.error}
    assert sorted(failed) == [f"{tree}/bad\\xff.mp4", f"{tree}/caf\\xe9/talk.mkv"]  # not notes: not a video
    for source in failed.values():
        assert source.error == storage.BAD_NAME and source.uri in source.detail and "UTF-8" in source.detail
        assert KEY_PATTERN.match(source.key) and source.key == make_key(os.path.relpath(source.uri, tree))
    assert [s.uri for s in list_sources(f"{tree}/*.mp4", LOCAL)] == [f"{tree}/bad\\xff.mp4"]
    assert storage.list_files(str(tree), LOCAL) == sorted(str(tree / p) for p in TREE)  # outputs: files only


def test_a_file_under_several_names_is_one_input_the_first_by_path(tree: Path):
    (tree / "b" / "same.mp4").symlink_to(tree / "a" / "clip.mp4")
    os.link(tree / "b" / "clip.mp4", tree / "c" / "hard.mp4")
    (tree / "0first.webm").symlink_to("c/talk.webm")  # a link before its target: the link stays
    sources = list_sources(str(tree), LOCAL)
    assert [os.path.relpath(s.uri, tree) for s in sorted(sources, key=lambda s: s.uri)] == \
        ["0first.webm", "a/clip.mp4", "b/clip.mp4", "b/deep/take.1.MKV"]
    assert by_uri(sources)[str(tree / "0first.webm")].size_bytes == len(TREE["c/talk.webm"])
    assert [s.uri for s in list_sources(f"{tree}/b/same.*", LOCAL)] == [str(tree / "b/same.mp4")]  # alone


def test_a_link_loop_ends_and_a_link_out_of_the_tree_is_followed(tree: Path, tmp_path: Path):
    (tree / "dirloop").symlink_to(".")
    (tree / "c" / "alias").symlink_to("../a")  # a folder of the tree, under a second name
    write_tree(tmp_path / "elsewhere", {"x/far.mp4": b"far"})
    (tree / "c" / "linked").symlink_to(tmp_path / "elsewhere")
    sources = list_sources(str(tree), LOCAL)
    expected = [str(tree / v) for v in VIDEOS] + [str(tree / "c/linked/x/far.mp4")]
    assert sorted(s.uri for s in sources) == sorted(expected)


def test_broken_and_self_links_are_failed_inputs(tree: Path):
    (tree / "gone.mp4").symlink_to("nowhere/gone.mp4")
    (tree / "b" / "self.mkv").symlink_to("self.mkv")
    (tree / "gone.txt").symlink_to("nowhere.txt")  # not a video: not an input
    failed = {os.path.relpath(s.uri, tree): s for s in list_sources(str(tree), LOCAL) if s.error}
    assert sorted(failed) == ["b/self.mkv", "gone.mp4"]
    assert {s.error for s in failed.values()} == {storage.BROKEN_LINK}
    assert "nowhere/gone.mp4" in failed["gone.mp4"].detail and "self.mkv" in failed["b/self.mkv"].detail
    assert {s.size_bytes for s in failed.values()} == {0}


def test_manifest_naming_a_file_and_a_link_to_it_is_an_error(tree: Path):
    (tree / "alias.mp4").symlink_to(tree / "a" / "clip.mp4")
    manifest = write_manifest(tree / "aliased.csv", [{"path": "a/clip.mp4"}, {"path": "alias.mp4"}])
    with pytest.raises(ValueError, match="more than once.*alias.mp4"):
        list_sources(str(manifest), LOCAL)


# --- errors -----------------------------------------------------------------------------------------------


def test_folder_without_videos_names_spec_and_extensions(tmp_path: Path):
    write_tree(tmp_path, {"readme.txt": b"x"})
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*\.mp4.*\.mkv"):
        list_sources(str(tmp_path), LOCAL)


def test_glob_matching_nothing_names_spec_and_pattern(tree: Path):
    with pytest.raises(ValueError, match=r"corpus/\*\*/\*\.avi.*matched no files"):
        list_sources(f"{tree}/**/*.avi", LOCAL)


def test_missing_path_and_missing_manifest(tmp_path: Path):
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        list_sources(str(tmp_path / "nowhere"), LOCAL)
    with pytest.raises(ValueError, match="manifest.*nothing.csv.*does not exist"):
        list_sources(str(tmp_path / "nothing.csv"), LOCAL)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_without_path_column_names_its_columns(tree: Path, suffix: str):
    manifest = write_manifest(tree / f"bad{suffix}", [{"file": "a/clip.mp4", "speaker": "s"}])
    with pytest.raises(ValueError, match=r"no 'path' column.*\['file', 'speaker'\]"):
        list_sources(str(manifest), LOCAL)


def test_manifest_listing_a_file_twice_is_an_error(tree: Path):
    manifest = write_manifest(tree / "twice.csv", [{"path": "a/clip.mp4"}, {"path": str(tree / "a/clip.mp4")}])
    with pytest.raises(ValueError, match="more than once"):
        list_sources(str(manifest), LOCAL)


# --- local storage ----------------------------------------------------------------------------------------


def test_join():
    assert storage.join("s3://bucket/prefix/", "a", "/b.mp4") == "s3://bucket/prefix/a/b.mp4"
    assert storage.join("/data", "shards", "") == "/data/shards"


def test_write_bytes_atomic_creates_folders_replaces_and_leaves_no_temporary(tmp_path: Path):
    target = str(tmp_path / "out" / "stats.json")
    storage.write_bytes_atomic(target, b"old", LOCAL)
    storage.write_bytes_atomic(target, b"new", LOCAL)
    assert storage.read_bytes(target, LOCAL) == b"new"
    assert os.listdir(tmp_path / "out") == ["stats.json"]


def test_write_failing_mid_way_leaves_no_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", disk_full)  # the bytes are written, the file is not yet in place
    fresh, existing = str(tmp_path / "fresh.tar"), tmp_path / "existing.tar"
    existing.write_bytes(b"complete")
    for target in (fresh, str(existing)):
        with pytest.raises(OSError, match="No space"):
            storage.write_bytes_atomic(target, b"x" * 1000, LOCAL)
    assert not os.path.exists(fresh)
    assert existing.read_bytes() == b"complete"
    assert os.listdir(tmp_path) == ["existing.tar"]


def test_atomic_local_path_is_unlisted_while_written_and_gone_after_an_interrupt(tmp_path: Path):
    target = tmp_path / "clip.mp4"
    with storage.atomic_local_path(target) as partial:
        partial.write_bytes(b"frames")
        assert partial.parent == tmp_path and partial.name.startswith(".clip.mp4.")
        assert storage.list_files(str(tmp_path), LOCAL, suffix=".mp4") == []
    assert target.read_bytes() == b"frames"
    (tmp_path / "plain").touch()  # what the process's umask gives a new file
    assert target.stat().st_mode == (tmp_path / "plain").stat().st_mode

    with pytest.raises(KeyboardInterrupt), storage.atomic_local_path(tmp_path / "other.mp4") as partial:
        partial.write_bytes(b"half")
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "plain"]


def fail_half_way(monkeypatch) -> None:
    """Make the chunked copy inside upload_file_atomic write some bytes and then fail."""
    def copy_then_fail(source, out, length=0):
        out.write(source.read(3))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.shutil, "copyfileobj", copy_then_fail)


def test_upload_file_atomic_local_and_its_failure(tmp_path: Path, monkeypatch):
    source = tmp_path / "shard.tar"
    source.write_bytes(b"0123456789" * 1000)
    storage.upload_file_atomic(source, str(tmp_path / "out" / "shard.tar"), LOCAL)
    assert (tmp_path / "out" / "shard.tar").read_bytes() == source.read_bytes()

    fail_half_way(monkeypatch)
    with pytest.raises(OSError, match="Input/output"):
        storage.upload_file_atomic(source, str(tmp_path / "out" / "other.tar"), LOCAL)
    assert os.listdir(tmp_path / "out") == ["shard.tar"]


def test_list_files_recursive_sorted_with_suffix_and_without_temporaries(tree: Path):
    (tree / "a" / ".clip.mp4.0123abcd.partial").write_bytes(b"half")  # a write in progress
    assert storage.list_files(str(tree), LOCAL) == sorted(str(tree / p) for p in TREE)
    assert storage.list_files(str(tree), LOCAL, suffix=".mkv") == [str(tree / "b/deep/take.1.MKV")]
    assert storage.list_files(str(tree / "notes.txt"), LOCAL) == [str(tree / "notes.txt")]
    assert storage.list_files(str(tree / "absent"), LOCAL) == []


UNWRITABLE = Path("/sys")  # sysfs: no one, root included, may create files in it (chmod does not stop root)


@pytest.mark.parametrize("kind, says", [
    ("a file", "is not a folder; name a new folder"),
    ("under a file", "cannot be created: '{tmp}/file' is not a folder; name a new folder"),
    ("not writable", "is not writable (Permission denied): fix its permissions or name another folder"),
    ("not creatable", "cannot be created (Operation not permitted): name a folder you may write to"),
])
def test_check_output_names_the_path_and_the_fix_in_one_line(tmp_path: Path, kind: str, says: str):
    (tmp_path / "file").write_bytes(b"x")
    output = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "shards" / "new",
              "not writable": UNWRITABLE, "not creatable": UNWRITABLE / "shards"}[kind]
    if not UNWRITABLE.is_dir() and kind.startswith("not"):
        pytest.skip("needs Linux's /sys")
    with pytest.raises(ValueError) as error:
        storage.check_output(str(output), LOCAL)
    assert str(error.value).startswith(f"output {str(output)!r} {says.format(tmp=tmp_path)}")
    assert "\n" not in str(error.value)


def test_check_output_creates_a_missing_folder_and_leaves_nothing_in_it(tmp_path: Path):
    output = tmp_path / "new" / "shards"
    storage.check_output(str(output), LOCAL)
    storage.check_output(str(output), LOCAL)  # and an existing one passes
    assert output.is_dir() and os.listdir(output) == []


def test_local_copy_delete_and_exists_locally(tree: Path):
    with storage.local_copy(str(tree / "a/clip.mp4"), LOCAL) as path:
        assert path == tree / "a/clip.mp4"
    with pytest.raises(FileNotFoundError), storage.local_copy(str(tree / "nope.mp4"), LOCAL):
        pass
    storage.delete(str(tree / "a/clip.mp4"), LOCAL)
    storage.delete(str(tree / "b"), LOCAL)
    storage.delete(str(tree / "never-was"), LOCAL)
    assert not storage.exists(str(tree / "a/clip.mp4"), LOCAL) and not storage.exists(str(tree / "b"), LOCAL)
    assert storage.exists(str(tree / "c/talk.webm"), LOCAL)


# --- S3, against a real server on loopback ----------------------------------------------------------------


@pytest.fixture
def bucket(s3_server: str) -> tuple[str, StorageConfig]:
    """A fresh bucket on the session's server: tests share the server, not their objects."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_server, name)
    return name, StorageConfig(endpoint=s3_server)


def test_s3_round_trip(bucket: tuple[str, StorageConfig], tree: Path):
    name, config = bucket
    prefix = f"s3://{name}/raw"
    for relative in TREE:
        storage.upload_file_atomic(tree / relative, storage.join(prefix, relative), config)

    sources = list_sources(prefix, config)
    assert [s.uri for s in sources] == [s.uri.replace(str(tree), prefix) for s in list_sources(str(tree), LOCAL)]
    assert [(s.key, s.size_bytes) for s in sources] == [(s.key, s.size_bytes)
                                                        for s in list_sources(str(tree), LOCAL)]
    assert list_sources(prefix + "/", config) == sources

    with storage.local_copy(f"{prefix}/b/deep/take.1.MKV", config) as path:
        assert path.name == "take.1.MKV" and path.read_bytes() == TREE["b/deep/take.1.MKV"]
    assert not path.exists()

    marker = f"s3://{name}/out/shard-000000.stats.json"
    storage.write_bytes_atomic(marker, b'{"ok": 3}', config)
    assert storage.exists(marker, config) and storage.read_bytes(marker, config) == b'{"ok": 3}'
    assert storage.list_files(f"s3://{name}", config, suffix=".json") == [marker]
    assert storage.list_files(prefix, config) == sorted(storage.join(prefix, p) for p in TREE)
    storage.delete(marker, config)
    storage.delete(f"{prefix}/b", config)
    assert not storage.exists(marker, config)
    assert storage.list_files(prefix, config, suffix=".mp4") == [f"{prefix}/a/clip.mp4"]


def test_s3_glob_and_manifest(bucket: tuple[str, StorageConfig], tree: Path):
    name, config = bucket
    for relative in TREE:
        storage.upload_file_atomic(tree / relative, f"s3://{name}/data/{relative}", config)
    manifest = f"s3://{name}/data/list.jsonl"
    rows = [{"path": "a/clip.mp4", "speaker": "s1", "split": "train"}, {"path": "gone.mp4"},
            {"path": f"s3://{name}/data/c/talk.webm", "split": "val"}]
    storage.write_bytes_atomic(manifest, "".join(json.dumps(r) + "\n" for r in rows).encode(), config)

    listed = by_uri(list_sources(manifest, config))
    assert listed[f"s3://{name}/data/a/clip.mp4"].size_bytes == 10
    assert listed[f"s3://{name}/data/a/clip.mp4"].key == make_key("a/clip.mp4")
    assert listed[f"s3://{name}/data/c/talk.webm"].split == "val"
    assert listed[f"s3://{name}/data/gone.mp4"].size_bytes == 0

    globbed = list_sources(f"s3://{name}/data/*/clip.mp4", config)
    assert [s.uri for s in globbed] == [f"s3://{name}/data/a/clip.mp4", f"s3://{name}/data/b/clip.mp4"]
    storage.write_bytes_atomic(f"s3://{name}/docs/readme.txt", b"text", config)
    with pytest.raises(ValueError, match=f"no video files under 's3://{name}/docs'"):
        list_sources(f"s3://{name}/docs", config)


def test_s3_failed_upload_leaves_no_object_and_empty_prefix_is_an_error(bucket, tmp_path: Path, monkeypatch):
    name, config = bucket
    source = tmp_path / "shard.tar"
    source.write_bytes(b"x" * 100)
    fail_half_way(monkeypatch)
    with pytest.raises(OSError, match="Input/output"):
        storage.upload_file_atomic(source, f"s3://{name}/shards/shard.tar", config)
    assert not storage.exists(f"s3://{name}/shards/shard.tar", config)
    with pytest.raises(ValueError, match=f"s3://{name}/nothing-here.*does not exist"):
        list_sources(f"s3://{name}/nothing-here", config)


def test_check_output_on_s3_leaves_no_object_and_names_a_missing_bucket(bucket: tuple[str, StorageConfig]):
    name, config = bucket
    storage.check_output(f"s3://{name}/shards", config)
    fs, path = storage.resolve(f"s3://{name}", config)
    # The probe, partial or not, is gone (pyarrow may leave the empty folder marker a delete keeps).
    assert [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.type == pafs.FileType.File] == []
    with pytest.raises(ValueError, match=f"output 's3://{name}-missing/shards' is not writable .*bucket") as error:
        storage.check_output(f"s3://{name}-missing/shards", config)
    assert "\n" not in str(error.value)


def test_s3_filesystem_and_config_travel_to_workers(s3_server: str):
    config = StorageConfig(endpoint=s3_server, region="us-east-1")
    fs, path = storage.resolve("s3://bucket/key.mp4", config)
    assert path == "bucket/key.mp4"
    assert pickle.loads(pickle.dumps(config)) == config
    assert isinstance(pickle.loads(pickle.dumps(fs)), type(fs))
