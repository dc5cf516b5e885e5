"""Checkpoints under failure: kill -9 and exact resume, a truncated checkpoint, resharded resume, the NaN guard.

All runs are launch/pretrain.py on 2 CPU ranks (tiny shape, TP2, fp32, 64-token samples) over real code,
validating every 4 steps. A resume at another layout is compared over the three steps after it: the first
logged loss after a resume comes before any update and cannot see the optimizer state.
"""
from __future__ import annotations

import random
import shutil

import pytest

from tests.run_helpers import (FAST, kill_group, prepare_code_dataset, run_pretrain, start_pretrain, train_losses,
                               wait_for)

STEPS, SAVE_EVERY, EVAL_EVERY = 12, 3, 4


def _overrides(run_dir, prefix, steps=STEPS, *extra):
    return ["+recipe=tiny", *FAST, f"train.train_iters={steps}", f"train.eval_interval={EVAL_EVERY}",
            f"checkpoint.save_interval={SAVE_EVERY}", f"run.dir={run_dir}",
            f"data.sources=[{{name: code, prefix: {prefix}, weight: 1.0}}]", *extra]


def _ok(completed):
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return completed


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return root, prepare_code_dataset(root)


@pytest.fixture(scope="module")
def baseline(work):
    """An uninterrupted run: the reference losses, and checkpoints at steps 9 and 12 (keep_last=2)."""
    root, prefix = work
    run_dir = root / "baseline"
    _ok(run_pretrain(2, _overrides(run_dir, prefix)))
    return run_dir


def test_checkpoints_record_the_tokenizer(baseline):
    from data.tokenizer import QWEN_FINGERPRINT, VOCAB_SIZE
    from train.checkpoint import recorded_tokenizer

    latest = baseline / "checkpoints" / (baseline / "checkpoints" / "latest").read_text().strip()
    assert recorded_tokenizer(latest) == {"name": "qwen2.5", "vocab_size": VOCAB_SIZE, "fingerprint": QWEN_FINGERPRINT}


