"""Let megatron-core 0.16.1 run on a CPU-only torch (gloo) by redirecting its few hard-wired CUDA calls.

Why: the parallel layouts (TP, SP, PP, VPP, CP, DP, distributed optimizer) are proven equal to one rank in CI,
which has no GPU. megatron-core's math is device-agnostic; only buffer allocation and a few type checks name
CUDA. Each redirect below is the smallest one that makes the quoted megatron line work; all are installed
together by `install_if_no_cuda()` and never when CUDA is available (a GPU run is untouched).

The redirects, with the first megatron-core 0.16.1 line that needs each, are listed in docs/cpu.md.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_installed_mode: TorchFunctionMode | None = None


def _cpu_device(device):
    """Map any CUDA device spelling (str, torch.device, bare int index) to the CPU; leave others alone."""
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu"  # megatron passes torch.cuda.current_device() results around as ints
    return device


class _CudaCallsOnCpu(TorchFunctionMode):
    """Rewrites CUDA placement requests inside torch calls so megatron's buffers land on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], (str, torch.device, int)):
            args = (args[0], _cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


def _route_cuda_rng_to_cpu() -> None:
    """megatron's RNG tracker keeps per-TP-rank 'CUDA' generator states; on CPU they are torch's CPU generator.

    With this, model_parallel_cuda_manual_seed behaves as on a GPU: default stream seeded with `seed`,
    a distinct tensor-parallel stream per TP rank (seed + 2718 + tp_rank), forked around dropout.
    """
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.manual_seed = torch.manual_seed
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    mrandom._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)


def install_if_no_cuda() -> bool:
    """Install every redirect once per process when CUDA is absent. Returns True when they are active."""
    global _installed_mode
    if torch.cuda.is_available():
        return False
    if _installed_mode is None:
        torch.cuda.current_device = lambda: "cpu"
        torch.cuda.synchronize = lambda *args, **kwargs: None
        _route_cuda_rng_to_cpu()
        _installed_mode = _CudaCallsOnCpu()
        _installed_mode.__enter__()  # active for the life of the process
    return True
