"""Fixtures shared by several test modules."""
import importlib
import os
import shutil
from types import SimpleNamespace

import pytest

SESSION_DIR_PREFIX = "session-"  # tmp folders of session fixtures: kept until the session ends


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
            if not path.name.startswith(SESSION_DIR_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_tp2_run(tmp_path_factory):
    """One training run through launch/pretrain.py, shared (read-only) by the evaluation tests: the tiny model at
    TP2 with sequence parallelism and untied embeddings (a freshly trained tied tiny model repeats its prompt's
    last token whatever its weights, so completions would agree for any two models), 4 steps on the stdlib json
    package with split 60,40,0, validation and checkpoints at steps 2 and 4. `overrides` are the run's settings
    without run.dir, so a test can repeat the run with one thing changed. Cost ~30 s of wall clock (2 ranks)."""
    from tests.run_helpers import FAST, prepare_code_dataset, run_pretrain

    work = tmp_path_factory.mktemp(SESSION_DIR_PREFIX + "tiny-tp2")
    prefix = prepare_code_dataset(work, packages=("json",))
    overrides = ["+recipe=tiny", *FAST, f"data.sources=[{{name: code, prefix: {prefix}, weight: 1.0}}]",
                 "data.split='60,40,0'", "train.train_iters=4", "train.eval_interval=2", "checkpoint.save_interval=2",
                 "parallel.tp=2", "parallel.sp=true", "model.tied_embeddings=false", "logging.plots=false"]
    trained = run_pretrain(2, [*overrides, f"run.dir={work / 'run'}"])
    assert trained.returncode == 0, trained.stderr[-5000:]
    return SimpleNamespace(prefix=prefix, run_dir=work / "run", overrides=overrides)
