"""Attach a classifying model's category masks to a sharded index (``build-index --model``, ``jobs/build_index.py``)."""

from __future__ import annotations

from vhindex.config import ConfigError, IndexSection


def attach_model_masks(ix: IndexSection, bits: int) -> str | None:
    """``index.model`` of a classifying model (DVHCM): attach its category-mask table to the index at ``index.out``
    (``index.mask_ratio`` or the model's ratio); the service then uses it without ``serve.mask_table``.

    Raises:
        ConfigError: ``index.mask_ratio`` without a classifying ``index.model``, or a model of other bits.
    """
    if not ix.model:
        if ix.mask_ratio is not None:
            raise ConfigError("command line", [("index.mask_ratio", "needs index.model (--model) of a DVHCM model")])
        return None
    from vhindex.index.mask import attach_mask_table
    from vhindex.models import load_model

    so = ix.storage_options or None
    model = load_model(ix.model, so)
    if model.bits != bits:
        raise ConfigError("command line", [("index.model", f"{ix.model} makes {model.bits}-bit codes; the index holds "
                                                           f"{bits}-bit codes")])
    if not callable(getattr(model, "category_masks", None)):
        if ix.mask_ratio is not None:
            raise ConfigError("command line", [("index.mask_ratio", f"model {model.name} has no category masks "
                                                                    "(only DVHCM learns them)")])
        return None
    return attach_mask_table(ix.out, model.category_masks(ix.mask_ratio), bits, so)
