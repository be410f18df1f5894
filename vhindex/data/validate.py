"""Validate a dataset folder -- vhindex's own output or Parquet files written by other tools.

:func:`validate_dataset` streams every file (bounded memory: one batch at a time, plus the set of
video ids seen) and collects **every** problem it finds, then raises one
:class:`DatasetValidationError` listing them, each a :class:`Problem` naming the file URL, the row
and the column. It works with or without ``_manifest.json``; with one, it also checks that the
manifest agrees with the files.

Checked: missing / unreadable / empty (0 bytes or 0 rows) files; missing columns and wrong column
types; the frame count M, feature dimension D and dtype of every file (fixed-size types) or row
(variable lists) against the expected values, the manifest and each other; null video ids and
duplicate video ids (across files too); null features and NaN/Inf values (with the frame);
labels outside ``[0, num_classes)``; code widths of codes datasets; manifest row counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vhindex import fs as vfs
from vhindex.data.reader import _resolve
from vhindex.data.schema import (
    COL_CODE,
    COL_FEATURES,
    COL_LABELS,
    COL_VIDEO_ID,
    FORMAT_CODES,
    FORMAT_FRAMES,
    MANIFEST_NAME,
    METADATA_KEY,
    CodesDatasetMeta,
    FrameDatasetMeta,
)
from vhindex.data.writer import DatasetManifest, FileInfo

__all__ = ["DatasetValidationError", "Problem", "ValidationReport", "validate_dataset"]

logger = logging.getLogger(__name__)

_BATCH_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem found in a dataset.

    Attributes:
        file: full URL of the file (or of the dataset folder for dataset-level problems).
        row: row number inside ``file`` (0-based), or ``None`` for file-level problems.
        column: the column concerned, or ``None``.
        message: what is wrong and, where useful, how to fix it.
    """

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f": row {self.row}"
        if self.column is not None:
            where += f": column {self.column!r}"
        return f"{where}: {self.message}"


@dataclasses.dataclass
class ValidationReport:
    """Summary of a validated dataset.

    Attributes:
        url: the dataset folder.
        kind: ``"frames"`` or ``"codes"``.
        has_manifest: whether ``_manifest.json`` was present.
        num_files: Parquet files checked.
        num_rows: rows across the files.
        num_bytes: bytes across the files.
        num_frames, feature_dim, dtype: shape and dtype of the features (frames datasets; the
            expected values, else those found).
        num_classes: label classes the labels were checked against (``None``: only ``>= 0``).
        bits: code length (codes datasets).
        problems: the problems kept (at most ``max_problems``).
        num_problems: problems found in total (more than ``len(problems)`` when truncated).
    """

    url: str
    kind: str = "frames"
    has_manifest: bool = False
    num_files: int = 0
    num_rows: int = 0
    num_bytes: int = 0
    num_frames: int | None = None
    feature_dim: int | None = None
    dtype: str | None = None
    num_classes: int | None = None
    bits: int | None = None
    problems: list[Problem] = dataclasses.field(default_factory=list)
    num_problems: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return self.num_problems == 0

    def __str__(self) -> str:
        lines = [
            f"dataset {self.url} ({self.kind}, {'with' if self.has_manifest else 'without'} manifest)",
            f"  files: {self.num_files}  rows: {self.num_rows}  bytes: {self.num_bytes}",
        ]
        if self.kind == "frames":
            lines.append(
                f"  frames (M): {self.num_frames}  dims (D): {self.feature_dim}  dtype: {self.dtype}  "
                f"classes: {self.num_classes}"
            )
        else:
            lines.append(f"  bits: {self.bits}")
        if self.num_problems:
            lines.append(f"  {self.num_problems} problem(s):")
            lines.extend(f"  - {p}" for p in self.problems)
            if self.num_problems > len(self.problems):
                lines.append(f"  ... and {self.num_problems - len(self.problems)} more (raise max_problems to see them)")
        else:
            lines.append("  OK: no problems found")
        return "\n".join(lines)


