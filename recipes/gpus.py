"""The GPUs a recipe may target: memory for the planner, architecture for FP8, dense peak for MFU.

One table so the validator (which FP8 recipes a card runs), the planner (does it fit) and the MFU log (peak
FLOP/s) agree. `memory_gib` is about what torch reports as total memory (`get_device_properties().total_memory`), not
the marketing number: an "80 GB" H100 reports about 85.0e9 bytes = 79.2 GiB. Override per run with
run.gpu_memory_gib (e.g. a MIG slice or a card with less free memory).
Peaks are dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s of the SXM parts from NVIDIA's data sheets.
FP8 support (Transformer Engine): compute capability >= 8.9 for delayed/tensorwise scaling; the blockwise
recipe needs Hopper (9.0) kernels; MXFP8 needs Blackwell (10.0) hardware block scaling.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    compute_capability: tuple[int, int]
    peak_bf16_tflops: float


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("a100", 79.2, (8, 0), 312.0),  # A100 80GB SXM: no FP8
        GPU("h100", 79.2, (9, 0), 989.0),  # H100 80GB SXM (HBM3)
        GPU("h200", 139.8, (9, 0), 989.0),  # H200 141GB SXM (HBM3e), same compute as H100
        GPU("b200", 178.4, (10, 0), 2250.0),  # B200 SXM (HGX B200, 180GB HBM3e)
    )
}

# Minimum compute capability of each Transformer Engine FP8 scaling recipe (precision.fp8_recipe).
FP8_RECIPE_MIN_CAPABILITY: dict[str, tuple[int, int]] = {
    "delayed": (8, 9),
    "tensorwise": (8, 9),
    "blockwise": (9, 0),
    "mxfp8": (10, 0),
}
# Minimum Transformer Engine (major, minor) of the newer scaling recipes: Float8CurrentScaling (tensorwise)
# arrived in TE 2.2, Float8BlockScaling (blockwise) in 2.3, MXFP8BlockScaling in 2.1; delayed is in every 2.x.
FP8_RECIPE_MIN_TE: dict[str, tuple[int, int]] = {"tensorwise": (2, 2), "blockwise": (2, 3), "mxfp8": (2, 1)}


def get_gpu(name: str) -> GPU:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise KeyError(f"run.gpu={name!r} is not in recipes.gpus.GPUS; choose one of {sorted(GPUS)} "
                       "or add a row") from None
