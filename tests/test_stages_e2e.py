"""Every stage end to end through launch/pretrain.py on real prepared data, in every tiny layout, on both loaders.

One torchrun per case, 3 steps and one validation each (64-token samples): every stage (file, repo, sft, dpo) in
every layout (TP2, PP2, CP2, DP2 + distributed optimizer), each stage and each layout on the default torch loader
and on DALI, and the repo stage at CP2 on both (its batches carry megatron's per-sample dataset_id, which context
parallelism must not cut along the sequence). Each case must finish with finite training and validation losses;
every DPO layout's step 1 must be ln 2 with zero rewards (the reference pass is the same computation).
The file-stage case blends two real sources (stdlib code, stdlib docstrings as text) and checks the per-source
validation loss in every sink: console, metrics.jsonl, the offline W&B file and the loss plot's curves.

Data, all real: stdlib packages tokenized by data/prepare.py (file mode; repo mode over a tree of two packages),
stdlib docstrings (text mode), and ChatML conversations whose answers are stdlib docstrings (stage=sft).
To add a stage: give `stage_data` its source and append its CASES rows.
Cost, measured on an idle 2-core machine: 14-27 s per run, ~5.5 min for the 17 runs and their data.
"""
from __future__ import annotations

import ast
import json
import math
import shutil
import subprocess
import sys

import pytest

from tests.run_helpers import FAST, REPO, STDLIB, prepare_code_dataset, run_pretrain, train_losses, wandb_history

LAYOUTS = {
    "tp2": ["parallel.tp=2", "parallel.pp=1", "parallel.cp=1", "parallel.distributed_optimizer=false"],
    "pp2": ["parallel.tp=1", "parallel.pp=2", "parallel.cp=1", "parallel.distributed_optimizer=false"],
    "cp2": ["parallel.tp=1", "parallel.pp=1", "parallel.cp=2", "parallel.distributed_optimizer=true"],
    "dp2-distopt": ["parallel.tp=1", "parallel.pp=1", "parallel.cp=1", "parallel.distributed_optimizer=true"],
}
# (stage, layout, loader): every stage in every layout, each stage and each layout on both loaders; the repo
# stage at CP2 on both (its batches carry megatron's per-sample dataset_id, which CP must not cut)
CASES = [
    ("file", "tp2", "torch"), ("file", "pp2", "dali"), ("file", "cp2", "torch"), ("file", "dp2-distopt", "dali"),
    ("repo", "tp2", "dali"), ("repo", "pp2", "torch"), ("repo", "cp2", "torch"), ("repo", "cp2", "dali"),
    ("repo", "dp2-distopt", "torch"),
    ("sft", "tp2", "torch"), ("sft", "pp2", "torch"), ("sft", "cp2", "dali"), ("sft", "dp2-distopt", "dali"),
    ("dpo", "tp2", "dali"), ("dpo", "pp2", "torch"), ("dpo", "cp2", "dali"), ("dpo", "dp2-distopt", "torch"),
]
# what a stage needs in a layout: packed SFT rows need cp=1 (validator rule packing-cp), so SFT at CP2 pads
LAYOUT_EXTRA = {("sft", "cp2"): ["data.packing=false"]}
STEPS = 3
TWO_SOURCES = ("file", "dp2-distopt", "dali")  # the case that also checks per-source validation loss


