"""One way to read and write local folders and S3-compatible object storage alike, through pyarrow.fs.

Every function takes a URI, either a local path (absolute or relative to the working directory) or
``s3://bucket/key``, and a :class:`StorageConfig`. The config is a small frozen value, so it travels to Ray
workers as a task argument and each process builds (and caches) its own filesystem from it; nothing here
holds a connection that has to be pickled.

Writes are atomic from a reader's point of view: a file or object appears under its final name only once
it is complete, so "it exists" can mean "it is done" to a resumable pipeline.

* Local: bytes go to a hidden temporary file in the same folder (``.NAME.RANDOM.partial``), are fsynced,
  and ``os.replace`` puts them in place. :func:`list_files` never reports those temporary files.
* S3: an object becomes visible only when its PUT (or multipart upload) completes; a writer killed
  half-way leaves nothing behind. pyarrow has no way to abort an upload from Python, though: an
  exception raised while the stream is open would still complete it on close. We close it ourselves
  and delete the truncated object at once, so it is gone before the exception reaches the caller.

Credentials come from the usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` environment
variables, ``~/.aws``, instance metadata); only the endpoint and region are configured here.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import pyarrow.fs as pafs

__all__ = ["Listing", "StorageConfig", "Unusable", "atomic_local_path", "check_output", "delete", "exists",
           "file_identity", "is_s3", "join", "list_file_sizes", "list_files", "list_folder", "local_copy",
           "read_bytes", "resolve", "upload_file_atomic", "write_bytes_atomic"]

S3_PREFIX = "s3://"
# Hidden and with a suffix no reader asks for, so a half-written local file is never mistaken for output.
PARTIAL_SUFFIX = ".partial"
# Big enough that per-call overhead vanishes next to the transfer, small enough to stay out of the way
# of a worker's memory budget.
COPY_CHUNK_BYTES = 8 * 1024 * 1024
# Why a listed entry names no usable file; they become failure reasons of inputs.
BAD_NAME = "bad_name"  # not valid UTF-8, so it cannot be text in a URI, a record or the index
BROKEN_LINK = "broken_link"  # a symbolic link to nothing, or to itself


@dataclass(frozen=True)
class StorageConfig:
    """Where S3 lives. The defaults mean AWS itself, with the region found by the AWS SDK."""

    endpoint: str | None = field(default=None, metadata={"help": "S3-compatible endpoint URL for s3:// paths, e.g. "
                                                                  "http://127.0.0.1:9000; none: AWS"})
    region: str | None = field(default=None, metadata={"help": "S3 region; none: the AWS SDK's own choice"})


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


def resolve(uri: str, config: StorageConfig) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `uri` and the path to give that filesystem ("bucket/key" for S3)."""
    if is_s3(uri):
        return _s3_filesystem(config), _s3_path(uri)
    return pafs.LocalFileSystem(), _local_path(uri)


def join(uri: str, *parts: str) -> str:
    """`uri` with `parts` appended by "/"; a part's own leading or trailing slashes do not reset the path.

    Raises ValueError for a part with a "." or ".." segment: parts may come from what inputs and shards say,
    and a path built from them must stay under `uri`.
    """
    pieces = [part.strip("/") for part in parts if part.strip("/")]
    for part in pieces:
        if {".", ".."} & set(part.split("/")):
            raise ValueError(f"path part {part!r} would leave {uri!r}: it has a '.' or '..' segment")
    return "/".join([uri.rstrip("/")] + pieces)


def exists(uri: str, config: StorageConfig) -> bool:
    fs, path = resolve(uri, config)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str, config: StorageConfig) -> bytes:
    fs, path = resolve(uri, config)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes_atomic(uri: str, data: bytes, config: StorageConfig) -> None:
    """Write `data` to `uri` so that readers see either nothing (or the previous content) or all of it."""
    _write_atomic(uri, config, lambda out: out.write(data))


def upload_file_atomic(local: Path, uri: str, config: StorageConfig) -> None:
    """Copy the file `local` to `uri` in chunks, with the same promise as :func:`write_bytes_atomic`."""
    with open(local, "rb") as source:
        _write_atomic(uri, config, lambda out: shutil.copyfileobj(source, out, COPY_CHUNK_BYTES))


def list_files(uri: str, config: StorageConfig, suffix: str | None = None) -> list[str]:
    """Every file under `uri` (recursive), as full URIs, sorted; `uri` itself if it is a file; [] if absent.

    `suffix` is compared case-insensitively, so ".MP4" files are found by ".mp4".
    """
    return [file_uri for file_uri, _ in list_file_sizes(uri, config, suffix)]


def list_file_sizes(uri: str, config: StorageConfig, suffix: str | None = None,
                    recursive: bool = True) -> list[tuple[str, int]]:
    """Like :func:`list_files`, with each file's size in bytes: one listing gives both, no extra requests."""
    wanted = suffix.lower() if suffix else None
    return [(file_uri, size) for file_uri, size in list_folder(uri, config, recursive).files
            if wanted is None or file_uri.lower().endswith(wanted)]