class DatasetValidationError(ValueError):
    """A dataset failed validation; ``problems`` lists what is wrong and ``report`` the summary."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        self.problems = list(report.problems)
        super().__init__(f"dataset {report.url} failed validation with {report.num_problems} problem(s):\n" + "\n".join(
            f"- {p}" for p in report.problems
        ) + (
            f"\n... and {report.num_problems - len(report.problems)} more"
            if report.num_problems > len(report.problems) else ""
        ))


class _Collector:
    def __init__(self, report: ValidationReport, max_problems: int) -> None:
        self.report = report
        self.max = max_problems

    def add(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self.report.num_problems += 1
        if len(self.report.problems) < self.max:
            self.report.problems.append(Problem(file, row, column, message))

    def room(self) -> int:
        return max(self.max - len(self.report.problems), 0)

    def count_only(self, n: int) -> None:
        self.report.num_problems += n


@dataclasses.dataclass
class _FileShape:
    """What a file's schema says about its features."""

    m: int | None
    d: int | None
    dtype: str | None


def _features_type(t: pa.DataType) -> tuple[_FileShape, str | None]:
    """Shape info from the Arrow type of ``features`` and an error message if it is not a list of lists."""
    def is_list(x: pa.DataType) -> bool:
        return pa.types.is_list(x) or pa.types.is_large_list(x) or pa.types.is_fixed_size_list(x)

    if not is_list(t) or not is_list(t.value_type):
        return _FileShape(None, None, None), (
            f"has type {t}, expected fixed_size_list<fixed_size_list<float, D>, M> (or list<list<float>>)"
        )
    m = t.list_size if pa.types.is_fixed_size_list(t) else None
    inner = t.value_type
    d = inner.list_size if pa.types.is_fixed_size_list(inner) else None
    vt = inner.value_type
    if not pa.types.is_floating(vt):
        return _FileShape(m, d, str(vt)), f"has values of type {vt}, expected float16 or float32"
    dtype = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}[vt]
    return _FileShape(m, d, dtype), None


def _offsets(array: pa.Array, n: int) -> np.ndarray:
    """Rebased offsets (length n + 1) of a list array, fixed-size or variable."""
    if pa.types.is_fixed_size_list(array.type):
        return np.arange(n + 1, dtype=np.int64) * array.type.list_size
    off = np.asarray(array.offsets).astype(np.int64)
    return off - off[0]


