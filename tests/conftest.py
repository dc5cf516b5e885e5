"""Fixtures shared by several test modules."""
import importlib
import os
import shutil

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


@pytest.fixture(scope="module", autouse=True)
def free_module_disk(request, tmp_path_factory):
    """Delete what a test module wrote under pytest's temp folder once the module ends, unless one of its tests failed
    (then the files stay for inspection). Without this the suite holds about 24 GB at its end (full-width 0.5B
    round trips write ~3 GB per test, the resume module ~3.3 GB), more than some CI disks have free; with it the peak
    is one module's worth (~3.5 GB)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failed_before:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)
