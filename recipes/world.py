"""A recipe on a world size: the data-parallel size and micro-batch count, computed here and nowhere else.

The validator checks them (recipes.validate's world rules), the planner sizes memory with them and the trainer
runs its schedule with them, so all three agree by construction. dp = world / (tp x pp x cp) (megatron's data
parallel group excludes context parallel ranks); micro-batches per step and rank = global / (micro x dp).
"""
from __future__ import annotations

from dataclasses import dataclass

from recipes.schema import Recipe


@dataclass(frozen=True)
class Layout:
    """The derived numbers of a recipe on a world size."""

    world_size: int
    tp: int
    pp: int
    vpp: int
    cp: int
    dp: int
    sp: bool
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int


def recipe_world_size(recipe: Recipe) -> int:
    """The world size a recipe is tuned for: run.nodes x run.gpus_per_node."""
    return recipe.run.nodes * recipe.run.gpus_per_node


def layout_of(recipe: Recipe, world_size: int) -> Layout:
    """Layout of `recipe` on `world_size` ranks; recipes.validate checks first that the divisions are exact."""
    p, t = recipe.parallel, recipe.train
    dp = world_size // (p.tp * p.pp * p.cp)
    return Layout(world_size, p.tp, p.pp, p.vpp, p.cp, dp, p.sp, t.seq_length, t.micro_batch_size,
                  t.global_batch_size, t.global_batch_size // (t.micro_batch_size * dp))
