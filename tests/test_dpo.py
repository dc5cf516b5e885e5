"""DPO: the loss against transformers, every parallel layout against one rank, the pairs file, a learning run.

- test_loss_matches_transformers: a random untied tiny transformers Qwen2 is imported; our 1-rank Trainer's DPO
  loss and metrics on a fixed batch of real rendered pairs equal the DPO formula evaluated here, in float64, on
  transformers' own log-probabilities (log_softmax of its logits, summed over each row's response mask). The
  reference log-probs are a second transformers model's (another seed), so margins are O(1), not 0.
  Measured: loss 0.71017003 vs 0.71016999 (6e-8 relative), margin 2.5e-6 relative. Swapping chosen and
  rejected negates the margin and the rewards.
- test_layouts_equal_one_rank: tests/equivalence/dpo_worker.py; TP2, TP2+SP, PP2, PP2 x VPP2, CP2, DP2 with the
  distributed optimizer: loss <= 1e-6, metrics and reference log-probs agree, grads <= 1e-5 relative.
  Negative control: CP2 without the all-reduce of the per-sequence sums is caught (loss 2.81 vs 2.12).
  Measured: losses equal to <= 1e-7, reference log-probs to ~1e-5.
- test_reference_pass_resumes_after_a_kill: a pass killed after 2 of 3 global batches redoes only the third.
- test_readme_dpo_run: the DPO commands of docs/recipes.md as printed (make_pairs.py on the standard library, then a 2-rank
  tiny run from a fresh init): step 1's loss is ln 2 (policy == reference), the rewards are 0, then the loss falls
  and reward_accuracy rises above 0.5. Measured (32 pairs, 8 steps, ~110 s on a loaded 2-core machine):
  0.693147 at steps 1-2 (the first update runs at warmup lr 0), then 0.689, 0.648, 0.592 .. 0.638; accuracy 0.75
  at step 3, then 0.875-1.0.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.loader import collate
from data.preference import PairStore, pair_sample
from data.report import BadInputError
from data.sft import ChatTemplate
from data.tokenizer import load_tokenizer
from model.families import get_shape
from recipes.compose import compose_config, to_recipe
from tests.hf_reference import random_hf_model
from tests.run_helpers import REPO, environment, train_losses
from train.objectives.dpo import DPOSettings, pair_losses

LN2 = math.log(2.0)


def _dpo_reference(beta, eps, nll, logp, ref, chosen_tokens):
    """DPO per pair in plain Python floats (the formula of Rafailov et al. with cDPO and an NLL term)."""
    out = []
    for (lc, lr), (rc, rr), n in zip(logp, ref, chosen_tokens):
        margin = beta * ((lc - rc) - (lr - rr))
        loss = -(1 - eps) * math.log(1 / (1 + math.exp(-margin))) - eps * math.log(1 / (1 + math.exp(margin)))
        out.append((loss - nll * lc / n, beta * (lc - rc), beta * (lr - rr), margin))
    return out


def test_pair_losses_formula_and_swap():
    logp = torch.tensor([[-10.0, -12.0], [-30.0, -20.0], [-5.5, -5.0]], dtype=torch.float64)
    ref = torch.tensor([[-11.0, -11.0], [-25.0, -24.0], [-5.0, -5.5]], dtype=torch.float64)
    tokens = torch.tensor([4.0, 10.0, 2.0], dtype=torch.float64)
    for settings in (DPOSettings(0.1), DPOSettings(0.5, 0.2, 0.3)):
        loss, metrics = pair_losses(settings, logp, ref, tokens)
        expected = _dpo_reference(settings.beta, settings.label_smoothing, settings.nll_weight, logp.tolist(),
                                  ref.tolist(), tokens.tolist())
        assert loss.tolist() == pytest.approx([e[0] for e in expected], rel=1e-12)
        assert metrics["reward_margin"].tolist() == pytest.approx([e[3] for e in expected], rel=1e-12)
        assert metrics["reward_accuracy"].tolist() == [1.0, 0.0, 0.0]
        swapped_loss, swapped = pair_losses(DPOSettings(settings.beta), logp.flip(1), ref.flip(1), tokens)
        assert torch.equal(swapped["reward_margin"], -metrics["reward_margin"])
        assert swapped["reward_accuracy"].tolist() == [0.0, 1.0, 1.0]
    equal, metrics = pair_losses(DPOSettings(0.1), logp, logp, tokens)
    assert equal.tolist() == pytest.approx([LN2] * 3, abs=1e-15) and not metrics["reward_accuracy"].any()


def _write(path: Path, lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_pairs_are_rendered_like_sft_and_bad_lines_counted(tmp_path):
    tokenizer = load_tokenizer()
    template = ChatTemplate(tokenizer)
    good = {"prompt": "Sort a list in Python?", "chosen": "Use sorted(xs).", "rejected": "Use xs.sort() twice."}
    conversation = {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Reverse?"}],
                    "chosen": "xs[::-1]", "rejected": "xs[1:]"}
    long_reply = {"prompt": "Count to forty.", "chosen": " ".join(str(i) for i in range(40)), "rejected": "no"}
    path = _write(tmp_path / "pairs.jsonl", [
        good, "{not json", {"prompt": "q", "chosen": "a"}, {"prompt": [{"role": "assistant", "content": "x"}],
                                                              "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": 3, "rejected": "b"}, {"prompt": "q", "chosen": "same", "rejected": "same"},
        conversation, "", long_reply, {"prompt": "word " * 80, "chosen": "a", "rejected": "b"}])
    store = PairStore(path, template, max_ids=48)
    skipped = {reason: entry["count"] for reason, entry in store.report.skipped.items()}
    assert skipped == {"malformed_json": 1, "not_a_pair": 1, "bad_prompt": 1, "non_string_response": 1,
                       "identical_responses": 1, "blank_line": 1, "prompt_too_long": 1}
    assert store.report.skipped["bad_prompt"]["examples"] == [f"{path}:4: the prompt ends with an assistant turn; "
                                                              "the replies are the next assistant turn"]
    assert len(store) == 3 and store.truncated_pairs == 1
    for pair, record in enumerate([good, conversation]):  # = SFT's rendering of the finished conversation
        prompt = record["prompt"]
        prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        for row, key in enumerate(("chosen", "rejected")):
            ids, learnt = store.row(2 * pair + row)
            sft_ids, sft_learnt = template.render([*prompt, {"role": "assistant", "content": record[key]}])
            assert np.array_equal(ids, sft_ids) and np.array_equal(learnt, sft_learnt)
            assert tokenizer.decode(ids[learnt]) == record[key] + "<|im_end|>"
    ids, learnt = store.row(4)  # the long reply: prompt whole, reply cut at the end to 48 ids
    prompt_ids = template.render([{"role": "user", "content": long_reply["prompt"]}], add_generation_prompt=True)[0]
    assert len(ids) == 48 and np.array_equal(ids[:len(prompt_ids)], prompt_ids) and learnt[-1]
    sample = collate([pair_sample(store, 0, 64), pair_sample(store, 1, 64)])
    assert sample["tokens"].shape == (2, 2, 64) and sample["ref_logps"].shape == (2, 2)
    assert sample["loss_mask"][0, 0].sum() == learnt_count(store, 0)
    with pytest.raises(BadInputError, match=r"(?s)5 malformed input record.*bad_prompt: 1.*pairs.jsonl:4"):
        from data.config import DataConfig, DataSource
        from data.preference import build_preference_datasets

        build_preference_datasets(DataConfig(sources=[DataSource("pairs", str(path))], strict=True), 47, 1, 0, 1,
                                  tokenizer)


def learnt_count(store: PairStore, row: int) -> int:
    return int(store.row(row)[1][1:].sum())  # labels are ids[1:]


@pytest.fixture(scope="module")
def imported(tmp_path_factory, gloo):
    from hf_interop.convert import import_hf
    from train.distributed import init_model_parallel

    work = tmp_path_factory.mktemp("dpo_hf")
    shape = get_shape("tiny").shrink(tied_embeddings=False)
    policy = random_hf_model(shape, seed=21)
    policy.save_pretrained(work / "hf")
    init_model_parallel()
    overrides = ["+recipe=tiny", "stage=dpo", "model.tied_embeddings=false", "train.seq_length=64",
                 "train.micro_batch_size=2", "train.global_batch_size=4", "parallel.distributed_optimizer=false"]
    import_hf(work / "hf", work / "mcore", recipe=to_recipe(compose_config(overrides)))
    return dict(work=work, policy=policy, reference=random_hf_model(shape, seed=22), overrides=overrides)


def _hf_logps(model, batch) -> torch.Tensor:
    """[pairs, 2] float64 response log-probs from transformers' logits."""
    tokens, labels, mask = (batch[k].reshape(-1, batch[k].shape[-1]) for k in ("tokens", "labels", "loss_mask"))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=tokens).logits.double(), dim=-1)
    picked = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (picked * mask.double()).sum(-1).view(-1, 2)


