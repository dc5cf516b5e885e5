"""Fixtures shared by several test modules."""
import pytest


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
