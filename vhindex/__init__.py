"""vhindex: large-scale video retrieval by learned binary hashing.

The core package is pure: it imports and runs without Ray or Dask (the ``cluster`` package holds
the distributed runtime). Subpackages:

* :mod:`vhindex.data` -- Parquet frame-feature and codes datasets over fsspec, validation,
  shard planning, HDF5/.mat import/export, synthetic data.
* :mod:`vhindex.models` -- hashing models (LSH, PCA-sign, ITQ baselines; learned models later).
* :mod:`vhindex.index` -- packed binary codes and exact Hamming search.
* :mod:`vhindex.eval` -- mAP@K (paper and standard protocols), P@N, PR curves, tables and plots.
* :mod:`vhindex.config` -- typed YAML configs with dotted overrides.
"""

__version__ = "0.1.0"
