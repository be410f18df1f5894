"""Training of the torch hashing models: one loop (:mod:`vhindex.train.loop`) and the recipes.

:func:`run_training` is the model-agnostic loop (released Adam schedule, seeding, fsspec
checkpoints with exact resume, JSON-lines metrics, hooks for Ray Train). The recipes in
:mod:`vhindex.train.recipes` (teacher -> embeddings -> graph -> student -> encode -> mAP) are
imported lazily, so ``import vhindex.train`` stays light.
"""

from typing import Any

from vhindex.train.loop import (
    LoopSpec,
    TrainResult,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    run_training,
    shard_batches,
)

__all__ = [
    "LoopSpec",
    "RecipeResult",
    "TrainResult",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "run_bth_recipe",
    "run_dkph_recipe",
    "run_training",
    "shard_batches",
    "train_bth",
    "train_student",
    "train_teacher",
    "write_teacher_embeddings",
]

_RECIPE_NAMES = {"RecipeResult", "run_bth_recipe", "run_dkph_recipe", "train_bth", "train_student", "train_teacher",
                 "write_teacher_embeddings"}


def __getattr__(name: str) -> Any:
    if name in _RECIPE_NAMES:
        from vhindex.train import recipes

        return getattr(recipes, name)
    raise AttributeError(f"module 'vhindex.train' has no attribute {name!r}")