def validate_dataset(
    url: str,
    storage_options: dict | None = None,
    *,
    expected_num_frames: int | None = None,
    expected_feature_dim: int | None = None,
    check_values: bool = True,
    max_problems: int = 100,
    expected_num_classes: int | None = None,
) -> ValidationReport:
    """Check a frame-feature or codes dataset folder, streaming every file.

    Args:
        url: the dataset folder (fsspec URL); ``_manifest.json`` is optional.
        storage_options: fsspec filesystem options.
        expected_num_frames: M every video must have (default: the manifest's, else the first
            file's / row's).
        expected_feature_dim: D every frame must have (default as for M).
        check_values: also scan feature values for NaN / Inf (reads every value).
        max_problems: problems kept in the report and error message (all are counted).
        expected_num_classes: labels must be in ``[0, C)`` (default: the manifest's or the files'
            ``num_classes``; without any, labels are only checked to be ``>= 0``).

    Returns:
        The :class:`ValidationReport` (counts of files, rows, bytes) when no problem was found.

    Raises:
        DatasetValidationError: listing every problem found (up to ``max_problems``).
        FileNotFoundError: when ``url`` is not a folder.
    """
    fs, root = vfs.url_to_fs(url, storage_options)
    if not fs.isdir(root):
        raise FileNotFoundError(f"no dataset folder at {url}; check the path and storage_options")
    report = ValidationReport(url=url)
    out = _Collector(report, max_problems)
    root_url = vfs.unstrip(fs, root)

    entries = fs.ls(root, detail=True)
    on_disk = {
        e["name"].rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]: e
        for e in entries
        if e.get("type") == "file"
    }
    parquet_names = sorted(n for n in on_disk if n.endswith(".parquet"))

    # ---- manifest and dataset-level metadata --------------------------------------------------
    manifest: DatasetManifest | None = None
    meta: FrameDatasetMeta | CodesDatasetMeta | None = None
    manifest_url = vfs.unstrip(fs, vfs.join(fs, root, MANIFEST_NAME))
    if MANIFEST_NAME in on_disk:
        report.has_manifest = True
        try:
            manifest = DatasetManifest.from_dict(vfs.read_json(fs, vfs.join(fs, root, MANIFEST_NAME)), manifest_url)
            meta = _parse_meta(manifest.meta)
        except ValueError as err:
            out.add(manifest_url, None, None, str(err))

    # ---- the list of files ------------------------------------------------------------------
    files: list[tuple[str, FileInfo | None]] = []  # (path, manifest entry)
    if manifest is not None:
        listed = set()
        for info in manifest.files:
            path = _resolve(fs, root, info.path)
            listed.add(info.path)
            if not fs.exists(path):
                out.add(vfs.unstrip(fs, path), None, None,
                        f"listed in {MANIFEST_NAME} but missing; re-write the dataset")
                continue
            files.append((path, info))
        for name in parquet_names:
            if name not in listed:
                out.add(vfs.unstrip(fs, vfs.join(fs, root, name)), None, None,
                        f"not listed in {MANIFEST_NAME} (left over from another write?); remove it or re-write")
        if manifest.num_rows != sum(f.num_rows for f in manifest.files):
            out.add(manifest_url, None, None,
                    f"num_rows={manifest.num_rows} but its files list {sum(f.num_rows for f in manifest.files)} rows")
    else:
        files = [(vfs.join(fs, root, name), None) for name in parquet_names]
    if not files and (manifest is None or manifest.num_rows > 0):
        out.add(root_url, None, None, "no Parquet files (*.parquet) in the dataset folder")

    # ---- kind and expectations --------------------------------------------------------------
    if meta is None:
        meta = _meta_from_first_file(fs, files)
    if isinstance(meta, CodesDatasetMeta):
        report.kind = "codes"
        report.bits = meta.bits
    elif meta is None and files and _first_file_has_column(fs, files[0][0], COL_CODE):
        report.kind = "codes"

    source = "manifest" if manifest is not None else "Parquet metadata"
    if isinstance(meta, FrameDatasetMeta):
        for label, given, stored in (
            ("expected_num_frames", expected_num_frames, meta.num_frames),
            ("expected_feature_dim", expected_feature_dim, meta.feature_dim),
        ):
            if given is not None and given != stored and manifest is not None:
                out.add(manifest_url, None, None, f"records {stored} but {label}={given}")
    exp_m = expected_num_frames if expected_num_frames is not None else getattr(meta, "num_frames", None)
    exp_d = expected_feature_dim if expected_feature_dim is not None else getattr(meta, "feature_dim", None)
    exp_dtype = getattr(meta, "dtype", None)
    num_classes = expected_num_classes if expected_num_classes is not None else getattr(meta, "num_classes", None)
    why_m = "expected_num_frames" if expected_num_frames is not None else f"num_frames in the {source}"
    why_d = "expected_feature_dim" if expected_feature_dim is not None else f"feature_dim in the {source}"
    report.num_classes = num_classes

    state = _State(exp_m=exp_m, exp_d=exp_d, why_m=why_m, why_d=why_d)
    seen: dict[str, tuple[int, int]] = {}
    file_urls: list[str] = []
    total_rows = 0
    for path, info in files:
        file_url = vfs.unstrip(fs, path)
        file_urls.append(file_url)
        report.num_files += 1
        try:
            size = int(fs.size(path) or 0)
        except OSError as err:
            out.add(file_url, None, None, f"cannot stat file: {err}")
            continue
        report.num_bytes += size
        if size == 0:
            out.add(file_url, None, None, "empty file (0 bytes); remove it or re-write the dataset")
            continue
        try:
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                rows = _check_file(pf, file_url, len(file_urls) - 1, info, report, out, state, meta,
                                   exp_dtype, num_classes, check_values, seen, file_urls)
        except (pa.ArrowException, OSError) as err:
            out.add(file_url, None, None, f"unreadable Parquet file ({type(err).__name__}: {err})")
            continue
        total_rows += rows
    report.num_rows = total_rows
    if report.kind == "frames":
        report.num_frames = exp_m if exp_m is not None else state.ref_m
        report.feature_dim = exp_d if exp_d is not None else state.ref_d
        report.dtype = exp_dtype if exp_dtype is not None else (state.ref_shape.dtype if state.ref_shape else None)
    if report.num_problems:
        raise DatasetValidationError(report)
    logger.info("validated %s: %d files, %d rows, %d bytes", url, report.num_files, report.num_rows, report.num_bytes)
    return report