@dataclass(frozen=True)
class Unusable:
    """A local directory entry that names no file one could read, found while listing."""

    uri: str  # printable: bytes of the name that are not UTF-8 appear as backslash escapes (\xff)
    reason: str  # BAD_NAME or BROKEN_LINK
    detail: str


@dataclass(frozen=True)
class Listing:
    files: list[tuple[str, int]]  # (uri, size in bytes), sorted
    unusable: list[Unusable]  # sorted by uri; always empty on S3, whose keys are UTF-8 and have no links


def list_folder(uri: str, config: StorageConfig, recursive: bool = True) -> Listing:
    """Every file under `uri`, as :func:`list_file_sizes`, and the entries that name no usable file.

    Locally each folder is entered once, however many links lead to it, so a link back up the tree ends
    rather than listing the same files again at every depth; a link to a file counts as a file.
    """
    fs, path = resolve(uri, config)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return Listing([(_to_uri(uri, info.path), info.size)], [])
    if info.type != pafs.FileType.Directory:
        return Listing([], [])
    if not is_s3(uri):
        return _list_local(path, recursive)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    return Listing(sorted((_to_uri(uri, i.path), i.size) for i in infos
                          if i.type == pafs.FileType.File and not _is_partial(i.base_name)), [])


def file_identity(uri: str) -> Hashable:
    """Equal for two URIs that name the same file: a link and its target, or two hard links, locally."""
    if is_s3(uri):
        return uri
    try:
        info = os.stat(_local_path(uri))
    except OSError:
        return _local_path(uri)  # nothing there (yet): only its name tells it apart
    return info.st_dev, info.st_ino


