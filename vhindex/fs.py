"""fsspec helpers shared by every stage: resolve URLs, join paths, write atomically.

Every location in vhindex is an fsspec URL (a local path, ``memory://...``, ``s3://...``,
``gs://...``). Credentials and endpoints travel as ``storage_options`` (a dict passed through to
the fsspec filesystem), which come from config -- never from hard-coded defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path-inside-filesystem)`` for an fsspec URL.

    Args:
        url: local path or URL with a protocol (``s3://bucket/prefix``).
        storage_options: keyword arguments for the filesystem (e.g. ``{"key": ..., "secret": ...,
            "client_kwargs": {"endpoint_url": ...}}`` for S3).
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"expected a non-empty URL or path string, got {url!r}")
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/") or path


def join(fs: AbstractFileSystem, base: str, *parts: str) -> str:
    """Join path parts the way the filesystem expects (posix separators for object stores)."""
    if is_local(fs):
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


def unstrip(fs: AbstractFileSystem, path: str) -> str:
    """Turn a filesystem-internal path back into a full URL (``bucket/x`` -> ``s3://bucket/x``)."""
    return fs.unstrip_protocol(path)


def is_local(fs: AbstractFileSystem) -> bool:
    """True for the local filesystem (paths use the OS separator, files can be renamed)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def forget_listings(fs: AbstractFileSystem, root: str) -> None:
    """Drop every cached directory listing at or below ``root`` (and of its parents).

    Object-store filesystems (s3fs, gcsfs, ...) cache listings per instance, and fsspec hands out one
    instance per set of options: a listing taken before another process wrote under ``root`` would
    make the new files look missing. ``invalidate_cache(root)`` alone forgets ``root`` and its parents
    but not the folders below it.
    """
    fs.invalidate_cache(root)
    cache = getattr(fs, "dircache", None)
    if cache:
        prefix = root.rstrip("/") + "/"
        for key in [k for k in list(cache) if k.startswith(prefix)]:
            cache.pop(key, None)


def write_bytes_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file.

    Local and memory filesystems get write-to-temporary-then-rename. Object stores (S3, GCS)
    make a single PUT visible atomically already, so they are written directly.
    """
    parent = os.path.dirname(path) if is_local(fs) else posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local", "memory"):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def write_json_atomic(fs: AbstractFileSystem, path: str, obj: Any) -> None:
    """Write ``obj`` as pretty JSON atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(fs: AbstractFileSystem, path: str) -> Any:
    """Read a JSON file, naming the file in the error if it is missing or malformed."""
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{unstrip(fs, path)} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{unstrip(fs, path)} is not valid JSON: {err}") from err


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the checksum recorded in manifests)."""
    return hashlib.sha256(data).hexdigest()


def write_files_then_manifest(
    fs: AbstractFileSystem, root: str, files: dict[str, bytes], manifest: dict[str, Any], manifest_name: str
) -> None:
    """Write ``files`` atomically, then ``manifest`` + their sizes and SHA-256 sums, **last**.

    A folder whose manifest is missing is an incomplete write; readers verify each file against
    the manifest with :func:`read_verified_files`.
    """
    for name, data in files.items():
        write_bytes_atomic(fs, join(fs, root, name), data)
    entries = {name: {"sha256": sha256_hex(data), "bytes": len(data)} for name, data in files.items()}
    write_json_atomic(fs, join(fs, root, manifest_name), {**manifest, "files": entries})


def read_verified_files(
    fs: AbstractFileSystem, root: str, url: str, manifest: dict[str, Any], names: list[str] | tuple[str, ...]
) -> dict[str, bytes]:
    """Read the files a manifest lists and check their SHA-256 sums; errors name the file and the fix."""
    blobs = {}
    for name in names:
        try:
            with fs.open(join(fs, root, name), "rb") as f:
                blobs[name] = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: {name} listed in the manifest is missing") from None
        want = manifest.get("files", {}).get(name, {}).get("sha256")
        if want is None:
            raise ValueError(f"{url}: the manifest lists no sha256 for {name}; it is malformed -- save again")
        got = sha256_hex(blobs[name])
        if got != want:
            raise ValueError(
                f"checksum mismatch for {name} in {url}: sha256 {got[:16]}... but the manifest says {want[:16]}...; "
                "the file is corrupt or changed after saving -- save it again"
            )
    return blobs


def prepare_dataset_folder(fs: AbstractFileSystem, root: str, url: str, overwrite: bool, manifest_name: str) -> None:
    """Make ``root`` ready for a new dataset: refuse a non-empty folder unless ``overwrite``.

    With ``overwrite`` the manifest is removed **first** (so a half-removed dataset is never taken
    as complete), then the Parquet part files; other files are left alone.
    """
    try:
        entries = fs.ls(root, detail=False) if fs.isdir(root) else []
    except FileNotFoundError:
        entries = []
    if entries:
        if not overwrite:
            raise FileExistsError(
                f"refusing to write dataset into non-empty folder {url} ({len(entries)} entries); "
                "choose a new location or pass overwrite=True to replace the dataset there"
            )
        manifest = join(fs, root, manifest_name)
        if fs.exists(manifest):
            fs.rm(manifest)
        for entry in entries:
            if str(entry).endswith(".parquet"):
                fs.rm(entry)
    fs.makedirs(root, exist_ok=True)
