"""Hashing models: the :class:`HashModel` interface, the registry and the unsupervised baselines.

>>> model = build_model("itq", bits=32).fit(lambda: iter(batches), seed=0)   # doctest: +SKIP
>>> codes = model.encode_packed(frames)                                       # doctest: +SKIP

Learned models (torch): :class:`BTH` (``"bth"``) and :class:`DKPH` (``"dkph"``) in
:mod:`vhindex.models.learned`, :class:`MCMSH` (``"mcmsh"``) in :mod:`vhindex.models.mixer`, :class:`NPH` (``"nph"``) in
:mod:`vhindex.models.nph`, :class:`DVHCM` (``"dvhcm"``, supervised) in :mod:`vhindex.models.dvhcm`, their networks in :mod:`vhindex.models.nets` and losses in
:mod:`vhindex.models.losses`. Later models subclass :class:`HashModel` and register with
:func:`register_model`.
"""

from vhindex.models.base import (
    MODEL_REGISTRY,
    BatchSource,
    FrameShape,
    HashModel,
    StreamingMoments,
    available_models,
    build_model,
    iter_pooled,
    load_model,
    mean_pool,
    model_params,
    register_model,
    signs,
)
from vhindex.models.baselines import ITQ, LSH, PCASign, quantization_loss, random_orthogonal
from vhindex.models.contrastive import GCMH, ConMH  # noqa: E402,I001  (after the base models)
from vhindex.models.dvhcm import DVHCM  # noqa: E402,I001
from vhindex.models.learned import BTH, DKPH
from vhindex.models.mixer import MCMSH  # noqa: E402,I001  (after the torch models it builds on)
from vhindex.models.nph import NPH  # noqa: E402,I001

__all__ = [
    "BTH",
    "ConMH",
    "DKPH",
    "DVHCM",
    "GCMH",
    "ITQ",
    "LSH",
    "MCMSH",
    "MODEL_REGISTRY",
    "NPH",
    "BatchSource",
    "FrameShape",
    "HashModel",
    "PCASign",
    "StreamingMoments",
    "available_models",
    "build_model",
    "iter_pooled",
    "load_model",
    "mean_pool",
    "model_params",
    "quantization_loss",
    "random_orthogonal",
    "register_model",
    "signs",
]
