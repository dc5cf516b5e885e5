"""End to end: the tiny model trained through launch/pretrain.py at TP2 (conftest.tiny_tp2_run: 4 steps on stdlib
code, untied embeddings, so completions depend on the weights), evaluated on humaneval, fim_singleline and
fim_heldout (the 2 validation documents of its data under split 60,40,0) (first 3 problems each, up to 12 new
tokens; any score), decoded in batches:
- through the megatron checkpoint at TP2 (torchrun, 2 ranks: vocabulary-parallel logits gathered over TP; KV cache;
  --batch-size 2, so a task's 3 problems make a batch of 2 and one of 1),
- through the same checkpoint at PP2 (`--pp 2`: resharded on load, one full forward per step through the pipeline),
- through its Hugging Face export (launch/convert.py export -> transformers' batched generate, one process);
the completions must be identical, and equal transformers' own `generate` (greedy) on each prompt alone, cut
at the same stop sequences: an independent, unbatched decoding loop. The run directory's metrics.jsonl gets the
summary at the checkpoint's step. Cost ~1.5 min on 2 cores (TP2 and PP2 evaluations ~30 s each, export + HF
~25 s), plus the shared training run where this module is the first to ask for it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from evaluation.generate import END_IDS, prompt_ids
from evaluation.tasks import get, load_tasks
from evaluation.tasks.base import Answer, TaskContext
from tests.run_helpers import environment

REPO = Path(__file__).resolve().parents[1]
EVAL = ["--limit", "3", "--max-new-tokens", "12", "--tasks", "humaneval,fim_singleline,fim_heldout", "--split",
        "60,40,0"]


def run(command, timeout=600):
    completed = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True,
                               timeout=timeout)
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return completed


def rows(path: Path) -> dict:
    return {r["task_id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_tp2_run):
    work = tmp_path_factory.mktemp("eval-models")
    run_dir, prefix = work / "run", tiny_tp2_run.prefix
    shutil.copytree(tiny_tp2_run.run_dir, run_dir)  # its own copy: evaluation appends to the run's metrics.jsonl
    evaluate = [*EVAL, "--data", str(prefix)]
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "launch/evaluate.py", "--checkpoint", str(run_dir), *evaluate, "--batch-size", "2",
         "--output", str(work / "tp2.jsonl")])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "launch/evaluate.py",
         "--checkpoint", str(run_dir), "--pp", "2", *evaluate, "--output", str(work / "pp2.jsonl")])
    run([sys.executable, "launch/convert.py", "export", "--mcore", str(run_dir), "--out", str(work / "hf"),
         "--tokenizer", "none"])
    run([sys.executable, "launch/evaluate.py", "--hf", str(work / "hf"), *evaluate, "--output", str(work / "hf.jsonl")])
    return SimpleNamespace(work=work, prefix=prefix, tp2=rows(work / "tp2.jsonl"),
                           hf=rows(work / "hf.jsonl"), pp2=rows(work / "pp2.jsonl"))


def test_megatron_tp2_pp2_and_hf_export_give_identical_completions(evaluated):
    tp2, hf, pp2 = evaluated.tp2, evaluated.hf, evaluated.pp2
    fim = [f"SingleLineInfilling/HumanEval/0/L{line}" for line in range(3)]
    assert list(tp2) == list(hf) == list(pp2) == ["HumanEval/0", "HumanEval/1", "HumanEval/2", *fim, "fim_heldout/3",
                                                  "fim_heldout/4"]
    for task_id in tp2:
        assert tp2[task_id]["completion"] == hf[task_id]["completion"] == pp2[task_id]["completion"], task_id
        assert tp2[task_id]["completion"], task_id  # something was generated
        assert tp2[task_id]["status"] in ("passed", "failed", "timeout", "memory_limit", "killed", "mismatch")
        assert isinstance(tp2[task_id]["passed"], bool) and tp2[task_id]["prompt"]
    assert all("exact_match" in tp2[t] for t in (*fim, "fim_heldout/3"))


def test_completions_equal_transformers_generate(evaluated):
    from transformers import AutoModelForCausalLM

    from data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("qwen2.5")
    model = AutoModelForCausalLM.from_pretrained(str(evaluated.work / "hf"), dtype=torch.float32).eval()
    chosen = load_tasks(["humaneval", "fim_singleline", "fim_heldout"], 2,
                        TaskContext(str(evaluated.prefix), "60,40,0"))
    for name, problems in chosen.items():
        for problem in problems:
            ids = torch.tensor([prompt_ids(tokenizer, problem)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                 eos_token_id=sorted(END_IDS), pad_token_id=min(END_IDS))
            new = [t for t in out[0, ids.shape[1]:].tolist() if t not in END_IDS]
            cut, _ = get(name).head(problem, Answer(tokenizer.decode(new)))  # the task's own cut
            assert cut == evaluated.tp2[problem.task_id]["completion"]


def test_summary_lands_in_the_run_metrics(evaluated):
    records = [json.loads(line) for line in (evaluated.work / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluation = [r for r in records if "eval/humaneval/pass@1" in r]
    assert [r["step"] for r in evaluation] == [4, 4]  # the TP2 and the PP2 evaluation of the step-4 checkpoint
    assert {"eval/fim_singleline/pass@1", "eval/fim_singleline/exact_match"} <= set(evaluation[0])


def test_kv_cache_decoding_equals_full_forward(gloo, monkeypatch):
    """megatron's StaticInferenceContext, as evaluation decodes with it (PP1): the logits of a prefill and of each
    one-token step equal a full forward over the whole sequence (a random tiny model, fp32); greedy tokens
    through the cache, batched, are checked in tests/test_eval_batching.py. Negative control: the decode step's
    attention with SDPA's top-left causal triangle (the one query sees only the first key) moves the logits by
    ~0.5."""
    from megatron.core.inference.contexts import StaticInferenceContext

    from model import layers
    from recipes.compose import compose_config, to_recipe
    from train.trainer import Trainer

    recipe = to_recipe(compose_config(["+recipe=tiny", "parallel.tp=1", "parallel.pp=1", "parallel.cp=1",
                                       "parallel.sp=false", "parallel.distributed_optimizer=false",
                                       "train.micro_batch_size=1", "train.global_batch_size=1"]), world_size=1)
    model = Trainer(recipe, train_iters=1).model[0].eval()
    ids = torch.randint(0, 2000, (1, 24), generator=torch.Generator().manual_seed(0))

    def cached_logits() -> torch.Tensor:
        context, rows = StaticInferenceContext(1, 32), []
        for begin, end in [(0, 16), *((t, t + 1) for t in range(16, 24))]:  # prefill 16, then one token at a time
            rows.append(model(ids[:, begin:end], torch.arange(begin, end)[None], None, inference_context=context,
                              runtime_gather_output=True)[0, -1])
            context.sequence_len_offset += end - begin
        return torch.stack(rows)

    with torch.no_grad():
        full = model(ids, torch.arange(24)[None], None)[0, 15:]
        assert (cached_logits() - full).abs().max() <= 1e-5 * full.abs().max()
        with monkeypatch.context() as patch:  # core attention that does not know the decode step's no_mask
            patch.setattr(layers, "AttnMaskType", SimpleNamespace(no_mask=None))
            assert (cached_logits()[1:] - full[1:]).abs().max() > 0.1

