"""The on-disk data contracts of vhindex: frame-feature datasets and codes datasets.

A **frame-feature dataset** is a folder (any fsspec URL: local path, ``memory://``,
``s3://``, ``gs://``) holding

* ``part-00000.parquet``, ``part-00001.parquet``, ... (zero-padded, deterministic names), each with
  the columns

  ============  =====================================================  ==========================
  column        Arrow type                                             meaning
  ============  =====================================================  ==========================
  ``video_id``  ``string`` (not null, unique across the dataset)       the video's identifier
  ``features``  ``fixed_size_list<fixed_size_list<T, D>, M>``          M sampled frames x D dims,
                with ``T`` = ``halffloat`` or ``float``                frame-major (row-major)
  ``labels``    ``list<int32>`` (optional column)                      class ids (multi-label)
  ============  =====================================================  ==========================

  and the Parquet key-value metadata ``vhindex`` = JSON of :class:`FrameDatasetMeta`;
* ``_manifest.json`` -- the dataset metadata plus the list of files with their row and row-group
  counts. It is written **last**, so a folder without it is an incomplete dataset.

A **codes dataset** has the same folder layout with the columns ``video_id`` (string) and
``code`` (``fixed_size_binary(bits / 8)``, bits packed as described in
:mod:`vhindex.index.codes`), and metadata :class:`CodesDatasetMeta`.

An **embeddings dataset** (the teacher's video-level embeddings, input of the anchor graph) has
the same folder layout with the columns ``video_id`` (string, not null) and ``embedding``
(``fixed_size_list<T, dim>``, ``T`` = ``halffloat`` or ``float``, not null), and metadata
:class:`EmbeddingDatasetMeta`.

Readers also accept ``features`` stored as variable-length ``list<list<T>>`` (as written by other
tools) and check every row's shape; vhindex's own writer always writes the fixed-size form.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import pyarrow as pa

FORMAT_FRAMES = "vhindex.frames"
FORMAT_CODES = "vhindex.codes"
FORMAT_EMBEDDINGS = "vhindex.embeddings"
FORMAT_VERSION = 1

#: Parquet key-value metadata key holding the JSON-encoded dataset metadata.
METADATA_KEY = b"vhindex"
#: Name of the dataset manifest inside a dataset folder (written last).
MANIFEST_NAME = "_manifest.json"
#: Pattern of part file names; ``index`` is the zero-based part number.
PART_NAME = "part-{index:05d}.parquet"

COL_VIDEO_ID = "video_id"
COL_FEATURES = "features"
COL_LABELS = "labels"
COL_CODE = "code"
COL_EMBEDDING = "embedding"

FeatureDType = Literal["float16", "float32"]
_ARROW_FLOAT = {"float16": pa.float16(), "float32": pa.float32()}


@dataclasses.dataclass(frozen=True)
class FrameDatasetMeta:
    """Dataset-level metadata of a frame-feature dataset.

    Attributes:
        num_frames: M, frames sampled per video.
        feature_dim: D, dimensions of one frame's feature vector.
        dtype: storage dtype of the features (``float16`` or ``float32``).
        extractor: name of the feature extractor (e.g. ``efficientnet-lite0``, ``vgg16-fc7``,
            ``synthetic``, ``imported-h5``).
        extractor_version: free-form version string of the extractor.
        num_classes: number of label classes when the dataset carries labels, else ``None``.
    """

    num_frames: int
    feature_dim: int
    dtype: FeatureDType = "float16"
    extractor: str = "unknown"
    extractor_version: str = ""
    num_classes: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.num_frames, int) or self.num_frames <= 0:
            problems.append(f"num_frames (M) must be a positive int, got {self.num_frames!r}")
        if not isinstance(self.feature_dim, int) or self.feature_dim <= 0:
            problems.append(f"feature_dim (D) must be a positive int, got {self.feature_dim!r}")
        if self.dtype not in _ARROW_FLOAT:
            problems.append(f"dtype must be one of {sorted(_ARROW_FLOAT)}, got {self.dtype!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes <= 0):
            problems.append(f"num_classes must be a positive int or None, got {self.num_classes!r}")
        if problems:
            raise ValueError("invalid frame dataset metadata: " + "; ".join(problems))

    def to_json(self) -> str:
        """Serialise (with the format tag) for Parquet metadata and manifests."""
        return json.dumps({"format": FORMAT_FRAMES, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> FrameDatasetMeta:
        """Parse the dict form written by :meth:`to_json` (unknown keys are ignored)."""
        if obj.get("format") != FORMAT_FRAMES:
            raise ValueError(f"not a vhindex frame-feature dataset: format={obj.get('format')!r}, expected {FORMAT_FRAMES!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})

    def arrow_schema(self, with_labels: bool) -> pa.Schema:
        """The exact Arrow schema vhindex writes for this metadata."""
        return frame_schema(self, with_labels)


@dataclasses.dataclass(frozen=True)
class CodesDatasetMeta:
    """Dataset-level metadata of a codes dataset.

    Attributes:
        bits: code length K (a multiple of 8).
        model: model name (``lsh``, ``itq``, ``dkph``, ...).
        model_version: content hash or version string of the model that produced the codes.
        bit_order: packing convention of the ``code`` column (see :mod:`vhindex.index.codes`).
    """

    bits: int
    model: str = "unknown"
    model_version: str = ""
    bit_order: str = "msb0"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or self.bits <= 0 or self.bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {self.bits!r}")

    def to_json(self) -> str:
        """Serialise (with the format tag) for Parquet metadata and manifests."""
        return json.dumps({"format": FORMAT_CODES, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> CodesDatasetMeta:
        """Parse the dict form written by :meth:`to_json` (unknown keys are ignored)."""
        if obj.get("format") != FORMAT_CODES:
            raise ValueError(f"not a vhindex codes dataset: format={obj.get('format')!r}, expected {FORMAT_CODES!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})


def frame_schema(meta: FrameDatasetMeta, with_labels: bool) -> pa.Schema:
    """Arrow schema of a frame-feature part file (see the module docstring)."""
    value = _ARROW_FLOAT[meta.dtype]
    fields = [
        pa.field(COL_VIDEO_ID, pa.string(), nullable=False),
        pa.field(COL_FEATURES, pa.list_(pa.list_(value, meta.feature_dim), meta.num_frames), nullable=False),
    ]
    if with_labels:
        fields.append(pa.field(COL_LABELS, pa.list_(pa.int32()), nullable=True))
    return pa.schema(fields, metadata={METADATA_KEY: meta.to_json().encode()})


def codes_schema(meta: CodesDatasetMeta) -> pa.Schema:
    """Arrow schema of a codes part file."""
    return pa.schema(
        [
            pa.field(COL_VIDEO_ID, pa.string(), nullable=False),
            pa.field(COL_CODE, pa.binary(meta.bits // 8), nullable=False),
        ],
        metadata={METADATA_KEY: meta.to_json().encode()},
    )


@dataclasses.dataclass(frozen=True)
class EmbeddingDatasetMeta:
    """Dataset-level metadata of an embeddings dataset (one vector per video).

    Attributes:
        dim: d, dimensions of one embedding.
        dtype: storage dtype of the embeddings (``float32`` or ``float16``).
        source: what produced the embeddings (e.g. ``bth-teacher``, ``synthetic``).
        source_version: free-form version string / content hash of the producer.
    """

    dim: int
    dtype: FeatureDType = "float32"
    source: str = ""
    source_version: str = ""

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            problems.append(f"dim must be a positive int, got {self.dim!r}")
        if self.dtype not in _ARROW_FLOAT:
            problems.append(f"dtype must be one of {sorted(_ARROW_FLOAT)}, got {self.dtype!r}")
        if problems:
            raise ValueError("invalid embeddings dataset metadata: " + "; ".join(problems))

    def to_json(self) -> str:
        """Serialise (with the format tag) for Parquet metadata and manifests."""
        return json.dumps({"format": FORMAT_EMBEDDINGS, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> EmbeddingDatasetMeta:
        """Parse the dict form written by :meth:`to_json` (unknown keys are ignored)."""
        if obj.get("format") != FORMAT_EMBEDDINGS:
            raise ValueError(
                f"not a vhindex embeddings dataset: format={obj.get('format')!r}, expected {FORMAT_EMBEDDINGS!r}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})

    def arrow_schema(self) -> pa.Schema:
        """The exact Arrow schema vhindex writes for this metadata."""
        return embedding_schema(self)


def embedding_schema(meta: EmbeddingDatasetMeta) -> pa.Schema:
    """Arrow schema of an embeddings part file: ``video_id`` + ``embedding`` (``fixed_size_list<T, dim>``)."""
    return pa.schema(
        [
            pa.field(COL_VIDEO_ID, pa.string(), nullable=False),
            pa.field(COL_EMBEDDING, pa.list_(_ARROW_FLOAT[meta.dtype], meta.dim), nullable=False),
        ],
        metadata={METADATA_KEY: meta.to_json().encode()},
    )
