"""HF interop across processes (TP2/PP2 logits, generation, training): the CLI, torchrun, a training run.

- TP2 / PP2: one TP1/PP1 import (written by this process) is loaded by a 2-rank torchrun world into TP2 and PP2
  layouts built by train.trainer.Trainer, tied and untied; the logits (gathered over TP; on the last stage for
  PP) must equal transformers' within docs/testing.md's limits (<= 1e-4 abs, <= 1e-5 of the largest logit).
- Training from an import: `launch/convert.py import` (CLI) of a random transformers model, then 2 steps of
  `launch/pretrain.py` at TP2 on 2 ranks (distributed optimizer, as the real recipes use) with
  checkpoint.load=IMPORT. The first logged loss (computed before any update) must equal transformers' loss
  on the same global batch, rebuilt here by train.data_feed.DataFeed;
  a fresh init would give ~ln(151,680) = 11.93 (init std 0.02 -> logits ~0), the imported untied model
  (lm_head ~ N(0, 1/64)) gives ~12.4, so a match to 1e-5 cannot be a fresh init.
- Export of that training checkpoint (`launch/convert.py export --mcore RUN_DIR --tokenizer qwen2.5`) loads with
  AutoModelForCausalLM/AutoTokenizer.from_pretrained in a fresh process with HF_HUB_OFFLINE=1 and generates
  the same 8 greedy tokens as our megatron model (full forward per step, argmax of the last position), and
  its logits over the generated sequence equal ours (docs/testing.md's limits).
SFT from an import (acceptance 4's other half) is tests/test_sft_run.py.
Measured: TP2/PP2 logits within 1.5e-6..3.1e-6 (6.1e-7..7.0e-7 relative); step-1 loss 12.3580289 vs
transformers 12.3580284 (4e-8 relative). Cost on 2 cores: ~75 s (two torchrun worlds, three CLI processes,
dataset preparation).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.families import get_shape
from recipes.compose import compose_config, to_recipe
from tests.hf_reference import assert_logits_match, logits_difference, random_hf_model, random_tokens
from tests.run_helpers import prepare_code_dataset
from train.distributed import init_model_parallel
from hf_interop.convert import import_hf, load_model

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HYDRA_FULL_ERROR="1", PYTHONWARNINGS="ignore")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
CASES = [dict(name=f"{layout}-{tying}", tied=tying == "tied", tp=2 if layout == "tp2" else 1,
              pp=2 if layout == "pp2" else 1) for layout in ("tp2", "pp2") for tying in ("tied", "untied")]
TINY_UNTIED = ["+recipe=tiny", "model.tied_embeddings=false"]
TRAIN = ["train.seq_length=64", "train.micro_batch_size=2", "train.global_batch_size=4", "train.train_iters=2",
         "train.log_interval=1", "train.eval_interval=0", "data.split='100,0,0'", "optimizer.warmup_iters=0",
         "data.num_workers=0", "checkpoint.save_interval=0", "parallel.distributed_optimizer=true",
         "logging.wandb=false", "logging.plots=false", "logging.progress_bar=false"]
PROMPT, NEW_TOKENS = "def fibonacci(n):\n    ", 8


def run(command, timeout=600, env=ENV):
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, f"{command}\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    return completed


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    init_model_parallel()


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Imports of a tied and an untied 0.5B-width model (2 layers), run at TP2 and PP2 by the worker."""
    work = tmp_path_factory.mktemp("layouts")
    references = {}
    tokens, positions = random_tokens(get_shape("0.5b"), batch=2, seq=32)
    tokens = tokens % 1024
    torch.save(tokens, work / "tokens.pt")
    for tied in (True, False):
        shape = get_shape("0.5b").shrink(num_layers=2, vocab_size=1024, tied_embeddings=tied)
        hf = random_hf_model(shape, seed=7)
        with torch.no_grad():
            references[tied] = hf(input_ids=tokens, position_ids=positions).logits
        hf.save_pretrained(work / f"hf-{tied}")
        import_hf(work / f"hf-{tied}", work / f"mcore-{tied}", allow_differing=("num_layers", "vocab_size",
                                                                                "tied_embeddings"))
    cases = [dict(case, checkpoint=str(work / f"mcore-{case['tied']}")) for case in CASES]
    (work / "cases.json").write_text(json.dumps(cases))
    run(TORCHRUN + [str(REPO / "tests" / "hf_interop_worker.py"), str(work)])
    return {case["name"]: (torch.load(work / f"logits-{case['name']}.pt", weights_only=True),
                           references[case["tied"]]) for case in CASES}


@pytest.mark.parametrize("case", [c["name"] for c in CASES])
def test_imported_checkpoint_matches_transformers_at_tp2_and_pp2(layouts, case):
    ours, reference = layouts[case]
    print(f"{case}: max|diff|, relative = {logits_difference(ours, reference)}")
    assert_logits_match(ours, reference, f"{case} from a TP1/PP1 import")


