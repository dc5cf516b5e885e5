"""RoPE base per stage and the long-context stage, through launch/pretrain.py and launch/convert.py on real data.

Rules (recipes.validate.rope_base_in_use), each branch unit-tested and then run: a fresh file stage trains at the
report's 10,000; the repo stage sets 1e6 over that checkpoint; a file stage that continues a 1e6 checkpoint keeps
1e6 without a flag; an explicit model.rope_base against the checkpoint's is one error naming both. Checkpoints and
imports record the base (train.checkpoint.recorded_rope_base), the run log prints it, HF export writes it.

stage=long (repo at 131,072 with YaRN x4) loads the repo stage's checkpoint and trains on a repo-mode source whose
documents are longer than 32K tokens; at CP4 (4 ranks) its per-step loss and gradient norm equal CP1's on the same
batches (2,048-token rows: the real 151,680-row vocabulary's fp32 logits cost 1.2 GB at CP1). Negative control: the
same CP1 run without YaRN differs beyond both bounds, so the comparison sees the YaRN path.
Cost: 9 launches of ~10-20 s of CPU each (about 12 minutes of wall clock on a 2-core machine shared by 8 jobs).
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from model.config import kernel_fusions
from model.families import get_shape
from model.shapes import YarnScaling
from recipes.compose import compose_config, to_recipe
from recipes.validate import RecipeError, describe_rope, rope_base_in_use
from tests.run_helpers import FAST, REPO, STDLIB, environment, pretrain_command, run_pretrain, train_losses

QUIET = ["logging.wandb=false", "logging.plots=false", "train.eval_interval=0", "data.num_workers=0",
         "logging.progress_bar=false"]
LONG_SEQ = 2048
# CP4 vs CP1, fp32, measured: loss 2.4e-7 / 7.2e-7 at steps 1 / 2, grad norm 1.8e-6 / 7.7e-6 relative (Adam's
# first update amplifies summation-order noise); the YaRN-off control: loss 2.5e-5 / 1.2e-4, grad norm 6e-4 at
# step 2 (a checkpoint two steps from init attends almost uniformly, so YaRN's temperature barely shows at step 1).
LOSS_TOL, GRAD_TOL = 2e-6, 2e-5


def _recipe(*overrides):
    return to_recipe(compose_config(["+recipe=tiny", *overrides]))


@pytest.mark.parametrize("stage, explicit, recorded, expected", [
    ("file", None, None, 10_000.0),            # a fresh stage 1: the report's base
    ("file", None, 1e6, 1e6),                  # continuing released weights / a repo-stage checkpoint
    ("file", 1e6, 1e6, 1e6),                   # explicit and equal
    ("repo", None, 10_000.0, 1e6),             # the switch over a stage-1 checkpoint
    ("repo", None, None, 1e6),
    ("long", None, 1e6, 1e6),
    ("sft", None, None, 1e6),                  # a fresh SFT/DPO (tests): the released base
    ("dpo", None, 10_000.0, 10_000.0),         # DPO keeps whatever its SFT checkpoint trained with
    ("file", 500_000.0, None, 500_000.0),      # explicit at a fresh init
    ("repo", 2e6, 10_000.0, 2e6),              # explicit at a switching stage: the user's switch target
])
def test_rope_base_in_use(stage, explicit, recorded, expected):
    recipe = _recipe(f"stage={stage}", *([f"model.rope_base={explicit}"] if explicit else []))
    assert rope_base_in_use(recipe, recorded) == expected


def test_explicit_rope_base_against_the_checkpoint_is_one_error_with_both_values():
    recipe = _recipe("stage=sft", "model.rope_base=10000")
    with pytest.raises(RecipeError, match=r"\[rope-base\] model.rope_base=10000 but ckpt/x was trained with RoPE base "
                                          r"1e\+06.*Drop model.rope_base \(or set it to 1e\+06\)"):
        rope_base_in_use(recipe, 1e6, "ckpt/x")
    assert describe_rope(_recipe("stage=long")) == ("RoPE base 1,000,000 (stage long, set over any checkpoint), "
                                                    "YaRN x4 over 32,768 positions")


def test_planner_prints_the_base_in_use():
    from recipes.planner import make_plan

    file = to_recipe(compose_config(["+recipe=7b", "stage=file"]))
    assert "positions   RoPE base 10,000 (stage file, fresh init" in make_plan(file).to_text()
    continued = make_plan(file, recorded_rope_base=1e6).to_json()["rope"]
    assert continued == "RoPE base 1,000,000 (the loaded checkpoint's)"


def test_rope_fusion_is_off_under_yarn():
    """megatron 0.16.1's fused THD RoPE drops YaRN's mscale: no fusion under YaRN (was apply_rope_fusion=use_te)."""
    assert kernel_fusions(True, YarnScaling(factor=4.0))["apply_rope_fusion"] is False
    assert kernel_fusions(True, None)["apply_rope_fusion"] is True  # plain RoPE keeps TE's fused kernel
    assert kernel_fusions(False, None)["apply_rope_fusion"] is False


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def _ok(completed) -> str:
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return completed.stdout + completed.stderr


def _recorded(directory) -> float:
    from train.checkpoint import recorded_rope_base, resolve_checkpoint

    return recorded_rope_base(resolve_checkpoint(directory))


def _convert(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "convert.py"), *map(str, arguments)], cwd=REPO,
                          env=environment(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def repo_source(tmp_path_factory):
    """The stdlib email package as one repository, prepared in repo mode with the long stage's 131,072-token budget."""
    work = tmp_path_factory.mktemp("long")
    shutil.copytree(STDLIB / "email", work / "repos" / "email", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), "--input", str(work / "repos"),
                    "--output-prefix", str(work / "repo"), "--mode", "repo", "--seq-length", "131072",
                    "--workers", "1", "--no-progress"], check=True, cwd=REPO, capture_output=True, text=True)
    return work, [f"data.sources=[{{name: code, prefix: {work / 'repo'}, weight: 1.0}}]", "data.mode=repo",
                  "data.split='100,0,0'"]  # one repository: one document, no validation share