def test_loss_matches_transformers(imported, tmp_path):
    from train.checkpoint import load_weights
    from train.trainer import Trainer

    pairs = [{"prompt": f"Write a function number {i} that adds {i}.", "chosen": f"def f(x):\n    return x + {i}",
              "rejected": f"def f(x):\n    return x - {i} * {i + 1}"} for i in range(4)]
    store = PairStore(_write(tmp_path / "p.jsonl", pairs), ChatTemplate(load_tokenizer()), max_ids=65)
    micro = [collate([pair_sample(store, i, 64), pair_sample(store, i + 1, 64)]) for i in (0, 2)]
    reference = torch.cat([_hf_logps(imported["reference"], m) for m in micro])
    trainer = Trainer(to_recipe(compose_config(imported["overrides"])))
    load_weights(trainer.model, imported["work"] / "mcore")
    results = {}
    for swap in (False, True):
        batches = [dict(m, ref_logps=reference[2 * k:2 * k + 2]) for k, m in enumerate(micro)]
        if swap:
            batches = [{key: value.flip(1) if key != "pair" else value for key, value in b.items()} for b in batches]
        loss, pairs = trainer.forward_backward([iter(batches)])
        assert pairs == 4
        logp = torch.cat([_hf_logps(imported["policy"], b) for b in batches])
        chosen_tokens = torch.cat([b["loss_mask"][:, 0].sum(-1) for b in batches]).double()
        expected = _dpo_reference(0.1, 0.0, 0.0, logp.tolist(), torch.cat([b["ref_logps"] for b in batches]).tolist(),
                                  chosen_tokens.tolist())
        columns = np.array(expected).T
        want = {"loss": columns[0].mean(), "rewards_chosen": columns[1].mean(), "rewards_rejected": columns[2].mean(),
                "reward_margin": columns[3].mean(), "reward_accuracy": (columns[3] > 0).mean()}
        got = dict(trainer.last_metrics, loss=loss)
        validation = trainer.evaluate([iter(batches)], 1)  # forward only, same batches: the same numbers
        assert validation == pytest.approx({f"val_{name}": value for name, value in got.items()}, rel=1e-6), validation
        print(f"swap={swap}: ours {got}, transformers {want}")
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-5, abs=1e-12), name
        results[swap] = got
    # not vacuous: rewards far from 0, the loss away from ln 2, pairs on both sides of the margin
    assert abs(results[False]["rewards_chosen"]) > 0.05 and abs(results[False]["loss"] - LN2) > 0.01
    assert 0 < results[False]["reward_accuracy"] < 1
    assert results[True]["reward_margin"] == pytest.approx(-results[False]["reward_margin"], rel=1e-6)
    assert results[True]["rewards_chosen"] == pytest.approx(results[False]["rewards_rejected"], rel=1e-6)
    assert results[True]["reward_accuracy"] == pytest.approx(1 - results[False]["reward_accuracy"])
    assert results[True]["loss"] != pytest.approx(results[False]["loss"], rel=1e-3)