def check_output(uri: str, config: StorageConfig) -> None:
    """Raise ValueError, one line naming `uri` and the fix, unless files can be written under it.

    Meant for the start of a command, so that an unusable output costs a message rather than a run that
    fails once work has begun. A local folder is created if missing, then a probe file is made and removed
    in it: asking os.access can say yes where a write fails (read-only mounts, ACLs). On S3 a probe object
    is written and deleted, which also tells a missing bucket or refused credentials. Probes are named as
    partial files, so one left by a kill is never listed.
    """
    probe = f".write-probe-{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}"
    if is_s3(uri):
        try:
            write_bytes_atomic(join(uri, probe), b"", config)
            delete(join(uri, probe), config)
        except OSError as error:
            raise ValueError(f"output {uri!r} is not writable ({' '.join(str(error).split())}): check the bucket "
                             f"name, the credentials and --endpoint") from None
        return
    path = _local_path(uri)
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = _nearest_existing(path)
        problem = "is not a folder" if blocking == path else f"cannot be created: {blocking!r} is not a folder"
        raise ValueError(f"output {path!r} {problem}; name a new folder, or one that exists") from None
    except OSError as error:
        raise ValueError(f"output {path!r} cannot be created ({error.strerror}): name a folder you may write "
                         f"to") from None
    try:
        os.close(os.open(os.path.join(path, probe), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.unlink(os.path.join(path, probe))
    except OSError as error:
        raise ValueError(f"output {path!r} is not writable ({error.strerror}): fix its permissions or name "
                         f"another folder") from None


def _nearest_existing(path: str) -> str:
    """`path`, or the closest folder above it that exists (or, wrongly, is a file)."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def delete(uri: str, config: StorageConfig) -> None:
    """Remove a file, or a folder with everything under it. Nothing there already is not an error."""
    fs, path = resolve(uri, config)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        fs.delete_file(path)
    elif kind == pafs.FileType.Directory:
        fs.delete_dir(path)


@contextmanager
def local_copy(uri: str, config: StorageConfig) -> Iterator[Path]:
    """A local path with the content of `uri`, for libraries that want a real file (FFmpeg, dlib).

    Local files are used in place. Objects are downloaded, under their own file name so that tools that
    guess the format from the extension still can, into a temporary folder removed on exit.
    Raises FileNotFoundError if there is nothing at `uri`.
    """
    fs, path = resolve(uri, config)
    if not is_s3(uri):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no file at {uri!r}")
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="storage-") as folder:
        target = Path(folder) / os.path.basename(path)
        with fs.open_input_stream(path) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
        yield target


@contextmanager
def atomic_local_path(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary path beside `path` to write to; it becomes `path` only if the block succeeds.

    The file is created empty (so the random name is ours alone), the block writes it by name (PyAV and
    the like open paths, not streams), then it is fsynced and renamed over `path`. Any exception, including
    KeyboardInterrupt, removes it instead. The folder must exist. The name ends in ``.partial``, not in
    `path`'s extension, so that :func:`list_files` and any reader that looks for ``.mp4`` pass it over;
    writers that pick a format from the extension must therefore name it themselves.
    """
    final = Path(path)
    # Same folder, so os.replace is a rename within one filesystem and therefore atomic.
    temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
    temporary.touch(exist_ok=False)  # permissions as any new file (umask), unlike tempfile's 0600
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    # Without fsync a power cut after the rename can leave the final name pointing at empty blocks.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(uri: str, config: StorageConfig, fill: Callable[[BinaryIO], object]) -> None:
    fs, path = resolve(uri, config)
    if is_s3(uri):
        _write_s3(fs, path, fill)
    else:
        _write_local(path, fill)


def _write_local(path: str, fill: Callable[[BinaryIO], object]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_local_path(path) as temporary, open(temporary, "wb") as out:
        fill(out)


def _write_s3(fs: pafs.FileSystem, path: str, fill: Callable[[BinaryIO], object]) -> None:
    out = fs.open_output_stream(path)
    try:
        fill(out)
    except BaseException:
        _discard_upload(fs, path, out)
        raise
    out.close()


def _discard_upload(fs: pafs.FileSystem, path: str, out: pafs.NativeFile) -> None:
    """Take back a failed upload. pyarrow cannot abort one: closing the stream, which garbage collection
    would do anyway, completes it with what was written so far, so complete it now and delete the result."""
    try:
        out.close()
    except Exception:
        return  # the upload itself failed: nothing was published, any earlier version is untouched
    with suppress(FileNotFoundError):
        fs.delete_file(path)


@functools.lru_cache(maxsize=None)
def _s3_filesystem(config: StorageConfig) -> pafs.S3FileSystem:
    # Cached per process: a filesystem resolves credentials and keeps a connection pool, and a worker
    # may touch thousands of objects with the same config.
    options: dict[str, str] = {}
    if config.endpoint:
        parts = urlsplit(config.endpoint if "://" in config.endpoint else f"https://{config.endpoint}")
        options.update(scheme=parts.scheme, endpoint_override=parts.netloc)
    if config.region:
        options["region"] = config.region
    return pafs.S3FileSystem(**options)


def _s3_path(uri: str) -> str:
    path = uri[len(S3_PREFIX):].strip("/")
    if not path:
        raise ValueError(f"{uri!r} names no bucket: expected s3://bucket/key")
    return path


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri))


def _list_local(root: str, recursive: bool) -> Listing:
    # Walked by bytes: a name need not be UTF-8, and pyarrow's own listing stops at the first that is not,
    # naming none. Links are followed, as data often lives elsewhere; a folder already entered (by another
    # link, or through a link to a folder above) is skipped, which is what ends a loop. Names are taken in
    # sorted order, so which of two ways into a folder lists its files does not depend on the filesystem.
    files: list[tuple[str, int]] = []
    unusable: list[Unusable] = []
    entered: set[tuple[int, int]] = set()
    folders = [(os.fsencode(root), os.stat(root))]
    while folders:
        folder, here = folders.pop()
        if (here.st_dev, here.st_ino) in entered:
            continue
        entered.add((here.st_dev, here.st_ino))
        with os.scandir(folder) as listed:
            entries = sorted(listed, key=lambda entry: entry.name)
        below = []
        for entry in entries:
            try:
                info = entry.stat()  # of what a link leads to
            except OSError as error:
                if entry.is_symlink():
                    unusable.append(_broken_link(entry.path, error))
                continue  # otherwise removed since the folder was read: nothing there to list
            if stat.S_ISDIR(info.st_mode) and recursive:
                below.append((entry.path, info))
            elif stat.S_ISREG(info.st_mode) and not _is_partial(_printable(entry.name)):
                try:
                    files.append((entry.path.decode("utf-8"), info.st_size))
                except UnicodeDecodeError:
                    unusable.append(_bad_name(entry.path))
        folders += reversed(below)  # the stack pops them in sorted order
    return Listing(sorted(files), sorted(unusable, key=lambda u: u.uri))


def _printable(path: bytes) -> str:
    """A name as text, whatever its bytes: those that are not UTF-8 become backslash escapes."""
    return path.decode("utf-8", "backslashreplace")


def _bad_name(path: bytes) -> Unusable:
    name = _printable(path)
    return Unusable(name, BAD_NAME, f"the name '{name}' is not valid UTF-8 (bytes shown as \\x escapes); "
                                    f"rename the file to use it")


def _broken_link(path: bytes, error: OSError) -> Unusable:
    name = _printable(path)
    return Unusable(name, BROKEN_LINK, f"'{name}' is a link to '{_printable(os.readlink(path))}', which leads "
                                       f"to no file ({error.strerror})")


def _to_uri(like: str, path: str) -> str:
    """A path as `resolve` hands it out, turned back into a URI of the same kind as `like`."""
    return S3_PREFIX + path if is_s3(like) else path


def _is_partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)
