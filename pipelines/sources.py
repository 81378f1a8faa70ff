"""The list of videos a preprocessing run works on: paths and a little metadata, never the media itself.

A run's input is one string, the `spec`, which is one of:

* a folder, local or ``s3://bucket/prefix``: every file under it (recursively) with a video extension;
* a single video file;
* a glob, e.g. ``data/**/*.mp4`` or ``s3://bucket/raw/*/clip_*.mkv`` (``*`` and ``?`` stay within one
  folder, ``**`` spans any number of folders): every file that matches, whatever its extension;
* a manifest, ``.csv``, ``.jsonl`` or ``.parquet`` (local or on S3), with a ``path`` column and optional
  ``speaker`` and ``split`` columns. Relative paths resolve against the manifest's folder. A listed file
  that does not exist is still returned (with size 0): the pipeline records it as failed, with a reason,
  rather than letting it vanish from the counts.

In a local folder or glob, one file is one input, however many names lead to it: links are followed, a
folder already listed through another link is not listed again (so a link up the tree ends), and of the
names of one file the first by path stays. Entries that name no file one could read, a name that is not
UTF-8 or a link that leads nowhere, are returned with their reason in `error`, to be recorded as failed.

Each input gets a key that names its samples in the WebDataset shards. It is derived from the path
relative to the input root (the folder, the glob's fixed prefix, or the manifest's folder), so it is
the same on every run and on every machine that sees the same tree, and it survives moving the whole
tree elsewhere.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import storage
from pipelines.core.storage import StorageConfig
from pipelines.shards.format import MAX_VIDEO_KEY_CHARS

__all__ = ["MANIFEST_EXTENSIONS", "VIDEO_EXTENSIONS", "Source", "list_sources", "make_key"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")
GLOB_CHARACTERS = frozenset("*?[")

# 10 hex digits (40 bits): the hash only has to tell apart paths whose sanitised forms are equal, which
# is rare to begin with; list_sources still checks that keys are unique.
KEY_HASH_CHARS = 10
# Keys name the shards' tar members, which have a byte limit (pipelines.shards.format); keys are ASCII, so
# characters are bytes. The hash covers the whole relative path, so cutting the readable part keeps keys unique.
KEY_READABLE_CHARS = MAX_VIDEO_KEY_CHARS - len("_") - KEY_HASH_CHARS
_UNSAFE_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Source:
    """One input video, as the driver knows it before anything is decoded."""

    uri: str  # absolute local path or s3://bucket/key
    key: str  # deterministic, unique per input, WebDataset-safe: only [A-Za-z0-9_-], no dots
    speaker: str | None
    split: str | None  # from a manifest's `split` column, else None
    size_bytes: int  # 0 for a manifest entry whose file does not exist
    error: str = ""  # why the listing already knows the input unusable (storage.BAD_NAME, BROKEN_LINK), or ""
    detail: str = ""


def make_key(relative_path: str) -> str:
    """The WebDataset key for a path relative to the input root: readable, and unique thanks to a hash.

    WebDataset splits a member name at its first dot into key and field, so dots must go; "/" becomes "__"
    so that the folder structure stays readable. ``a/clip.mp4`` -> ``a__clip_mp4_<hash of "a/clip.mp4">``.
    At most MAX_VIDEO_KEY_CHARS characters, however deep the path, so that every member name of its samples fits.
    """
    readable = _UNSAFE_KEY_CHARACTERS.sub("_", relative_path.replace("/", "__"))[:KEY_READABLE_CHARS]
    digest = hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:KEY_HASH_CHARS]
    return f"{readable}_{digest}"


def list_sources(spec: str, config: StorageConfig) -> list[Source]:
    """Every input that `spec` names, sorted by key. Raises ValueError if it names none."""
    if spec.lower().endswith(MANIFEST_EXTENSIONS):
        sources = _from_manifest(spec, config)
    elif GLOB_CHARACTERS & set(spec):
        sources = _from_glob(spec, config)
    else:
        sources = _from_path(spec, config)
    _check_unique(spec, sources, lambda source: source.key)
    return sorted(sources, key=lambda source: source.key)


def _from_path(spec: str, config: StorageConfig) -> list[Source]:
    root = _absolute(spec)
    if not storage.exists(root, config):
        raise ValueError(f"{spec!r} does not exist: expected a folder, a video file, a glob, a manifest "
                         f"({', '.join(MANIFEST_EXTENSIONS)}) or s3://bucket/prefix")
    listing = storage.list_folder(root, config)
    if [uri for uri, _ in listing.files] == [root]:
        # A single file: its folder is the root, so it keys the same as when its folder is listed.
        return [_source(root, posixpath.dirname(root), listing.files[0][1])]
    videos = _listed_sources(listing, root, lambda uri: uri.lower().endswith(VIDEO_EXTENSIONS))
    if not videos:
        raise ValueError(f"no video files under {spec!r}: looked recursively for {', '.join(VIDEO_EXTENSIONS)} "
                         f"among {len(listing.files)} files")
    return videos


def _from_glob(spec: str, config: StorageConfig) -> list[Source]:
    root, pattern = _split_glob(_absolute(spec))
    matcher = _glob_regex(pattern)
    listing = storage.list_folder(root, config)
    matches = _listed_sources(listing, root, lambda uri: matcher.match(_relative(uri, root)))
    if not matches:
        raise ValueError(f"glob {spec!r} matched no files: looked for {pattern!r} under {root!r}")
    return matches


def _from_manifest(spec: str, config: StorageConfig) -> list[Source]:
    manifest = _absolute(spec)
    if not storage.exists(manifest, config):
        raise ValueError(f"manifest {spec!r} does not exist")
    columns, rows = _read_manifest(manifest, storage.read_bytes(manifest, config))
    if "path" not in columns:
        raise ValueError(f"manifest {spec!r} has no 'path' column; its columns are {sorted(columns)}")
    if not rows:
        raise ValueError(f"manifest {spec!r} lists no files")
    root = posixpath.dirname(manifest)
    entries = []
    for line, row in enumerate(rows, start=1):
        path = _text(row.get("path"))
        if path is None:
            raise ValueError(f"manifest {spec!r}: row {line} has an empty 'path'")
        entries.append((_manifest_uri(path, root), _text(row.get("speaker")), _text(row.get("split"))))
    sizes = _file_sizes([uri for uri, _, _ in entries], config)
    sources = [_source(uri, root, sizes.get(uri, 0), speaker, split) for uri, speaker, split in entries]
    # Rows name files on purpose, with their own speaker and split, so two names of one file (a link and
    # its target) are the operator's mistake to resolve, not ours to pick from.
    _check_unique(spec, sources, lambda source: storage.file_identity(source.uri))
    return sources


def _listed_sources(listing: storage.Listing, root: str, wanted: Callable[[str], object]) -> list[Source]:
    """The listed files `wanted` picks by URI, one per file, then the unusable entries it picks, as failed."""
    files = _one_per_file([_source(uri, root, size) for uri, size in listing.files if wanted(uri)])
    return files + [_source(entry.uri, root, 0, error=entry.reason, detail=entry.detail)
                    for entry in listing.unusable if wanted(entry.uri)]


def _one_per_file(sources: list[Source]) -> list[Source]:
    """Drop every name but the first (by path) of a file listed under several: a link to a file, or a hard
    link, would otherwise make it two videos, perhaps one in each split."""
    seen: set[Hashable] = set()
    kept = []
    for source in sorted(sources, key=lambda s: s.uri):
        identity = storage.file_identity(source.uri)
        if identity not in seen:
            seen.add(identity)
            kept.append(source)
    return kept


def _source(uri: str, root: str, size: int, speaker: str | None = None, split: str | None = None,
            error: str = "", detail: str = "") -> Source:
    return Source(uri=uri, key=make_key(_relative(uri, root)), speaker=speaker, split=split, size_bytes=size,
                  error=error, detail=detail)


def _check_unique(spec: str, sources: list[Source], identity: Callable[[Source], Hashable]) -> None:
    """Raise if two sources have the same `identity`, naming some of them."""
    uris: dict[Hashable, list[str]] = defaultdict(list)
    for source in sources:
        uris[identity(source)].append(source.uri)
    repeated = sorted(names for names in uris.values() if len(names) > 1)
    if repeated:
        raise ValueError(f"{spec!r} lists the same input more than once ({len(repeated)} inputs), e.g. "
                         f"{repeated[0]}")


# --- paths ------------------------------------------------------------------------------------------------


def _absolute(uri: str) -> str:
    """Local paths made absolute and normalised; S3 URIs without a trailing slash."""
    if storage.is_s3(uri):
        return uri.rstrip("/")
    return storage.resolve(uri, StorageConfig())[1]


def _relative(uri: str, root: str) -> str:
    """`uri` relative to `root`; for one outside it (a manifest's absolute path), the whole path sans scheme."""
    if uri.startswith(root.rstrip("/") + "/"):
        return uri[len(root.rstrip("/")) + 1:]
    return uri.removeprefix(storage.S3_PREFIX).lstrip("/")


def _manifest_uri(path: str, root: str) -> str:
    if storage.is_s3(path):
        return storage.S3_PREFIX + posixpath.normpath(path.removeprefix(storage.S3_PREFIX))
    if os.path.isabs(path):
        return os.path.normpath(path)
    if storage.is_s3(root):
        return storage.S3_PREFIX + posixpath.normpath(posixpath.join(root.removeprefix(storage.S3_PREFIX), path))
    return os.path.normpath(os.path.join(root, path))


def _file_sizes(uris: list[str], config: StorageConfig) -> dict[str, int]:
    """Sizes of files that exist, found by listing their folders rather than asking file by file.

    On S3 one LIST request returns up to 1,000 sizes where a HEAD request returns one, which turns a
    100,000-line manifest from minutes of round trips into seconds.
    """
    folders: dict[str, set[str]] = defaultdict(set)
    for uri in uris:
        folders[posixpath.dirname(uri)].add(uri)
    sizes: dict[str, int] = {}
    for folder, wanted in folders.items():
        listed = storage.list_file_sizes(folder, config, recursive=False)
        sizes.update((uri, size) for uri, size in listed if uri in wanted)
    return sizes


def _split_glob(pattern: str) -> tuple[str, str]:
    """("fixed/prefix", "rest/with/*.mp4"): the folders before the first wildcard, then the wildcard part."""
    scheme = storage.S3_PREFIX if storage.is_s3(pattern) else ""
    parts = pattern.removeprefix(scheme).split("/")
    first = next(i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part))
    if scheme and first == 0:
        raise ValueError(f"glob {pattern!r} has a wildcard in the bucket name; name the bucket")
    return scheme + ("/".join(parts[:first]) or "/"), "/".join(parts[first:])


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for relative paths: `*`, `?` and `[...]` stay within a folder, a `**` folder spans any number."""
    components = pattern.split("/")
    regex = ""
    for index, component in enumerate(components):
        last = index == len(components) - 1
        if component == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _component_regex(component) + ("" if last else "/")
    return re.compile(regex + r"\Z")


def _component_regex(component: str) -> str:
    out, i = [], 0
    while i < len(component):
        char = component[i]
        close = component.find("]", i + 2) if char == "[" else -1  # "[]...]" keeps "]" as a member, as fnmatch
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif close != -1:
            members = component[i + 1:close].replace("\\", "\\\\")
            out.append(f"[^/{members[1:]}]" if members.startswith("!") else f"[{members}]")
            i = close
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


# --- manifests --------------------------------------------------------------------------------------------


def _read_manifest(uri: str, data: bytes) -> tuple[set[str], list[dict[str, Any]]]:
    """(column names, rows). Only `path`, `speaker` and `split` matter, so other columns may hold anything."""
    if uri.lower().endswith(".parquet"):
        return _read_parquet(data)
    text = data.decode("utf-8-sig")  # tolerate the byte-order mark spreadsheet programs write
    if uri.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        return set(reader.fieldnames or ()), rows
    return _read_jsonl(uri, text.splitlines())


def _read_jsonl(uri: str, lines: Iterable[str]) -> tuple[set[str], list[dict[str, Any]]]:
    # Parsed with json rather than pyarrow: rich manifests (the synthetic corpus's, with mixed-type
    # phoneme lists) defeat pyarrow's type inference, and we only need three fields.
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"manifest {uri!r}: line {number} is not JSON ({error})") from error
        if not isinstance(row, dict):
            raise ValueError(f"manifest {uri!r}: line {number} is not a JSON object")
        rows.append(row)
    return {column for row in rows for column in row}, rows


def _read_parquet(data: bytes) -> tuple[set[str], list[dict[str, Any]]]:
    parquet = pq.ParquetFile(pa.BufferReader(data))
    columns = set(parquet.schema_arrow.names)
    wanted = [name for name in ("path", "speaker", "split") if name in columns]
    return columns, parquet.read(columns=wanted).to_pylist()


def _text(value: Any) -> str | None:
    """A manifest cell as text; empty cells (CSV "", JSON null, Parquet null) are None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None