# ----------------------------------------------------------------------- CLI -> training -> export -> HF
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random tiny (untied) transformers model -> CLI import -> 2 pretraining steps at TP2 -> CLI export."""
    work = tmp_path_factory.mktemp("pipeline")
    hf = random_hf_model(get_shape("tiny").shrink(tied_embeddings=False), seed=11)
    hf.save_pretrained(work / "hf")
    run([sys.executable, "launch/convert.py", "import", "--hf", str(work / "hf"), "--out", str(work / "mcore"),
         *TINY_UNTIED])
    prefix = prepare_code_dataset(work, packages=("json",))
    overrides = [*TINY_UNTIED, *TRAIN, f"checkpoint.load={work / 'mcore'}", f"run.dir={work / 'run'}",
                 f"data.sources=[{{name: code, prefix: {prefix}, weight: 1.0}}]"]
    run(TORCHRUN + ["launch/pretrain.py", *overrides])
    run([sys.executable, "launch/convert.py", "export", "--mcore", str(work / "run"), "--out", str(work / "out"),
         "--tokenizer", "qwen2.5"])
    return dict(work=work, hf=hf, overrides=overrides)


def first_global_batch(overrides):
    from train.data_feed import DataFeed

    recipe = to_recipe(compose_config(overrides))
    feed = DataFeed(recipe, num_chunks=1, consumed_samples=0)
    micro_batches = recipe.train.global_batch_size // recipe.train.micro_batch_size  # data-parallel size 1
    iterator = feed.train_iterators()[0]
    return [next(iterator) for _ in range(micro_batches)]


def test_training_run_starts_from_the_imported_weights(trained):
    records = [json.loads(line) for line in (trained["work"] / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in records if r.get("step") == 1)
    total, count = 0.0, 0.0
    with torch.no_grad():
        for micro in first_global_batch(trained["overrides"]):
            logits = trained["hf"](input_ids=micro["tokens"]).logits
            losses = F.cross_entropy(logits.flatten(0, 1), micro["labels"].flatten(), reduction="none")
            total += float((losses * micro["loss_mask"].flatten()).sum())
            count += float(micro["loss_mask"].sum())
    reference = total / count
    print(f"step-1 loss {first:.7f}, transformers {reference:.7f}, fresh init ~{math.log(151_680):.3f}")
    assert abs(first - reference) <= 1e-5 * reference
    assert abs(first - math.log(151_680)) > 0.2, "indistinguishable from a fresh init"


HF_GREEDY = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
directory = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory).eval()
ids = tokenizer(sys.argv[2], return_tensors="pt").input_ids
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(sys.argv[3]), do_sample=False,
                     eos_token_id=None, pad_token_id=0)
with torch.no_grad():
    torch.save(model(out).logits, sys.argv[4])
print(json.dumps({"prompt": ids[0].tolist(), "new": out[0, ids.shape[1]:].tolist(), "dtype": str(model.dtype),
                  "tied": model.config.tie_word_embeddings}))
"""


def megatron_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without a KV cache: a full forward per step, argmax of the last position."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            positions = torch.arange(ids.shape[1]).unsqueeze(0)
            next_id = model(ids, positions, None)[:, -1].argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    return ids[0, len(prompt):].tolist()


def test_exported_training_checkpoint_generates_like_our_model(trained):
    out = trained["work"] / "out"
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    # the run started from the import (checkpoint.load), whose MCORE_DIR/hf/ still holds the source's config.json
    assert (out / "config.json").read_bytes() == (trained["work"] / "hf" / "config.json").read_bytes()
    offline = dict(ENV, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    logits_file = trained["work"] / "hf-logits.pt"
    completed = run([sys.executable, "-c", HF_GREEDY, str(out), PROMPT, str(NEW_TOKENS), str(logits_file)],
                    env=offline)
    hf = json.loads(completed.stdout.strip().splitlines()[-1])

    from data.tokenizer import load_tokenizer

    assert hf["prompt"] == load_tokenizer().encode(PROMPT)  # the exported tokenizer is ours
    model, source = load_model(trained["work"] / "run")  # the step-2 training checkpoint, recipe from it
    assert source.origin.startswith("the recipe stored in")
    ours = megatron_greedy(model, hf["prompt"], NEW_TOKENS)
    print(f"greedy: ours {ours}, transformers {hf['new']}")
    assert ours == hf["new"]
    sequence = torch.tensor([hf["prompt"] + ours])
    with torch.no_grad():  # and the exported model's logits over the whole sequence equal ours
        mine = model(sequence, torch.arange(sequence.shape[1]).unsqueeze(0), None)
    assert_logits_match(mine, torch.load(logits_file, weights_only=True), "exported training checkpoint")
