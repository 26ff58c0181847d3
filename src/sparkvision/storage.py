"""Files anywhere: local paths, ``file://`` URLs and every filesystem fsspec reaches
(``s3://``/``s3a://`` with s3fs, ``gs://`` with gcsfs, ``abfs(s)://`` with adlfs,
``hdfs://`` with pyarrow, ``memory://``). Model folders, checkpoints, prepared shards and
manifests go through here.

Writes are atomic: a local or renaming filesystem (HDFS) gets a temporary name and a rename;
an object store (S3, GCS, Azure Blob) gets one upload of the finished file, which readers
see whole or not at all. Local paths take the plain ``open``/``os`` route (no overhead)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

from sparkvision import extras
from sparkvision.errors import DataError

#: fsspec protocols whose rename is a real, atomic rename (temp name + rename works).
_RENAMING = frozenset({"hdfs", "arrow_hdfs", "viewfs", "sftp", "ssh"})
#: What to install for a URL scheme fsspec knows but cannot import.
_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs",
             "abfss": "adlfs", "az": "adlfs", "hdfs": "pyarrow (with libhdfs)"}


def is_url(path: str) -> bool:
    return "://" in str(path)


def local_path(path: str | os.PathLike[str]) -> str | None:
    """The local path of ``path`` (``file://`` and ``file:`` stripped), or None for a URL of
    another filesystem."""
    text = os.fspath(path)
    if text.startswith("file://"):
        return text[len("file://"):]
    if text.startswith("file:"):
        return text[len("file:"):]
    if text.startswith("local://"):
        return text[len("local://"):]
    return None if is_url(text) else text


def is_local(path: str | os.PathLike[str]) -> bool:
    return local_path(path) is not None


def _fs(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, its path) for a non-local URL, with a clear error when the
    filesystem's package is missing."""
    import fsspec

    scheme = path.split("://", 1)[0]
    try:
        fs, p = fsspec.core.url_to_fs(path)
    except ImportError as exc:
        if scheme in ("s3", "s3a"):
            raise extras.missing_error("s3", f"{path}", f"{exc}") from exc
        package = _PACKAGES.get(scheme, "the fsspec implementation for it")
        raise DataError(
            f"cannot open {path}: the {scheme}:// filesystem needs {package} "
            f"(pip install {package.split()[0]} on the driver and every executor)"
        ) from exc
    except ValueError as exc:
        raise DataError(f"cannot open {path}: {exc}; use a local path or an fsspec URL "
                        "such as s3://bucket/folder") from exc
    # fsspec caches listings per process, and Python workers live across tasks: another
    # process (a rank, a retried task, the driver) may have written since. Always look.
    fs.invalidate_cache()
    return fs, p


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base/part/...`` for local paths and URLs alike."""
    text = os.fspath(base)
    if is_url(text) and not is_local(text):
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(text, *parts)


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _test(path: str | os.PathLike[str], check: str) -> bool:
    """``os.path.<check>`` for a local path, the filesystem's method of that name else."""
    local = local_path(path)
    if local is not None:
        return bool(getattr(os.path, check)(local))
    fs, p = _fs(os.fspath(path))
    return bool(getattr(fs, check)(p))


def exists(path: str | os.PathLike[str]) -> bool:
    return _test(path, "exists")


def isdir(path: str | os.PathLike[str]) -> bool:
    return _test(path, "isdir")


def isfile(path: str | os.PathLike[str]) -> bool:
    return _test(path, "isfile")


def size(path: str) -> int:
    local = local_path(path)
    if local is not None:
        return os.path.getsize(local)
    fs, p = _fs(path)
    return int(fs.size(p))


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """Names (not paths) in the folder ``path``; empty when it does not exist."""
    local = local_path(path)
    if local is not None:
        return sorted(os.listdir(local)) if os.path.isdir(local) else []
    fs, p = _fs(os.fspath(path))
    if not fs.isdir(p):
        return []
    return sorted(basename(e) for e in fs.ls(p, detail=False) if basename(e))


def walk_files(path: str, keep: Any = None) -> list[str]:
    """Every file under the folder ``path`` (full paths or URLs, sorted); ``keep(name)``
    filters both folder and file names (e.g. skip hidden ones)."""
    keep = keep or (lambda name: True)
    local = local_path(path)
    found: list[str] = []
    if local is not None:
        for root, dirs, files in os.walk(local):
            dirs[:] = sorted(d for d in dirs if keep(d))
            found.extend(os.path.join(root, f) for f in files if keep(f))
        return sorted(found)
    fs, p = _fs(path)
    root = p.rstrip("/")
    for name in fs.find(p):
        rel = name[len(root):].strip("/").split("/")
        if rel != [""] and all(keep(part) for part in rel):
            found.append(join(path, *rel))  # keeps the caller's scheme (s3a:// stays)
    return sorted(found)


def makedirs(path: str | os.PathLike[str]) -> None:
    """Create the folder (object stores have no folders: nothing to do there)."""
    local = local_path(path)
    if local is not None:
        os.makedirs(local, exist_ok=True)
        return
    fs, p = _fs(os.fspath(path))
    fs.makedirs(p, exist_ok=True)


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file or a whole folder; nothing when it is not there."""
    local = local_path(path)
    if local is not None:
        if os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(local)
        return
    fs, p = _fs(os.fspath(path))
    if fs.exists(p):
        fs.rm(p, recursive=True)


def move(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a file or folder to ``target`` (which must not exist): a rename on a local
    disk, the filesystem's ``mv`` elsewhere."""
    src, dst = os.fspath(source), os.fspath(target)
    local_src, local_dst = local_path(src), local_path(dst)
    if local_src is not None and local_dst is not None:
        os.replace(local_src, local_dst)
        return
    fs, p = _fs(src)
    q = _fs(dst)[1]
    if not fs.isdir(p):
        fs.mv(p, q)
        return
    p = p.rstrip("/")
    for name in fs.find(p):  # file by file: object stores have no folders to rename
        fs.mv(name, q.rstrip("/") + name[len(p):])
    if fs.exists(p):
        fs.rm(p, recursive=True)


def open_read(path: str, buffering: int = -1, gzip: bool = False) -> IO[bytes]:
    """A binary file object for reading (seekable unless ``gzip``); closing it closes
    everything beneath it."""
    local = local_path(path)
    if local is not None:
        if gzip:
            import gzip as gz

            return gz.open(local, "rb")  # type: ignore[return-value]
        return open(local, "rb", buffering=buffering)  # noqa: SIM115 - the caller closes it
    import fsspec

    _fs(path)  # a clear error when the filesystem's package is missing
    try:
        opened = fsspec.open(path, "rb", compression="gzip" if gzip else None)
        return opened.open()
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist: check the path") from exc


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    with open_read(os.fspath(path)) as fh:
        return fh.read()


def read_text(path: str | os.PathLike[str]) -> str:
    return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], buffering: int = -1) -> Iterator[IO[bytes]]:
    """Yield a binary file; on a clean exit it appears at ``path`` whole, on an exception
    nothing appears (and an older file at ``path`` stays as it was)."""
    text = os.fspath(path)
    local = local_path(text)
    if local is not None:
        folder = os.path.dirname(os.path.abspath(local))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(local)}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb", buffering=buffering) as fh:
                yield fh
            os.replace(tmp, local)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    fs, p = _fs(text)
    # Staged in a local temporary file, then one upload (or upload + rename on HDFS).
    with tempfile.NamedTemporaryFile(prefix="sparkvision-", suffix=".part") as staged:
        yield staged
        staged.flush()
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        parent = p.rstrip("/").rsplit("/", 1)[0]
        if protocols & _RENAMING:
            tmp = f"{parent}/.{basename(p)}.{uuid.uuid4().hex[:12]}.tmp"
            fs.put_file(staged.name, tmp)
            fs.mv(tmp, p)
        else:
            fs.put_file(staged.name, p)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def absolute(path: str | os.PathLike[str]) -> str:
    """An absolute local path, or the URL unchanged."""
    local = local_path(path)
    return os.path.abspath(local) if local is not None else os.fspath(path)


