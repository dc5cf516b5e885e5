"""The stage registry, its objectives and the inference build, in one process (a 1-rank gloo world).

- Every built-in stage resolves to its objective, and the micro-batch megatron's schedule is told about follows
  from the stage's spec: file/repo/long `micro` sequences of seq_length, dpo 2 x micro (a sample is a pair), packed
  sft one row of micro x seq_length, unpacked sft micro rows again.
- build_inference_model builds the recipe's model with neither DDP nor an optimizer (both patched to fail here),
  and loading a Trainer's saved weights into it gives the Trainer model's logits exactly (fp32). Negative
  control: before the load the logits differ (the Trainer's weights were perturbed after init).
"""
from __future__ import annotations

import pytest
import torch

from recipes.compose import compose_config, to_recipe
from recipes.stages import BUILTIN_STAGES, STAGE_SPECS

ONE_RANK = ["+recipe=tiny", "parallel.tp=1", "parallel.pp=1", "parallel.cp=1", "parallel.distributed_optimizer=false",
            "train.micro_batch_size=2", "train.global_batch_size=2", "train.seq_length=64", "model.vocab_size=1024"]


def recipe(*overrides):
    return to_recipe(compose_config([*ONE_RANK, *overrides]), world_size=1)


@pytest.mark.parametrize("stage,extra,shape", [
    ("file", [], (64, 2)), ("repo", [], (64, 2)), ("long", [], (64, 2)), ("dpo", [], (64, 4)),
    ("sft", ["data.packing=true"], (128, 1)), ("sft", ["data.packing=false"], (64, 2)),
])
def test_schedule_shape_follows_the_stage(stage, extra, shape):
    from train.objectives import objective_for

    objective = objective_for(recipe(f"stage={stage}", *extra))
    assert objective.spec is STAGE_SPECS[stage] and objective.schedule_shape() == shape
    assert set(BUILTIN_STAGES) == {"file", "repo", "long", "sft", "dpo"} <= set(STAGE_SPECS)


def test_inference_build_has_no_optimizer_and_loads_training_weights(gloo, tmp_path, monkeypatch):
    import train.trainer
    from train.checkpoint import load_weights, save_weights
    from train.trainer import Trainer, build_inference_model

    trained = Trainer(fp32 := recipe("precision.dtype=fp32"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trained.model[0].module.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    save_weights(trained.model, tmp_path / "weights", rope_base=fp32.model_shape().rope_theta)
    tokens = torch.randint(0, 1024, (1, 16), generator=generator)
    positions = torch.arange(16).unsqueeze(0)
    expected = trained.model[0].module(tokens, positions, None).detach()

    def refused(*args, **kwargs):
        raise AssertionError("the inference build made training state")

    monkeypatch.setattr(train.trainer, "get_megatron_optimizer", refused)
    monkeypatch.setattr(train.trainer, "DistributedDataParallel", refused)
    chunks = build_inference_model(fp32)
    assert len(chunks) == 1 and not hasattr(next(chunks[0].parameters()), "main_grad")
    with torch.no_grad():
        assert not torch.equal(chunks[0](tokens, positions, None), expected)  # negative control: not loaded yet
        load_weights(chunks, tmp_path / "weights")
        assert torch.equal(chunks[0](tokens, positions, None), expected)