def _docstrings(modules=("json", "email", "asyncio", "collections", "pathlib")) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the functions and classes of a few stdlib packages."""
    found = []
    for package in modules:
        root = STDLIB / package
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [STDLIB / f"{package}.py"]:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
                    found.append((f"{path.stem}.{node.name}", ast.get_docstring(node)))
    return found


def _prepare(arguments: list[str]) -> None:
    subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), *arguments, "--workers", "1",
                    "--no-progress"], check=True, cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory) -> dict[str, list[str]]:
    """The data.sources override of each stage."""
    work = tmp_path_factory.mktemp("stages")
    code = prepare_code_dataset(work, packages=("json", "email"))
    docs = _docstrings()
    (work / "text.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for _, text in docs))
    _prepare(["--input", str(work / "text.jsonl"), "--output-prefix", str(work / "text"), "--mode", "text"])
    repos = work / "repos"
    for package in ("json", "email"):
        shutil.copytree(STDLIB / package, repos / package, ignore=shutil.ignore_patterns("__pycache__"))
    _prepare(["--input", str(repos), "--output-prefix", str(work / "repo"), "--mode", "repo",
              "--seq-length", "1024"])
    chat = work / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What does {name} do?"},
        {"role": "assistant", "content": text}]}) + "\n" for name, text in docs))
    pairs = work / "pairs.jsonl"  # the right docstring against its neighbour's; 40 pairs: the reference pass reads all
    pairs.write_text("".join(json.dumps({"prompt": f"What does {name} do?", "chosen": text,
                                         "rejected": docs[index + 1][1]}) + "\n"
                             for index, (name, text) in enumerate(docs[:40])))
    return {
        "dpo": [f"data.sources=[{{name: pairs, prefix: {pairs}, weight: 1.0}}]", "data.split='90,10,0'"],
        "file": [f"data.sources=[{{name: code, prefix: {code}, weight: 0.5}}, "
                 f"{{name: text, prefix: {work / 'text'}, weight: 0.5}}]"],
        "repo": [f"data.sources=[{{name: code, prefix: {work / 'repo'}, weight: 1.0}}]"],
        "sft": [f"data.sources=[{{name: chat, prefix: {chat}, weight: 1.0}}]"],
    }


@pytest.mark.parametrize("stage,layout,loader", CASES, ids=["-".join(case) for case in CASES])
def test_stage_trains_in_layout(stage_data, tmp_path, request, stage, layout, loader):
    if loader == "dali":
        request.getfixturevalue("dali")
    run_dir = tmp_path / "run"
    two_sources = (stage, layout, loader) == TWO_SOURCES
    completed = run_pretrain(2, [
        "+recipe=tiny", f"stage={stage}", *FAST, *LAYOUTS[layout], *LAYOUT_EXTRA.get((stage, layout), []), *stage_data[stage],
        f"data.loader={loader}",
        f"train.train_iters={STEPS}", f"train.eval_interval={STEPS}", "train.eval_iters=1",
        "checkpoint.save_interval=0", f"run.dir={run_dir}", f"logging.wandb={two_sources}",
        f"logging.plots={two_sources}"])
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    losses, valid = train_losses(run_dir), train_losses(run_dir, "val_loss")
    assert sorted(losses) == list(range(1, STEPS + 1)) and sorted(valid) == [STEPS], (losses, valid)
    assert all(math.isfinite(v) for v in [*losses.values(), *valid.values()]), (losses, valid)
    if two_sources:
        _check_per_source_validation(run_dir, completed.stdout)
    if stage == "dpo":
        _check_dpo_start_and_validation(run_dir)


def _check_dpo_start_and_validation(run_dir) -> None:
    """Step 1 of DPO, in every layout: policy == reference to the last bit (the reference pass runs the same
    model, layout and kernels), so every pair's margin is 0, the loss is -log sigmoid(0) = ln 2 and the rewards
    are 0; validation reports the preference metrics beside the DPO loss."""
    from recipes.stages import DPO_METRICS as METRICS

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(record for record in records if record.get("step") == 1 and "loss" in record)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6), first
    rewards = [first[name] for name in ("rewards_chosen", "rewards_rejected", "reward_margin")]
    assert rewards == pytest.approx([0.0, 0.0, 0.0], abs=1e-7), first
    record = [record for record in records if "val_loss" in record][-1]
    assert all(math.isfinite(record[f"val_{name}"]) for name in METRICS), record


def _check_per_source_validation(run_dir, console: str) -> None:
    from train.plots import read_metrics, validation_curves

    record = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "val_loss" in line][-1]
    per_source = {name: record[f"val_loss/{name}"] for name in ("code", "text")}
    # the blend is the token-weighted mean of its sources: strictly between them unless they coincide
    assert min(per_source.values()) <= record["val_loss"] <= max(per_source.values()), record
    assert per_source["code"] != per_source["text"], record
    assert f"val_loss/code {per_source['code']:.4f}" in console and f"val_loss/text {per_source['text']:.4f}" in console
    logged = {key: json.loads(value) for items in wandb_history(run_dir) for key, value in items.items()
              if key.startswith("val")}
    assert logged == pytest.approx({"val_loss": record["val_loss"], **{f"val_loss/{k}": v for k, v in per_source.items()}})
    curves = validation_curves(read_metrics(run_dir)[1])
    assert set(curves) == {"validation loss", "validation loss (code)", "validation loss (text)"}
    assert (run_dir / "loss.png").stat().st_size > 1000


def test_loss_report_splits_loss_and_tokens_by_source():
    """What per-source validation sums: each sample's masked loss and tokens under its dataset_id (hand-computed)."""
    import torch

    from train.objectives.lm import loss_func

    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    loss, tokens, reports = loss_func(mask, torch.tensor([1, 0, 1], dtype=torch.int16), 3, per_token)
    assert loss.item() == 1 + 2 + 4 + 7 + 8 + 9 and tokens.item() == 6
    assert reports["lm loss"].tolist() == [31.0, 6.0]
    assert reports["source loss"].tolist() == [[4.0, 1.0], [27.0, 5.0], [0.0, 0.0]]
    assert "source loss" not in loss_func(mask, None, 3, per_token)[2]  # SFT samples carry no source
