"""Fixtures shared by several test modules."""
import importlib
import os

import pytest


@pytest.fixture
def dali():
    """NVIDIA DALI, or a skip where it is not installed. Where CI installs it (.ci/run exports REQUIRE_DALI=1),
    a DALI that does not import is a failure, not a skip."""
    if os.environ.get("REQUIRE_DALI") == "1":
        return importlib.import_module("nvidia.dali")
    return pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def gloo():
    """megatron's BlendedDataset asks torch.distributed for the rank when it caches: a 1-process group."""
    import torch.distributed as dist

    from train.distributed import init_process_group

    created = not dist.is_initialized()
    init_process_group()
    yield
    if created:
        dist.destroy_process_group()
