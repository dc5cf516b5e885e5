"""Process group and megatron parallel state, from torchrun's environment (or a 1-rank default).

NCCL when CUDA is present, gloo otherwise (with train.cpu_shims installed first). The timeout is generous
(30 min by default) because the first NCCL collective also waits for the slowest rank's imports and data
index building.
"""
from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import random as megatron_random

from recipes.gpus import GPUS
from recipes.schema import Recipe
from train import cpu_shims

PIPELINE_SEED_STRIDE = 100


def init_process_group(timeout_minutes: float = 30.0, backend: Optional[str] = None) -> None:
    """Join torchrun's world, or start a 1-rank world when run as a plain process (tests, tools).

    `backend` forces one (the HF converter uses gloo even on a GPU node); default NCCL with CUDA, else gloo.
    """
    cpu_shims.install_if_no_cuda()
    if torch.distributed.is_initialized():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "MASTER_ADDR" not in os.environ:  # not launched by torchrun (or a PyTorchJob): a world of one
        # An in-memory store, not a TCP port: a "free" port can be taken by another process between probing
        # and binding (seen as EADDRINUSE when test processes run side by side).
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        torch.distributed.init_process_group(backend=backend, store=torch.distributed.HashStore(), rank=0,
                                             world_size=1, timeout=timeout)
        return
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend, timeout=timeout)


def rank_device() -> torch.device:
    """Where this rank's tensors for the model and for collectives live: its GPU (NCCL takes only GPU tensors),
    else the CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def init_model_parallel(tp: int = 1, pp: int = 1, vpp: int = 1, cp: int = 1, seed: int = 1234) -> None:
    """(Re)build megatron's process groups for a layout and seed its RNG streams like a GPU run would."""
    init_process_group()
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
        context_parallel_size=cp,
    )
    # Each pipeline stage its own stream (Megatron-LM offsets the seed by 100 x pp_rank): with one seed, layer
    # k of every stage would start from the same weights. TP, CP and DP peers of a stage share the seed (TP
    # shards are cut from one master weight; DP and CP replicas must agree).
    seed += PIPELINE_SEED_STRIDE * parallel_state.get_pipeline_model_parallel_rank()
    torch.manual_seed(seed)
    megatron_random.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def launch_environment(recipe: Recipe) -> dict[str, str]:
    """Environment variables a GPU run of `recipe` needs set before CUDA initialises.

    CUDA_DEVICE_MAX_CONNECTIONS=1 with TP or CP > 1 before Blackwell (compute capability < 10): one hardware
    queue makes kernels start in launch order, which megatron's overlap of TP/SP/CP communication with GEMMs
    relies on (Megatron-LM refuses to start without it). `run.gpu` says the card, so no CUDA call is needed.
    """
    gpu = GPUS.get(recipe.run.gpu.lower())
    pre_blackwell = gpu is None or gpu.compute_capability < (10, 0)
    if (recipe.parallel.tp > 1 or recipe.parallel.cp > 1) and pre_blackwell:
        return {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    return {}


def set_launch_environment(recipe: Recipe) -> None:
    """Apply launch_environment to this process; must run before anything initialises CUDA."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("set_launch_environment must run before CUDA initialises (call it first in the launcher)")
    os.environ.update(launch_environment(recipe))


def to_model_device(batch: dict, model) -> dict:
    """The micro-batch on the model chunk's device. Loaders yield (pinned) CPU tensors and neither megatron's
    schedules nor get_batch_on_this_cp_rank move them (Megatron-LM's own get_batch does .cuda()); a GPU
    model would fail at the embedding lookup. non_blocking: pinned host memory copies asynchronously."""
    device = next(model.parameters()).device
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}