@dataclasses.dataclass
class _State:
    exp_m: int | None
    exp_d: int | None
    why_m: str
    why_d: str
    ref_shape: _FileShape | None = None  # of the first file with a readable features type
    ref_file: str | None = None
    ref_m: int | None = None  # first row's shape, for variable lists without expectations
    ref_d: int | None = None
    ref_row_where: str | None = None


def _parse_meta(obj: dict[str, Any]) -> FrameDatasetMeta | CodesDatasetMeta:
    fmt = obj.get("format")
    if fmt == FORMAT_CODES:
        return CodesDatasetMeta.from_dict(obj)
    if fmt == FORMAT_FRAMES:
        return FrameDatasetMeta.from_dict(obj)
    raise ValueError(f"unknown dataset format {fmt!r}; expected {FORMAT_FRAMES!r} or {FORMAT_CODES!r}")


def _meta_from_first_file(fs: Any, files: list[tuple[str, FileInfo | None]]):
    for path, _ in files[:1]:
        try:
            with fs.open(path, "rb") as fh:
                md = pq.ParquetFile(fh).schema_arrow.metadata or {}
            if METADATA_KEY in md:
                return _parse_meta(json.loads(md[METADATA_KEY]))
        except Exception:  # noqa: BLE001 -- reported later, when the file is checked
            return None
    return None


def _first_file_has_column(fs: Any, path: str, column: str) -> bool:
    try:
        with fs.open(path, "rb") as fh:
            return column in pq.ParquetFile(fh).schema_arrow.names
    except Exception:  # noqa: BLE001 -- reported later, when the file is checked
        return False


def _check_file(
    pf: pq.ParquetFile,
    file_url: str,
    file_index: int,
    info: FileInfo | None,
    report: ValidationReport,
    out: _Collector,
    state: _State,
    meta: Any,
    exp_dtype: str | None,
    num_classes: int | None,
    check_values: bool,
    seen: dict[str, tuple[int, int]],
    file_urls: list[str],
) -> int:
    md = pf.metadata
    rows = md.num_rows
    if rows == 0:
        out.add(file_url, None, None, "file has 0 rows; remove it or re-write the dataset")
    if info is not None:
        rg_rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        if rows != info.num_rows:
            out.add(file_url, None, None, f"has {rows} rows but {MANIFEST_NAME} lists {info.num_rows}")
        elif rg_rows != info.row_group_rows:
            out.add(file_url, None, None, f"row groups have {rg_rows} rows but {MANIFEST_NAME} lists {info.row_group_rows}")
    schema = pf.schema_arrow
    names = schema.names
    required = [COL_VIDEO_ID, COL_CODE] if report.kind == "codes" else [COL_VIDEO_ID, COL_FEATURES]
    for col in required:
        if col not in names:
            out.add(file_url, None, col, f"missing column {col!r} (columns: {names})")
    columns = [c for c in (COL_VIDEO_ID, COL_FEATURES, COL_LABELS, COL_CODE) if c in names and (
        c in required or c == COL_LABELS and report.kind == "frames")]
    if COL_VIDEO_ID in names and not (
        pa.types.is_string(schema.field(COL_VIDEO_ID).type) or pa.types.is_large_string(schema.field(COL_VIDEO_ID).type)
    ):
        out.add(file_url, None, COL_VIDEO_ID, f"has type {schema.field(COL_VIDEO_ID).type}, expected string")
        columns.remove(COL_VIDEO_ID)
    check_features = COL_FEATURES in columns
    if check_features:
        shape, err = _features_type(schema.field(COL_FEATURES).type)
        if err:
            out.add(file_url, None, COL_FEATURES, err)
            columns.remove(COL_FEATURES)
            check_features = False
        else:
            check_features = _check_file_shape(shape, file_url, out, state, exp_dtype)
            if not check_features:
                columns.remove(COL_FEATURES)
    if COL_LABELS in columns:
        lt = schema.field(COL_LABELS).type
        if not ((pa.types.is_list(lt) or pa.types.is_large_list(lt)) and pa.types.is_integer(lt.value_type)):
            out.add(file_url, None, COL_LABELS, f"has type {lt}, expected list<int32>")
            columns.remove(COL_LABELS)
    if COL_CODE in columns and isinstance(meta, CodesDatasetMeta):
        ct = schema.field(COL_CODE).type
        width = meta.bits // 8
        if not pa.types.is_fixed_size_binary(ct) or ct.byte_width != width:
            out.add(file_url, None, COL_CODE, f"has type {ct}, expected fixed_size_binary({width}) for {meta.bits} bits")
    if not columns or rows == 0:
        return rows

    row = 0
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns, use_threads=False):
        n = batch.num_rows
        if COL_VIDEO_ID in columns:
            _check_ids(batch.column(COL_VIDEO_ID), file_url, file_index, row, out, seen, file_urls)
        if check_features:
            _check_features(batch.column(COL_FEATURES), file_url, row, out, state, check_values)
        if COL_LABELS in columns:
            _check_labels(batch.column(COL_LABELS), file_url, row, out, num_classes)
        if COL_CODE in columns:
            codes = batch.column(COL_CODE)
            for i in np.flatnonzero(~np.asarray(codes.is_valid()))[: out.room() + 1]:
                out.add(file_url, row + int(i), COL_CODE, "code is null")
        row += n
    return rows


