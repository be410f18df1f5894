"""Data formats and IO of vhindex: frame-feature and codes datasets on any fsspec URL.

See :mod:`vhindex.data.schema` for the on-disk layout. Write with :class:`FrameDatasetWriter` /
:class:`CodesDatasetWriter` / :class:`EmbeddingDatasetWriter`, read with :class:`FrameDataset` /
:class:`CodesDataset` / :class:`EmbeddingDataset` (streaming,
row group by row group), split work with :func:`plan_tasks`, check folders (also other tools'
Parquet output) with :func:`validate_dataset`, and convert the papers' HDF5 / ``.mat`` files with
:mod:`vhindex.data.h5io`.
"""

from vhindex.data.h5io import (
    PAPER_LAYOUTS,
    PaperLayout,
    SplitFiles,
    export_h5_features,
    import_h5_features,
    import_paper_dataset,
    read_mat_labels,
)
from vhindex.data.planner import Piece, ReadTask, plan_tasks
from vhindex.data.reader import (
    CodesBatch,
    CodesDataset,
    EmbeddingBatch,
    EmbeddingDataset,
    FrameBatch,
    FrameDataset,
    IncompleteDatasetError,
    embeddings_to_numpy,
    features_to_numpy,
)
from vhindex.data.schema import CodesDatasetMeta, EmbeddingDatasetMeta, FrameDatasetMeta
from vhindex.data.validate import DatasetValidationError, Problem, ValidationReport, validate_dataset
from vhindex.data.writer import (
    CodesDatasetWriter,
    DatasetManifest,
    EmbeddingDatasetWriter,
    FileInfo,
    FrameDatasetWriter,
)

__all__ = [
    "PAPER_LAYOUTS",
    "CodesBatch",
    "CodesDataset",
    "CodesDatasetMeta",
    "CodesDatasetWriter",
    "DatasetManifest",
    "DatasetValidationError",
    "EmbeddingBatch",
    "EmbeddingDataset",
    "EmbeddingDatasetMeta",
    "EmbeddingDatasetWriter",
    "FileInfo",
    "FrameBatch",
    "FrameDataset",
    "FrameDatasetMeta",
    "FrameDatasetWriter",
    "IncompleteDatasetError",
    "PaperLayout",
    "Piece",
    "Problem",
    "ReadTask",
    "SplitFiles",
    "ValidationReport",
    "embeddings_to_numpy",
    "export_h5_features",
    "features_to_numpy",
    "import_h5_features",
    "import_paper_dataset",
    "plan_tasks",
    "read_mat_labels",
    "validate_dataset",
]