def test_stages_carry_the_rope_base_and_long_context_equals_one_rank(repo_source):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    work, data = repo_source
    assert int(IndexedDataset(str(work / "repo")).sequence_lengths.max()) > 32_768  # a document beyond 32K tokens
    short = [*FAST, *QUIET, *data, "train.train_iters=1", "checkpoint.save_interval=1"]
    stage1, stage2 = work / "file", work / "repo-run"
    log = _ok(run_pretrain(1, ["+recipe=tiny", "stage=file", "parallel.tp=1", f"run.dir={stage1}", *short]))
    assert "RoPE base 10,000 (stage file, fresh init" in log and _recorded(stage1) == 10_000.0
    log = _ok(run_pretrain(1, ["+recipe=tiny", "stage=repo", "parallel.cp=1", f"run.dir={stage2}",
                               f"checkpoint.load={stage1}", *short]))
    assert "RoPE base 1,000,000 (stage repo, set over any checkpoint)" in log and _recorded(stage2) == 1e6
    continued = work / "file-again"
    log = _ok(run_pretrain(1, ["+recipe=tiny", "stage=file", "parallel.tp=1", f"run.dir={continued}",
                               f"checkpoint.load={stage2}", *short]))
    assert "RoPE base 1,000,000 (the loaded checkpoint's)" in log and _recorded(continued) == 1e6

    # HF export writes the base each checkpoint was trained with
    for run_dir, theta in ((stage1, 10_000.0), (stage2, 1e6)):
        _ok(_convert("export", "--mcore", run_dir, "--out", work / f"hf-{run_dir.name}"))
        assert json.loads((work / f"hf-{run_dir.name}" / "config.json").read_text())["rope_theta"] == theta

    # the long stage from the repo stage's checkpoint: CP4 equals CP1, YaRN on
    long = [*QUIET, *data, f"checkpoint.load={stage2}", f"train.seq_length={LONG_SEQ}", "train.micro_batch_size=1",
            "train.global_batch_size=1", "train.train_iters=2", "train.log_interval=1", "checkpoint.save_interval=0",
            "optimizer.warmup_iters=0"]
    runs, logs = {}, {}
    for name, ranks, extra in (("cp4", 4, ["parallel.cp=4"]), ("cp1", 1, ["parallel.cp=1"]),
                               ("cp1-no-yarn", 1, ["parallel.cp=1", "model.yarn_factor=null"])):
        logs[name] = _ok(run_pretrain(ranks, ["+recipe=tiny", "stage=long", f"run.dir={work / name}", *extra, *long]))
        runs[name] = _metrics(work / name)
        assert [r["step"] for r in runs[name]] == [1, 2], runs[name]
    yarn_line = "RoPE base 1,000,000 (stage long, set over any checkpoint), YaRN x4 over 32,768 positions"
    assert yarn_line in logs["cp4"] and yarn_line in logs["cp1"] and "YaRN" not in logs["cp1-no-yarn"]
    def differences(run):  # per step: |loss - CP1's|, |grad norm / CP1's - 1|
        return [(abs(r["loss"] - one["loss"]), abs(r["grad_norm"] / one["grad_norm"] - 1))
                for r, one in zip(runs[run], runs["cp1"])]

    assert all(math.isfinite(r["loss"]) for r in runs["cp4"])
    assert all(loss <= LOSS_TOL and grad <= GRAD_TOL for loss, grad in differences("cp4")), differences("cp4")
    # the control leaves both bounds far behind at step 2 (after one update through YaRN's gradients)
    (loss_1, _), (loss_2, grad_2) = differences("cp1-no-yarn")
    assert loss_1 > 5 * LOSS_TOL and loss_2 > 5 * LOSS_TOL and grad_2 > 5 * GRAD_TOL, differences("cp1-no-yarn")