def _check_file_shape(shape: _FileShape, file_url: str, out: _Collector, state: _State, exp_dtype: str | None) -> bool:
    """Per-file checks of a fixed-size features type; False when rows cannot be checked further."""
    ok = True
    if shape.m is not None and state.exp_m is not None and shape.m != state.exp_m:
        out.add(file_url, None, COL_FEATURES, f"all rows have M={shape.m} frames, expected {state.exp_m} ({state.why_m})")
        ok = False
    if shape.d is not None and state.exp_d is not None and shape.d != state.exp_d:
        out.add(file_url, None, COL_FEATURES, f"all frames have D={shape.d} dims, expected {state.exp_d} ({state.why_d})")
        ok = False
    if exp_dtype is not None and shape.dtype != exp_dtype:
        out.add(file_url, None, COL_FEATURES, f"has dtype {shape.dtype}, the dataset metadata says {exp_dtype}")
    if state.ref_shape is None:
        state.ref_shape, state.ref_file = shape, file_url
    else:
        ref = state.ref_shape
        diffs = [
            f"{name}={mine} vs {theirs}"
            for name, mine, theirs in (("M", shape.m, ref.m), ("D", shape.d, ref.d), ("dtype", shape.dtype, ref.dtype))
            if mine != theirs and mine is not None and theirs is not None
        ]
        if diffs:
            out.add(file_url, None, COL_FEATURES, f"disagrees with {state.ref_file}: {', '.join(diffs)}")
    return ok


def _check_ids(
    ids: pa.Array, file_url: str, file_index: int, row0: int, out: _Collector,
    seen: dict[str, tuple[int, int]], file_urls: list[str],
) -> None:
    for i, vid in enumerate(ids.to_pylist()):
        if vid is None:
            out.add(file_url, row0 + i, COL_VIDEO_ID, "video_id is null")
            continue
        first = seen.get(vid)
        if first is not None:
            out.add(file_url, row0 + i, COL_VIDEO_ID,
                    f"duplicate video id {vid!r}, first seen in {file_urls[first[0]]} row {first[1]}")
        else:
            seen[vid] = (file_index, row0 + i)