def upload_folder(local: str, url: str) -> None:
    """Copy every file under the local folder ``local`` to the folder ``url``, each
    atomically."""
    for root, _dirs, files in os.walk(local):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, local).replace(os.sep, "/")
            with open(full, "rb") as src, atomic_writer(join(url, rel)) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike[str]) -> Iterator[str]:
    """A local folder to write into: ``path`` itself when it is local, else a temporary
    folder uploaded to ``path`` on a clean exit (a tool that writes only local files, such as
    matplotlib, can then write anywhere)."""
    local = local_path(path)
    if local is not None:
        os.makedirs(local, exist_ok=True)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="sparkvision-stage-") as tmp:
        yield tmp
        upload_folder(tmp, os.fspath(path))


@contextlib.contextmanager
def local_copy(path: str | os.PathLike[str]) -> Iterator[str]:
    """A local path holding what ``path`` holds: itself when local, else a temporary copy
    of the file or folder (removed on exit)."""
    local = local_path(path)
    if local is not None:
        yield local
        return
    text = os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="sparkvision-copy-") as tmp:
        target = os.path.join(tmp, basename(text) or "root")
        if isfile(text):
            with open_read(text) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        elif isdir(text):
            prefix = text.rstrip("/")
            for url in walk_files(text):
                dest = os.path.join(target, *url[len(prefix):].strip("/").split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open_read(url) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        else:
            raise DataError(f"{text} does not exist: check the path")
        yield target