WORKER = Path(__file__).parent / "equivalence" / "dpo_worker.py"
LAYOUTS = ["tp2", "tp2sp", "pp2", "pp2vpp2", "cp2", "dp2distopt"]
NEGATIVE_CONTROL = "cp2-nocpsum"


def _run(command: list[str]) -> None:
    completed = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{' '.join(command)}:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"


@pytest.fixture(scope="module")
def layout_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dpo_equivalence")
    _run([sys.executable, str(WORKER), "reference", str(out)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), "compare",
          str(out), *LAYOUTS, NEGATIVE_CONTROL])
    return {path.stem.removeprefix("result-"): json.loads(path.read_text()) for path in out.glob("result-*.json")}


def _loss_error(result: dict) -> float:
    return max(abs(a["loss"] - b["loss"]) for a, b in zip(result["history"], result["reference"]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_equal_one_rank(layout_results, layout):
    result = layout_results[layout]
    assert len(result["history"]) == 2 and _loss_error(result) <= 1e-6, result
    for ours, reference in zip(result["history"], result["reference"]):
        for name in ("rewards_chosen", "rewards_rejected", "reward_margin"):
            assert ours[name] == pytest.approx(reference[name], rel=1e-5, abs=1e-7), (name, result)
        assert ours["reward_accuracy"] == reference["reward_accuracy"]
    assert result["logp_abs_max"] <= 1e-3, result  # sums of ~40 fp32 log-probs of ~-7 each: ~1e-5 relative
    if "distopt" in layout:
        assert result["grads_checked"] == 0
    else:
        assert result["grads_checked"] > 0 and result["grad_rel_max"] <= 1e-5, result


def test_negative_control_cp_without_sequence_sum(layout_results):
    result = layout_results[NEGATIVE_CONTROL]
    assert _loss_error(result) > 1e-2, f"per-CP-rank partial sums went unnoticed: {result}"


def _readme_commands() -> list[str]:
    text = (REPO / "docs" / "recipes.md").read_text()
    section = text[text.index("## DPO"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_dpo_run(tmp_path):
    """docs/recipes.md's DPO commands as printed, run by bash in an empty directory (their relative paths land there)."""
    commands = _readme_commands()
    assert [c.split()[:2] for c in commands] == [["python", "data/make_pairs.py"], ["torchrun", "--nproc_per_node=2"]]
    for command in commands:
        command = re.sub(r"\bpython ", f"{sys.executable} ", command)
        command = command.replace("torchrun ", f"{sys.executable} -m torch.distributed.run --standalone ")
        for script in ("data/make_pairs.py", "launch/pretrain.py"):
            command = command.replace(f" {script}", f" {REPO / script}")
        if "pretrain.py" in command:
            command += " logging.wandb=false logging.plots=false logging.progress_bar=false"
        completed = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=environment(), capture_output=True,
                                   text=True, timeout=900)
        assert completed.returncode == 0, f"{command}:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    run_dir = tmp_path / "runs" / "tiny-dpo"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    first = steps[0]
    print("\n".join(f"step {r['step']}: loss {r['loss']:.6f} accuracy {r['reward_accuracy']:.3f} margin "
                    f"{r['reward_margin']:.4f}" for r in steps))
    assert first["step"] == 1 and first["loss"] == pytest.approx(LN2, abs=1e-6)
    assert first["rewards_chosen"] == pytest.approx(0, abs=1e-6)
    assert first["reward_margin"] == pytest.approx(0, abs=1e-6) and first["reward_accuracy"] == 0
    late = steps[len(steps) // 2:]
    assert np.mean([r["reward_accuracy"] for r in late]) > 0.5
    assert np.mean([r["loss"] for r in late]) < LN2 - 0.01
    assert (run_dir / "reference_logps.pt").is_file() and train_losses(run_dir)


def _dpo_run(run_dir: Path, pairs: Path, steps: int, *extra: str):
    """A 1-rank tiny DPO run through launch/pretrain.py to step `steps`, saving every step (a real checkpoint each)."""
    from tests.run_helpers import FAST, run_pretrain

    return run_pretrain(1, ["+recipe=tiny", "stage=dpo", *FAST, "parallel.distributed_optimizer=false",
                            f"data.sources=[{{name: pairs, prefix: {pairs}, weight: 1.0}}]", "data.split='100,0,0'",
                            "train.eval_interval=0",
                            f"train.train_iters={steps}", "checkpoint.save_interval=1", "checkpoint.keep_last=5",
                            "checkpoint.allow_data_order_change=true",  # each run trains on: train_iters grows
                            f"run.dir={run_dir}", "logging.wandb=false", "logging.plots=false", *extra])


def _ok(completed) -> str:
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return completed.stdout + completed.stderr


def test_reference_survives_its_starting_checkpoint_moving_on(tmp_path):
    """Real checkpoints from tiny 1-rank runs. An SFT-like source run S (here DPO from a fresh init, 1 step) is the
    starting checkpoint of DPO run D (checkpoint.load=S, a run dir: its newest step). After D has trained, S gains a
    newer step (S's `latest` moves), then S is deleted: D resumes both times from its complete reference file
    (before: refused as "other weights", then a CheckpointError). Settings that change the log-probs are refused
    with what changed; while a reference is incomplete and the run has not trained, the starting weights are
    checked: a checkpoint.load that now resolves to another step is refused, naming both."""
    from train.dpo_reference import FILE_NAME, ReferenceMismatch, attach_reference

    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": f"What is {i} + {i}?", "chosen": str(2 * i),
                                               "rejected": f"{i}{i} maybe"} for i in range(8)])
    source, dpo_run = tmp_path / "source", tmp_path / "dpo"
    _ok(_dpo_run(source, pairs, 1))
    log = _ok(_dpo_run(dpo_run, pairs, 1, f"checkpoint.load={source}"))
    assert "DPO reference: forward pass over 8 pairs" in log
    saved = torch.load(dpo_run / FILE_NAME, weights_only=True)
    first_step = source / "checkpoints" / "step_00000001"
    assert saved["done"].all() and saved["fingerprint"]["weights"]["checkpoint"] == str(first_step.resolve())

    _ok(_dpo_run(source, pairs, 2))  # the source run moves on: its `latest` now names step 2
    assert (source / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    log = _ok(_dpo_run(dpo_run, pairs, 2, f"checkpoint.load={source}"))
    assert f"computed from {first_step.resolve()}" in log and "forward pass" not in log
    shutil.rmtree(source)  # pruned / deleted
    log = _ok(_dpo_run(dpo_run, pairs, 3, f"checkpoint.load={source}"))
    assert "resumed from" in log and sorted(train_losses(dpo_run)) == [1, 2, 3]

    changed = _dpo_run(dpo_run, pairs, 4, f"checkpoint.load={source}", "model.yarn_factor=2")
    assert changed.returncode != 0
    assert "settings that change the log-probs" in changed.stderr and "model.yarn_factor: None -> 2.0" in changed.stderr

    # an incomplete reference of a run that has not trained: numerics and starting weights are checked
    recipe = to_recipe(compose_config(["+recipe=tiny", "stage=dpo", "train.seq_length=64",
                                       f"checkpoint.load={dpo_run}"]))
    store = PairStore(pairs, ChatTemplate(load_tokenizer()), max_ids=64)
    partial = tmp_path / "partial"
    partial.mkdir()
    saved["done"][-1] = False
    saved["fingerprint"]["weights"]["checkpoint"] = str((dpo_run / "checkpoints" / "step_00000002").resolve())
    torch.save(saved, partial / FILE_NAME)
    dataset, trainer = type("Dataset", (), {"store": store})(), type("Trainer", (), {"transformer_impl": "local"})()
    with pytest.raises(ReferenceMismatch, match=r"computed from .*step_00000002, and checkpoint.load now resolves "
                                                r"to .*step_00000003\. .*set checkpoint.load=.*step_00000002"):
        attach_reference(trainer, recipe, partial, False, dataset)
    recipe.precision.dtype = "bf16"
    with pytest.raises(ReferenceMismatch, match=r"precision.dtype: fp32 -> bf16"):
        attach_reference(trainer, recipe, partial, False, dataset)
    with pytest.raises(ReferenceMismatch, match="other data"):
        attach_reference(trainer, recipe, partial, False, type("Dataset", (), {"store": PairStore(
            _write(tmp_path / "fewer.jsonl", pairs.read_text().splitlines()[:4]), ChatTemplate(load_tokenizer()),
            max_ids=64)})())
    with pytest.raises(ReferenceMismatch, match="has trained"):
        recipe.precision.dtype = "fp32"
        attach_reference(trainer, recipe, partial, True, dataset)


def test_reference_pass_resumes_after_a_kill(tmp_path, gloo):
    """A pass killed after 2 of 3 global batches (saves every batch here) redoes only the third; the values equal an
    uninterrupted pass."""
    import train.dpo_reference as reference
    from train.distributed import init_model_parallel
    from train.trainer import Trainer

    init_model_parallel()
    recipe = to_recipe(compose_config(["+recipe=tiny", "stage=dpo", "train.seq_length=64", "train.micro_batch_size=2",
                                       "train.global_batch_size=4", "parallel.distributed_optimizer=false",
                                       "data.num_workers=0"]))
    pairs = [{"prompt": f"Name {i}?", "chosen": f"n{i}", "rejected": f"m{i} x"} for i in range(10)]
    store = PairStore(_write(tmp_path / "p.jsonl", pairs), ChatTemplate(load_tokenizer()), max_ids=65)
    dataset = type("Dataset", (), {"store": store})()
    trainer = Trainer(recipe)
    whole = tmp_path / "whole"
    whole.mkdir()
    reference.attach_reference(trainer, recipe, whole, False, dataset)
    expected = store.reference.copy()

    calls = []
    real_pass = trainer.forward_only

    def killed_after_two(iterators, step):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_pass(iterators, step)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    saved_every, reference.REFERENCE_SAVE_EVERY = reference.REFERENCE_SAVE_EVERY, 1
    try:
        trainer.forward_only = killed_after_two
        with pytest.raises(KeyboardInterrupt):
            reference.attach_reference(trainer, recipe, resumed, False, dataset)
        partial = torch.load(resumed / reference.FILE_NAME, weights_only=True)
        assert partial["done"].tolist() == [True] * 8 + [False] * 2
        calls.clear()
        trainer.forward_only = lambda iterators, step: calls.append(1) or real_pass(iterators, step)
        reference.attach_reference(trainer, recipe, resumed, False, dataset)
    finally:
        reference.REFERENCE_SAVE_EVERY = saved_every
    assert len(calls) == 1  # only the third global batch (pairs 8, 9 and two wrapped ones)
    assert np.allclose(store.reference, expected, rtol=1e-6) and np.abs(expected).min() > 1