def _check_features(col: pa.Array, file_url: str, row0: int, out: _Collector, state: _State, check_values: bool) -> None:
    n = len(col)
    valid = np.asarray(col.is_valid()) if col.null_count else np.ones(n, dtype=bool)
    for i in np.flatnonzero(~valid):
        out.add(file_url, row0 + int(i), COL_FEATURES, "features are null")
    frames = np.diff(_offsets(col, n))
    frames[~valid] = 0  # flatten() drops the slots of null rows
    outer = np.concatenate([[0], np.cumsum(frames)])
    inner_arr = col.flatten()
    assert len(inner_arr) == outer[-1]
    frame_row = np.repeat(np.arange(n), frames)
    inner_valid = np.asarray(inner_arr.is_valid()) if inner_arr.null_count else np.ones(len(inner_arr), dtype=bool)
    bad_rows: dict[int, str] = {}
    for f in np.flatnonzero(~inner_valid):
        r = int(frame_row[f])
        bad_rows.setdefault(r, f"frame {int(f - outer[r])} is null")
    dims = np.diff(_offsets(inner_arr, len(inner_arr)))
    dims[~inner_valid] = 0
    inner = np.concatenate([[0], np.cumsum(dims)])

    # Shapes, row by row, for variable lists (fixed-size types were checked per file).
    if not pa.types.is_fixed_size_list(col.type):
        if state.exp_m is None and state.ref_m is None and valid.any():
            first = int(np.flatnonzero(valid)[0])
            state.ref_m = int(frames[first])
            state.ref_row_where = f"{file_url} row {row0 + first}"
        exp_m = state.exp_m if state.exp_m is not None else state.ref_m
        why = state.why_m if state.exp_m is not None else f"as the first row, {state.ref_row_where}"
        if exp_m is not None:
            for i in np.flatnonzero((frames != exp_m) & valid):
                bad_rows.setdefault(int(i), f"has M={int(frames[i])} frames, expected {exp_m} ({why})")
    if not pa.types.is_fixed_size_list(inner_arr.type) and len(inner_arr):
        if state.exp_d is None and state.ref_d is None and inner_valid.any():
            first = int(np.flatnonzero(inner_valid)[0])
            state.ref_d = int(dims[first])
            state.ref_row_where = state.ref_row_where or f"{file_url} row {row0 + int(frame_row[first])}"
        exp_d = state.exp_d if state.exp_d is not None else state.ref_d
        why = state.why_d if state.exp_d is not None else f"as the first frame, {state.ref_row_where}"
        if exp_d is not None:
            for f in np.flatnonzero((dims != exp_d) & inner_valid):
                r = int(frame_row[f])
                bad_rows.setdefault(r, f"frame {int(f - outer[r])} has D={int(dims[f])} dims, expected {exp_d} ({why})")
    for r in sorted(bad_rows):
        out.add(file_url, row0 + r, COL_FEATURES, bad_rows[r])

    if not check_values or not len(inner_arr):
        return
    flat = inner_arr.flatten().to_numpy(zero_copy_only=False)
    assert flat.size == inner[-1]
    finite = np.isfinite(flat)
    if finite.all():
        return
    bad_values = np.flatnonzero(~finite)
    bad_frames = np.searchsorted(inner, bad_values, side="right") - 1
    rows_of = frame_row[bad_frames]
    uniq_rows, first_idx, counts = np.unique(rows_of, return_index=True, return_counts=True)
    room = out.room()
    for k, (r, fi, c) in enumerate(zip(uniq_rows, first_idx, counts, strict=True)):
        if k > room:
            out.count_only(len(uniq_rows) - k)
            break
        frame = int(bad_frames[fi] - outer[r])
        kind = "NaN" if np.isnan(flat[bad_values[fi]]) else "Inf"
        more = f" ({int(c)} non-finite values in this row)" if c > 1 else ""
        out.add(file_url, row0 + int(r), COL_FEATURES, f"non-finite value ({kind}) at frame {frame}{more}")


def _check_labels(col: pa.Array, file_url: str, row0: int, out: _Collector, num_classes: int | None) -> None:
    n = len(col)
    offsets = _offsets(col, n)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    if flat.size == 0:
        return
    bad = (flat < 0) if num_classes is None else ((flat < 0) | (flat >= num_classes))
    if not bad.any():
        return
    rng = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
    idx = np.flatnonzero(bad)
    rows = np.searchsorted(offsets, idx, side="right") - 1
    reported = set()
    for j, r in zip(idx, rows, strict=True):
        if int(r) in reported:
            continue
        reported.add(int(r))
        out.add(file_url, row0 + int(r), COL_LABELS, f"label {int(flat[j])} is out of range {rng}")