def test_sigkill_then_restart_reproduces_every_later_loss_bit_for_bit(work, baseline):
    root, prefix = work
    run_dir = root / "killed"
    seed = random.randrange(2**32)
    kill_after = random.Random(seed).randint(SAVE_EVERY + 1, STEPS - 2)  # some step after the first checkpoint
    print(f"kill seed {seed}: killing after step {kill_after}")
    process = start_pretrain(2, _overrides(run_dir, prefix), root / "killed.log")
    try:
        wait_for(lambda: kill_after in train_losses(run_dir), timeout=300, what=f"step {kill_after}")
    finally:
        kill_group(process)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert STEPS not in train_losses(run_dir), "the run finished before it could be killed"
    completed = _ok(run_pretrain(2, _overrides(run_dir, prefix)))
    # the killed run's lock on the run dir (train.run_lock) is taken over: its pid is gone
    assert f"{run_dir / 'run.lock'}: taking over from host" in completed.stderr, completed.stderr[-3000:]
    resumed_step = int(latest.split("_")[1])
    # A resume, not a fresh start with the same seed: the restart names the checkpoint and step it loaded.
    assert f"resumed from {run_dir / 'checkpoints' / latest} at step {resumed_step}" in completed.stderr, \
        (seed, kill_after, completed.stderr[-3000:])
    expected, resumed = train_losses(baseline), train_losses(run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == expected  # exact float equality, every step
    # validation reads the same batches before and after the resume
    assert train_losses(run_dir, "val_loss") == train_losses(baseline, "val_loss")
    assert sorted(train_losses(baseline, "val_loss")) == [4, 8, 12]


def test_resume_that_changes_the_data_order_stops_unless_allowed(work, baseline):
    root, prefix = work
    run_dir = root / "longer"
    shutil.copytree(baseline, run_dir)
    _rewind_to(run_dir, 9)
    completed = run_pretrain(2, _overrides(run_dir, prefix, STEPS + 4))  # 16 x 4 samples instead of 12 x 4
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "was trained on another data order" in output and "48 -> 64" in output, output[-3000:]
    assert "checkpoint.allow_data_order_change=true" in output
    assert not (run_dir / "metrics.jsonl").exists()  # stopped before a step
    _ok(run_pretrain(2, _overrides(run_dir, prefix, 10, "checkpoint.allow_data_order_change=true")))
    assert sorted(train_losses(run_dir)) == [10]


def test_truncated_checkpoint_falls_back_to_the_previous_one(work, baseline):
    root, prefix = work
    run_dir = root / "truncated"
    shutil.copytree(baseline, run_dir)
    (run_dir / "metrics.jsonl").unlink()
    newest = run_dir / "checkpoints" / "step_00000012"
    victim = max(newest.glob("*.distcp"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    completed = _ok(run_pretrain(2, _overrides(run_dir, prefix)))
    assert "step_00000012 is unreadable" in completed.stderr + completed.stdout
    resumed, expected = train_losses(run_dir), train_losses(baseline)
    assert sorted(resumed) == [10, 11, 12]  # resumed from step 9
    assert all(resumed[s] == expected[s] for s in resumed)


def test_all_checkpoints_broken_is_one_clear_error(work, baseline):
    root, prefix = work
    run_dir = root / "broken"
    shutil.copytree(baseline, run_dir)
    for step_dir in (run_dir / "checkpoints").glob("step_*"):
        (step_dir / "metadata.json").unlink()
    completed = run_pretrain(2, _overrides(run_dir, prefix))
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "no checkpoint in" in output and "could be loaded" in output
    assert "step_00000012/metadata.json is missing" in output and "step_00000009/metadata.json is missing" in output


@pytest.mark.parametrize("layout", [["parallel.tp=1"], ["parallel.tp=1", "parallel.pp=2"]], ids=["tp1-dp2", "pp2"])
def test_resume_at_another_layout_continues_with_the_same_loss(work, baseline, layout):
    root, prefix = work
    resharded = root / ("resharded-" + "-".join(o.replace("parallel.", "").replace("=", "") for o in layout))
    shutil.copytree(baseline, resharded)
    _rewind_to(resharded, 9)
    completed = _ok(run_pretrain(2, _overrides(resharded, prefix, STEPS, *layout)))
    assert "resharded" in completed.stderr + completed.stdout
    expected, actual = train_losses(baseline), train_losses(resharded)
    assert sorted(actual) == [10, 11, 12]  # three steps after the resume: two of them after resharded updates
    assert all(abs(actual[s] - expected[s]) <= 1e-6 for s in actual), (actual, expected)


def test_nan_guard_stops_before_the_update_and_saves_nothing_after(work):
    root, prefix = work
    run_dir = root / "diverging"
    # lr 1e30: Adam moves every weight by ~1e30 in step 1, so step 2's logits overflow to a NaN loss.
    completed = run_pretrain(2, _overrides(run_dir, prefix, 6, "optimizer.lr=1e30", "optimizer.warmup_iters=0",
                                           "checkpoint.save_interval=1"))
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "TrainingDiverged: step 2: loss is nan" in output
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000001"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000001"


# ---- the distributed optimizer (every shipped GPU recipe uses it) ----------------------------------------------
DISTOPT = ["parallel.tp=1", "parallel.distributed_optimizer=true"]


def _rewind_to(run_dir, step: int) -> None:
    """Make `step` the newest complete checkpoint, as if the run had died right after saving it."""
    checkpoints = run_dir / "checkpoints"
    for later in checkpoints.glob("step_*"):
        if int(later.name.split("_")[1]) > step:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(f"step_{step:08d}\n")
    (run_dir / "metrics.jsonl").unlink()


@pytest.mark.parametrize("reshardable", [False, True], ids=["dp_reshardable", "fully_reshardable"])
def test_distributed_optimizer_resume(work, reshardable):
    root, prefix = work
    flag = f"checkpoint.reshardable_optimizer={str(reshardable).lower()}"
    reference = root / f"distopt-{reshardable}"
    _ok(run_pretrain(2, _overrides(reference, prefix, 6, *DISTOPT, flag)))
    expected = train_losses(reference)

    same_layout = root / f"distopt-{reshardable}-resumed"
    shutil.copytree(reference, same_layout)
    _rewind_to(same_layout, 3)
    _ok(run_pretrain(2, _overrides(same_layout, prefix, 6, *DISTOPT, flag)))
    assert train_losses(same_layout) == {s: expected[s] for s in (4, 5, 6)}  # bit for bit

    other_layout = root / f"distopt-{reshardable}-tp2"
    shutil.copytree(reference, other_layout)
    _rewind_to(other_layout, 3)
    completed = run_pretrain(2, _overrides(other_layout, prefix, 6, "parallel.tp=2",
                                           "parallel.distributed_optimizer=true", flag))
    if reshardable:
        _ok(completed)
        actual = train_losses(other_layout)
        assert sorted(actual) == [4, 5, 6]  # three steps after the resume at step 3
        assert all(abs(actual[s] - expected[s]) <= 1e-6 for s in actual), (actual, expected)
    else:
        assert completed.returncode != 0
        output = completed.stdout + completed.stderr
        assert "dp_reshardable format" in output and "checkpoint.reshardable_optimizer=true" in output