def test_import_records_rope_theta_and_an_explicit_mismatch_is_refused(tmp_path):
    """An HF import records config.json's rope_theta (1e6 for Qwen2.5-Coder); a file stage continuing it with an
    explicit model.rope_base=10000 stops before building anything, with one error line naming both values."""
    from tests.hf_reference import random_hf_model

    shape = get_shape("tiny")
    random_hf_model(shape).save_pretrained(tmp_path / "hf")
    _ok(_convert("import", "--hf", tmp_path / "hf", "--out", tmp_path / "mcore", "+recipe=tiny"))
    assert _recorded(tmp_path / "mcore") == shape.rope_theta == 1e6
    env = {k: v for k, v in environment().items() if k != "HYDRA_FULL_ERROR"}  # the user's view: no traceback
    completed = subprocess.run(pretrain_command(1, [
        "+recipe=tiny", "parallel.tp=1", f"checkpoint.load={tmp_path / 'mcore'}", "model.rope_base=10000",
        f"run.dir={tmp_path / 'run'}", *QUIET]), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode != 0 and completed.stderr.count("error:") == 1, completed.stderr[-3000:]
    assert f"[rope-base] model.rope_base=10000 but {tmp_path / 'mcore'} was trained with RoPE base 1e+06" \
        in completed.stderr and "Traceback" not in completed.stderr
    assert train_losses(tmp_path / "run") == {}


def test_yarn_on_a_packed_row_equals_each_document_alone(gloo):
    """The local spec's packed (THD) path with YaRN x4: logits of a row holding two documents equal transformers'
    logits of each document alone (fp32). Sharp attention (q/k weights x8), so YaRN's attention temperature shows:
    the control, transformers without YaRN, is far off. bench/gpu_checks.py runs the same case on the TE spec."""
    import torch

    from hf_interop.names import hf_to_megatron, load_into_megatron
    from model.build import build_gpt_model
    from model.config import transformer_config
    from tests.hf_reference import random_hf_model
    from train.distributed import init_model_parallel
    from train.objectives.lm import pack_micro_batch

    init_model_parallel()
    shape, yarn, lengths = get_shape("tiny", vocab_size=512), YarnScaling(factor=4.0), (24, 40)
    models = {}
    for name, scaling in (("yarn", yarn), ("plain", None)):
        models[name] = random_hf_model(shape, seed=0, yarn=scaling)
        with torch.no_grad():
            for layer in models[name].model.layers:
                layer.self_attn.q_proj.weight.mul_(8.0)
                layer.self_attn.k_proj.weight.mul_(8.0)
    generator = torch.Generator().manual_seed(0)
    documents = [torch.randint(0, shape.vocab_size, (1, n), generator=generator) for n in lengths]
    packed, params = pack_micro_batch({"tokens": torch.cat(documents, 1),
                                       "position_ids": torch.cat([torch.arange(n) for n in lengths])[None]})
    config = transformer_config(shape, use_te=False, yarn=yarn, perform_initialization=False)
    model = build_gpt_model(shape, config, transformer_impl="local", max_sequence_length=128, yarn=yarn).eval()
    load_into_megatron(model, hf_to_megatron(models["yarn"].state_dict(), shape))
    with torch.no_grad():
        ours = model(packed["tokens"], packed["position_ids"], None, packed_seq_params=params)
        reference = {name: torch.cat([hf(d).logits for d in documents], 1) for name, hf in models.items()}
    scale = reference["yarn"].abs().max()
    assert (ours - reference["yarn"]).abs().max() / scale < 1e-5
    assert (ours - reference["plain"]).abs().max() / scale > 1e-2
