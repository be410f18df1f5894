"""Import / export the HDF5 feature files and ``.mat`` label files released with the papers.

The released sets (SSVH / BTH / ConMH / S5VH; see :data:`PAPER_LAYOUTS`) store frame features as
an HDF5 dataset ``feats`` of shape (N, M, D) and labels as a multi-hot (N, C) matrix in a MATLAB
``.mat`` file -- either MATLAB v5 (read with :func:`scipy.io.loadmat`) or v7.3 (HDF5, read with
h5py; MATLAB stores matrices column-major, so h5py sees (C, N): the orientation is detected from
the number of rows the features have).

Everything streams: features are read ``chunk_rows`` rows at a time by h5py slicing on fsspec
file objects (so ``s3://`` sources work), and written with :class:`FrameDatasetWriter`.

Video ids of imported datasets are ``f"{id_prefix}{row:07d}"`` (row = position in the
concatenated split); :func:`import_paper_dataset` uses the prefix ``"{name}-{split}-"``.

**Shared splits.** Where a paper uses the same videos for two splits (FCVID: the query set *is*
the database; UCF101 / HMDB51: the database is the training split) the data is written once, to
the split that carries the labels, and the other split's folder gets only a ``_manifest.json``
whose file entries point into the sibling folder (``../database/part-00000.parquet``). Readers
resolve those paths, so both folders open as ordinary datasets with identical video ids (e.g.
FCVID query ids are ``fcvid-database-0000000`` ...), which is what "the query is inside the
database" means for evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np
import scipy.io

from vhindex import fs as vfs
from vhindex.data.reader import FrameDataset
from vhindex.data.schema import MANIFEST_NAME, FrameDatasetMeta
from vhindex.data.writer import DatasetManifest, FileInfo, FrameDatasetWriter

__all__ = [
    "PAPER_LAYOUTS",
    "PaperLayout",
    "SplitFiles",
    "export_h5_features",
    "import_h5_features",
    "import_paper_dataset",
    "read_mat_labels",
]

logger = logging.getLogger(__name__)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# Paper layouts
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """The files of one split of a released dataset (names relative to the source folder).

    Attributes:
        feats: HDF5 feature files, concatenated in this order.
        labels: ``.mat`` label files (none, one for all feature files, or one per feature file).
        labels_key: variable name inside the ``.mat`` files (``None``: the only variable there).
        shared_with: name of another split whose videos this split reuses (its files are then
            not listed here): the data is written once, see the module docstring.
    """

    feats: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    labels_key: str | None = None
    shared_with: str | None = None


@dataclasses.dataclass(frozen=True)
class PaperLayout:
    """How a released dataset is laid out, and its expected shapes.

    Attributes:
        name: short lowercase name (``fcvid``, ``activitynet``, ...).
        splits: ``train`` / ``query`` / ``database`` -> :class:`SplitFiles`.
        num_frames, feature_dim, num_classes: shapes published with the data (for checks and docs).
        extractor: name of the CNN that produced the features, as recorded in the metadata.
        feats_key: HDF5 dataset name of the features.
        notes: provenance and caveats.
    """

    name: str
    splits: dict[str, SplitFiles]
    num_frames: int
    feature_dim: int
    num_classes: int
    extractor: str
    feats_key: str = "feats"
    notes: str = ""


def _ucf_like(prefix: str, name: str, num_classes: int) -> PaperLayout:
    return PaperLayout(
        name=name,
        splits={
            "database": SplitFiles((f"{prefix}_train_feats.h5",), (f"{prefix}_train_labels.mat",)),
            "query": SplitFiles((f"{prefix}_test_feats.h5",), (f"{prefix}_test_labels.mat",)),
            "train": SplitFiles(shared_with="database"),
        },
        num_frames=25,
        feature_dim=4096,
        num_classes=num_classes,
        extractor="cnn-4096d",
        notes="S5VH / AutoSSVH configs: the training split is the retrieval database and the test split the "
        "queries. Which CNN produced the 4096-d features is not stated (probably VGG fc7).",
    )


#: The released file sets, by name (see reference/methods-and-results.md section 1).
PAPER_LAYOUTS: dict[str, PaperLayout] = {
    "fcvid": PaperLayout(
        name="fcvid",
        splits={
            "train": SplitFiles(("fcv_train_feats.h5",)),
            "database": SplitFiles(("fcv_test_feats.h5",), ("fcv_test_labels.mat",), "labels"),
            "query": SplitFiles(shared_with="database"),
        },
        num_frames=25,
        feature_dim=4096,
        num_classes=239,
        extractor="vgg16-fc7",
        notes="45,585 train videos; all 45,600 test videos are both the queries and the database.",
    ),
    "activitynet": PaperLayout(
        name="activitynet",
        splits={
            "train": SplitFiles(("train_feats.h5",)),
            "query": SplitFiles(("query_feats.h5",), ("q_label.mat",), "q_label"),
            "database": SplitFiles(("test_feats.h5",), ("re_label.mat",), "re_label"),
        },
        num_frames=30,
        feature_dim=2048,
        num_classes=200,
        extractor="resnet50",
        notes="9,722 train, 1,000 queries, 3,758 database videos; 30 equally spaced frames (BTH issue #1).",
    ),
    "yfcc": PaperLayout(
        name="yfcc",
        splits={
            "train": SplitFiles(tuple(f"yfcc_train_feats_{i}.h5" for i in range(1, 10))),
            "query": SplitFiles(("query1000_feats.h5",), ("query1000_labels.mat",)),
            "database": SplitFiles(
                ("yfcc_test_feats_1.h5", "yfcc_test_feats_2.h5"),
                ("yfcc_test_labels_1.mat", "yfcc_test_labels_2.mat"),
                "labels",
            ),
        },
        num_frames=25,
        feature_dim=4096,
        num_classes=80,
        extractor="vgg16-fc7",
        notes="409,788 train videos in 9 files; 1,000 queries; 101,256 database videos in 2 files "
        "(concatenated in order). Whether the queries are inside the database is unverified.",
    ),
    "ucf101": _ucf_like("ucf", "ucf101", 101),
    "hmdb51": _ucf_like("hmdb", "hmdb51", 51),
}


# ----------------------------------------------------------------------------------------------
# Reading sources
# ----------------------------------------------------------------------------------------------
def _as_list(urls: str | Sequence[str] | None) -> list[str]:
    if urls is None:
        return []
    if isinstance(urls, str):
        return [urls]
    return list(urls)


class _FeatureSource:
    """Several HDF5 feature files, read as one (N, M, D) array in chunks of rows."""

    def __init__(self, stack: contextlib.ExitStack, urls: list[str], key: str, storage_options: dict | None) -> None:
        self.parts: list[tuple[str, h5py.Dataset]] = []
        shape = None
        for url in urls:
            fs, path = vfs.url_to_fs(url, storage_options)
            fh = stack.enter_context(fs.open(path, "rb"))
            try:
                h5 = stack.enter_context(h5py.File(fh, "r"))
            except OSError as err:
                raise ValueError(f"{url} is not a readable HDF5 file ({err})") from err
            if key not in h5:
                raise KeyError(f"{url} has no dataset {key!r} (it has {sorted(h5.keys())}); pass key=")
            ds = h5[key]
            if ds.ndim != 3:
                raise ValueError(f"{url}:{key} has shape {ds.shape}; expected (N videos, M frames, D dims)")
            if shape is not None and ds.shape[1:] != shape:
                raise ValueError(f"{url}:{key} has frames x dims {ds.shape[1:]} but {urls[0]} has {shape}")
            shape = ds.shape[1:]
            self.parts.append((url, ds))
        if not self.parts:
            raise ValueError("no feature files given")
        self.num_frames, self.feature_dim = (int(x) for x in shape)
        self.rows = [int(ds.shape[0]) for _, ds in self.parts]
        self.num_rows = sum(self.rows)

    def chunks(self, chunk_rows: int) -> Iterator[np.ndarray]:
        for _, ds in self.parts:
            for start in range(0, ds.shape[0], chunk_rows):
                yield ds[start:start + chunk_rows]


def _is_hdf5(fh: Any) -> bool:
    head = fh.read(1032)
    fh.seek(0)
    return any(head[o:o + 8] == _HDF5_SIGNATURE for o in (0, 512, 1024))


class _LabelPart:
    """One ``.mat`` label file as a multi-hot (rows, C) matrix read by row ranges."""

    def __init__(self, stack: contextlib.ExitStack, url: str, key: str | None, expected_rows: int,
                 storage_options: dict | None) -> None:
        self.url = url
        fs, path = vfs.url_to_fs(url, storage_options)
        fh = stack.enter_context(fs.open(path, "rb"))
        self.matrix: np.ndarray | None = None
        self.dataset: h5py.Dataset | None = None
        if _is_hdf5(fh):  # MATLAB v7.3
            h5 = stack.enter_context(h5py.File(fh, "r"))
            names = [k for k in h5.keys() if not k.startswith("#")]
            name = _pick_key(url, names, key)
            ds = h5[name]
            shape = ds.shape
            self.dataset = ds
            self.transposed = _orientation(url, shape, expected_rows, matlab_layout=True)
        else:  # MATLAB v4 / v5 / v7
            mat = scipy.io.loadmat(fh)
            names = [k for k in mat if not k.startswith("__")]
            name = _pick_key(url, names, key)
            arr = mat[name]
            if hasattr(arr, "toarray"):
                arr = arr.toarray()
            arr = np.asarray(arr)
            if arr.ndim != 2:
                raise ValueError(f"{url}:{name} has shape {arr.shape}; expected a multi-hot (N, C) matrix")
            self.transposed = _orientation(url, arr.shape, expected_rows, matlab_layout=False)
            self.matrix = arr.T if self.transposed else arr
            shape = arr.shape
        if len(shape) != 2:
            raise ValueError(f"{url}:{name} has shape {shape}; expected a multi-hot (N, C) matrix")
        self.num_rows, self.num_classes = (shape[1], shape[0]) if self.transposed else (shape[0], shape[1])
        self.key = name

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.matrix is not None:
            block = self.matrix[start:stop]
        else:
            assert self.dataset is not None
            block = self.dataset[:, start:stop].T if self.transposed else self.dataset[start:stop]
        block = np.asarray(block)
        if block.size and not np.isin(block, (0, 1)).all():
            bad = block[~np.isin(block, (0, 1))][0]
            raise ValueError(
                f"{self.url}:{self.key} holds the value {bad.item()!r}; expected a multi-hot 0/1 matrix "
                "(class-index vectors are not supported: convert them to multi-hot first)"
            )
        return block != 0


def _pick_key(url: str, names: list[str], key: str | None) -> str:
    if key is not None:
        if key not in names:
            raise KeyError(f"{url} has no variable {key!r} (it has {names}); pass labels_key=")
        return key
    if len(names) != 1:
        raise KeyError(f"{url} has variables {names}; pass labels_key= to choose one")
    return names[0]


def _orientation(url: str, shape: tuple[int, ...], expected_rows: int, matlab_layout: bool) -> bool:
    """Whether ``shape`` is (C, N) rather than (N, C), given that N = ``expected_rows``."""
    if len(shape) != 2:
        raise ValueError(f"{url}: label matrix has shape {shape}; expected (N, C)")
    rows_match, cols_match = shape[0] == expected_rows, shape[1] == expected_rows
    if rows_match and cols_match:
        return matlab_layout  # square: trust the file format's convention
    if rows_match:
        return False
    if cols_match:
        return True
    raise ValueError(
        f"{url}: label matrix has shape {shape} but the features have {expected_rows} rows; "
        "pair each label file with its feature file"
    )


class _LabelSource:
    def __init__(self, stack: contextlib.ExitStack, urls: list[str], key: str | None, feats: _FeatureSource,
                 storage_options: dict | None) -> None:
        if len(urls) == len(feats.rows):
            expected = feats.rows
        elif len(urls) == 1:
            expected = [feats.num_rows]
        else:
            raise ValueError(
                f"{len(urls)} label files for {len(feats.rows)} feature files; give one label file per feature "
                "file or a single one for all"
            )
        self.parts = [_LabelPart(stack, u, key, n, storage_options) for u, n in zip(urls, expected, strict=True)]
        classes = {p.num_classes for p in self.parts}
        if len(classes) != 1:
            raise ValueError(f"label files disagree on the number of classes: "
                             f"{[(p.url, p.num_classes) for p in self.parts]}")
        self.num_classes = classes.pop()
        for p, n in zip(self.parts, expected, strict=True):
            if p.num_rows != n:
                raise ValueError(f"{p.url} has labels for {p.num_rows} videos but the features have {n}")
        self._bounds = np.cumsum([0] + [p.num_rows for p in self.parts])

    def read(self, start: int, stop: int) -> np.ndarray:
        blocks = []
        for i, p in enumerate(self.parts):
            lo, hi = self._bounds[i], self._bounds[i + 1]
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                blocks.append(p.read(int(a - lo), int(b - lo)))
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def read_mat_labels(url: str, key: str | None = None, *, num_rows: int | None = None,
                    storage_options: dict | None = None) -> np.ndarray:
    """Read a multi-hot label matrix from a ``.mat`` file (v5 or v7.3) as a bool (N, C) array.

    Args:
        url: the ``.mat`` file.
        key: variable name (``None``: the only variable in the file).
        num_rows: N, to orient a v7.3 (transposed) matrix; default: MATLAB's convention.
        storage_options: fsspec options.
    """
    with contextlib.ExitStack() as stack:
        fs, path = vfs.url_to_fs(url, storage_options)
        if num_rows is None:
            with fs.open(path, "rb") as fh:
                if _is_hdf5(fh):
                    with h5py.File(fh, "r") as h5:
                        names = [k for k in h5.keys() if not k.startswith("#")]
                        num_rows = int(h5[_pick_key(url, names, key)].shape[-1])
                else:
                    mat = scipy.io.loadmat(fh)
                    names = [k for k in mat if not k.startswith("__")]
                    num_rows = int(np.shape(mat[_pick_key(url, names, key)])[0])
        part = _LabelPart(stack, url, key, num_rows, storage_options)
        return part.read(0, part.num_rows)


# ----------------------------------------------------------------------------------------------
# Import / export
# ----------------------------------------------------------------------------------------------
def import_h5_features(
    feats_url: str | Sequence[str],
    out_url: str,
    *,
    key: str = "feats",
    labels_url: str | Sequence[str] | None = None,
    labels_key: str | None = None,
    id_prefix: str,
    extractor: str = "imported-h5",
    dtype: str = "float16",
    chunk_rows: int = 1024,
    storage_options: dict | None = None,
    overwrite: bool = False,
    rows_per_file: int = 50_000,
    row_group_size: int = 1_000,
) -> DatasetManifest:
    """Convert HDF5 features (+ ``.mat`` multi-hot labels) into a frame-feature dataset.

    Args:
        feats_url: HDF5 file(s) with a (N, M, D) dataset ``key``; several are concatenated in order.
        out_url: the dataset folder to write.
        key: HDF5 dataset name of the features.
        labels_url: ``.mat`` file(s) with multi-hot (N, C) labels -- one for all feature files or
            one per feature file; v5 and v7.3 (transposed) are both accepted.
        labels_key: variable name in the ``.mat`` files (``None``: the only one).
        id_prefix: video ids are ``f"{id_prefix}{row:07d}"``.
        extractor: recorded in the dataset metadata.
        dtype: storage dtype (``float16`` or ``float32``).
        chunk_rows: rows read from the HDF5 file at a time (bounds memory).
        storage_options: fsspec options for sources and output.
        overwrite: replace an existing dataset at ``out_url``.
        rows_per_file: rows per part file (see :class:`FrameDatasetWriter`).
        row_group_size: rows per Parquet row group (see :class:`FrameDatasetWriter`).

    Returns:
        The written dataset's manifest.
    """
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    feats_urls, label_urls = _as_list(feats_url), _as_list(labels_url)
    with contextlib.ExitStack() as stack:
        feats = _FeatureSource(stack, feats_urls, key, storage_options)
        labels = _LabelSource(stack, label_urls, labels_key, feats, storage_options) if label_urls else None
        meta = FrameDatasetMeta(
            num_frames=feats.num_frames,
            feature_dim=feats.feature_dim,
            dtype=dtype,  # type: ignore[arg-type]
            extractor=extractor,
            extractor_version="imported-h5",
            num_classes=labels.num_classes if labels is not None else None,
        )
        writer = FrameDatasetWriter(out_url, meta, with_labels=labels is not None, rows_per_file=rows_per_file,
                                    row_group_size=row_group_size, storage_options=storage_options,
                                    overwrite=overwrite)
        with writer:
            row = 0
            for chunk in feats.chunks(chunk_rows):
                n = chunk.shape[0]
                ids = [f"{id_prefix}{r:07d}" for r in range(row, row + n)]
                label_lists = None
                if labels is not None:
                    label_lists = [np.flatnonzero(r).tolist() for r in labels.read(row, row + n)]
                writer.write(ids, chunk, label_lists)
                row += n
        logger.info("imported %d videos from %s into %s", row, feats_urls, out_url)
        return writer.close()


def export_h5_features(
    dataset_url: str,
    feats_out_url: str,
    *,
    key: str = "feats",
    labels_out_url: str | None = None,
    labels_key: str = "labels",
    mat_format: str = "v5",
    dtype: str | None = None,
    batch_size: int = 1024,
    storage_options: dict | None = None,
) -> int:
    """Write a frame-feature dataset back to the papers' layout (HDF5 features, ``.mat`` labels).

    Args:
        dataset_url: the dataset to export.
        feats_out_url: HDF5 file to write, with a (N, M, D) dataset ``key``.
        key: HDF5 dataset name.
        labels_out_url: ``.mat`` file for the multi-hot (N, C) labels (``None``: no labels).
        labels_key: variable name in the ``.mat`` file.
        mat_format: ``"v5"`` (scipy.io.savemat) or ``"v7.3"`` (HDF5 with a MATLAB header; stored
            transposed as MATLAB does).
        dtype: feature dtype in the HDF5 file (default: the dataset's).
        batch_size: rows read at a time.
        storage_options: fsspec options for the dataset and outputs.

    Returns:
        The number of videos written. Video ids are not stored (the papers' files have none).
    """
    if mat_format not in ("v5", "v7.3"):
        raise ValueError(f"mat_format must be 'v5' or 'v7.3', got {mat_format!r}")
    ds = FrameDataset.open(dataset_url, storage_options)
    n, m, d = ds.num_videos, ds.meta.num_frames, ds.meta.feature_dim
    out_dtype = np.dtype(dtype or ds.meta.dtype)
    with _local_output(feats_out_url, storage_options) as local:
        with h5py.File(local, "w") as h5:
            out = h5.create_dataset(key, shape=(n, m, d), dtype=out_dtype, chunks=(max(1, min(n, 64)), m, d))
            row = 0
            for batch in ds.iter_batches(batch_size, columns=("video_id", "features")):
                assert batch.features is not None
                out[row:row + len(batch)] = batch.features
                row += len(batch)
            if row != n:
                raise ValueError(f"{dataset_url}: read {row} rows but the manifest lists {n}")
    if labels_out_url is not None:
        multi_hot = ds.read_labels_multi_hot().astype(np.float64)
        with _local_output(labels_out_url, storage_options) as local:
            if mat_format == "v5":
                scipy.io.savemat(local, {labels_key: multi_hot}, format="5", do_compression=True)
            else:
                _savemat73(local, labels_key, multi_hot)
    return n


def _savemat73(path: str, key: str, matrix: np.ndarray) -> None:
    """Write a MATLAB v7.3 file (HDF5 + 512-byte MATLAB header) holding one double matrix."""
    with h5py.File(path, "w", userblock_size=512) as h5:
        ds = h5.create_dataset(key, data=np.ascontiguousarray(matrix.T))  # MATLAB is column-major
        ds.attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: vhindex, HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


@contextlib.contextmanager
def _local_output(url: str, storage_options: dict | None) -> Iterator[str]:
    """A local path to write to; uploaded to ``url`` on success when ``url`` is remote."""
    fs, path = vfs.url_to_fs(url, storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    tmpdir = tempfile.mkdtemp(prefix="vhindex-export-")
    try:
        local = os.path.join(tmpdir, os.path.basename(path) or "out")
        yield local
        fs.put_file(local, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def import_paper_dataset(
    name: str,
    src_url: str,
    out_url: str,
    *,
    splits: Sequence[str] | None = None,
    dtype: str = "float16",
    chunk_rows: int = 1024,
    storage_options: dict | None = None,
    overwrite: bool = False,
    rows_per_file: int = 50_000,
    row_group_size: int = 1_000,
) -> dict[str, DatasetManifest]:
    """Import a released paper dataset (see :data:`PAPER_LAYOUTS`) into ``out_url/{split}``.

    Args:
        name: key of :data:`PAPER_LAYOUTS` (case-insensitive): ``fcvid``, ``activitynet``,
            ``yfcc``, ``ucf101``, ``hmdb51``.
        src_url: folder holding the released files under their original names.
        out_url: output folder; each split goes to ``out_url/train``, ``/query``, ``/database``.
        splits: the splits to import (default: all). A shared split (FCVID query, UCF101/HMDB51
            train) also imports the split it shares.
        dtype: storage dtype of the features.
        chunk_rows: rows read from the HDF5 files at a time.
        storage_options: fsspec options for sources and outputs.
        overwrite: replace existing split folders.
        rows_per_file: rows per part file.
        row_group_size: rows per Parquet row group.

    Returns:
        ``split -> manifest`` (shared splits' manifests point into their sibling's folder).
    """
    layout = PAPER_LAYOUTS.get(name.lower())
    if layout is None:
        raise KeyError(f"unknown paper dataset {name!r}; choose from {sorted(PAPER_LAYOUTS)}")
    wanted = list(splits) if splits is not None else list(layout.splits)
    unknown = [s for s in wanted if s not in layout.splits]
    if unknown:
        raise KeyError(f"{layout.name} has no split(s) {unknown}; it has {sorted(layout.splits)}")
    for s in list(wanted):
        target = layout.splits[s].shared_with
        if target is not None and target not in wanted:
            wanted.append(target)
    src_fs, src_root = vfs.url_to_fs(src_url, storage_options)
    out_fs, out_root = vfs.url_to_fs(out_url, storage_options)

    def src(rel: str) -> str:
        return vfs.unstrip(src_fs, vfs.join(src_fs, src_root, rel))

    manifests: dict[str, DatasetManifest] = {}
    for split in sorted(wanted, key=lambda s: layout.splits[s].shared_with is not None):  # owners first
        files = layout.splits[split]
        split_url = vfs.unstrip(out_fs, vfs.join(out_fs, out_root, split))
        if files.shared_with is None:
            manifests[split] = import_h5_features(
                [src(f) for f in files.feats],
                split_url,
                key=layout.feats_key,
                labels_url=[src(f) for f in files.labels] or None,
                labels_key=files.labels_key,
                id_prefix=f"{layout.name}-{split}-",
                extractor=layout.extractor,
                dtype=dtype,
                chunk_rows=chunk_rows,
                storage_options=storage_options,
                overwrite=overwrite,
                rows_per_file=rows_per_file,
                row_group_size=row_group_size,
            )
        else:
            owner = manifests[files.shared_with]
            shared = DatasetManifest(
                meta=dict(owner.meta),
                files=[FileInfo(f"../{files.shared_with}/{f.path}", f.num_rows, list(f.row_group_rows))
                       for f in owner.files],
                num_rows=owner.num_rows,
            )
            _write_shared_manifest(out_fs, vfs.join(out_fs, out_root, split), shared, overwrite, split_url)
            manifests[split] = shared
        got = manifests[split].meta
        if (got.get("num_frames"), got.get("feature_dim")) != (layout.num_frames, layout.feature_dim):
            logger.warning(
                "%s/%s has M=%s x D=%s features; the published %s features are %d x %d",
                layout.name, split, got.get("num_frames"), got.get("feature_dim"), layout.name,
                layout.num_frames, layout.feature_dim,
            )
        logger.info("%s/%s: %d videos", layout.name, split, manifests[split].num_rows)
    return manifests


def _write_shared_manifest(fs: Any, root: str, manifest: DatasetManifest, overwrite: bool, url: str) -> None:
    vfs.prepare_dataset_folder(fs, root, url, overwrite, MANIFEST_NAME)
    vfs.write_json_atomic(fs, vfs.join(fs, root, MANIFEST_NAME), manifest.to_dict())
