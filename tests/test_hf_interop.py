"""HF <-> megatron conversion in one process (import, export, TP1 logits, errors).

Every released architecture: transformers' Qwen2ForCausalLM with random weights (random biases and norm weights,
tests/hf_reference.py) is saved by transformers itself (sharded with an index, or one file), imported through
hf_interop.convert, loaded back from the dist checkpoint, compared on logits with transformers in fp32 (limits of
docs/testing.md: <= 1e-4 absolute and <= 1e-5 of the largest logit), exported, and the exported tensors must
equal the source files bit for bit (same names, dtypes, values) with a byte-identical config.json.
Depth is shrunk (2 layers; 1 for the 7B/14B/32B widths, whose single layer is 0.25-0.49 B parameters) and the
vocab to 1024/2048 rows. The wide three go through bf16 files, as released: weights rounded to bf16, the
bf16 checkpoint loaded into an fp32 model (exact) for the logits, the export cast back to bf16.
One full-width 0.5B (24 layers, released-style config.json and one bf16 model.safetensors) is round-tripped too.
Measured: logits max|diff| 1.8e-6 to 3.3e-6, i.e. 6.2e-7 to 8.9e-7 of the largest logit (full 0.5B: 2.8e-6 /
8.9e-7); every exported tensor and config.json identical. Cost on 2 cores: ~80 s, most of it file I/O.
"""
from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from megatron.core import dist_checkpointing

from hf_interop.files import HFDirectoryError, HFWeights, write_hf_weights
from hf_interop.names import (
    CheckpointMismatchError,
    hf_tensor_shapes,
    megatron_to_hf,
    shape_from_hf_config,
    yarn_from_hf_config,
)
from model.families import RELEASED, get_shape
from model.shapes import YarnScaling
from recipes.compose import compose_config, to_recipe
from tests.hf_reference import assert_logits_match, logits_difference, random_hf_model, random_tokens
from train.checkpoint import CheckpointError
from train.distributed import init_model_parallel
from hf_interop.convert import (
    ConversionError,
    export_hf,
    hf_config_dict,
    hf_state_dict,
    import_hf,
    load_model,
    save_hf,
)

REPO = Path(__file__).resolve().parents[1]
SHRUNK = ("num_layers", "vocab_size")
WIDE = ("7b", "14b", "32b")
SOURCE_SHARD = {"0.5b": "40MB", "1.5b": "50GB", "3b": "300MB", "7b": "200MB", "14b": "50GB", "32b": "400MB"}


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    init_model_parallel()


def shrunk(name: str, **overrides):
    shape = get_shape(name)
    return shape.shrink(num_layers=1 if name in WIDE else 2,
                        vocab_size=1024 if shape.tied_embeddings else 2048, **overrides)


def round_to_bf16_(model) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16))


def save_with_transformers(hf, directory, dtype, max_shard_size):
    """The source checkpoint as transformers writes it, in `dtype`. Casting the model casts RoPE's inv_freq
    buffer too (bf16 frequencies move logits by ~1e-2), so take the reference logits before this."""
    hf.to(dtype)
    hf.save_pretrained(directory, max_shard_size=max_shard_size)


def assert_same_tensors(source_dir, exported_dir):
    source, exported = HFWeights(source_dir), HFWeights(exported_dir)
    assert sorted(exported) == sorted(source)
    differing = [n for n in source if source[n].dtype != exported[n].dtype or not torch.equal(source[n], exported[n])]
    assert not differing, f"changed by the round trip: {differing[:5]}"


def megatron_logits(model, tokens, positions):
    with torch.no_grad():
        return model(tokens, positions, None)


@pytest.mark.parametrize("name", RELEASED)
def test_round_trip_is_bit_identical_and_the_import_matches_transformers(name, tmp_path):
    shape = shrunk(name)
    dtype = torch.bfloat16 if name in WIDE else torch.float32
    hf = random_hf_model(shape)
    if dtype == torch.bfloat16:
        round_to_bf16_(hf)
    tokens, positions = random_tokens(shape, batch=2, seq=24)
    with torch.no_grad():
        reference = hf(input_ids=tokens, position_ids=positions).logits
    save_with_transformers(hf, tmp_path / "hf", dtype, SOURCE_SHARD[name])
    del hf

    imported = import_hf(tmp_path / "hf", tmp_path / "mcore", allow_differing=SHRUNK)
    assert imported.dtype == dtype and imported.shape.tied_embeddings == shape.tied_embeddings
    model, source = load_model(tmp_path / "mcore", dtype="fp32")  # bf16 files load exactly into fp32
    ours = megatron_logits(model, tokens, positions)
    print(f"{name}: max|diff|, relative = {logits_difference(ours, reference)}")
    assert_logits_match(ours, reference, f"{name} imported")

    save_hf(model, source, tmp_path / "out", dtype=dtype, max_shard_size="100MB")
    assert_same_tensors(tmp_path / "hf", tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_bytes() == (tmp_path / "hf" / "config.json").read_bytes()
    if shape.tied_embeddings:
        assert "lm_head.weight" not in HFWeights(tmp_path / "out")


# Qwen/Qwen2.5-Coder-0.5B's config.json and generation_config.json as released (transformers 4.4x layout:
# top-level rope_theta, torch_dtype), so the reader is tested on the real format, not only on transformers 5's.
RELEASED_0_5B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
RELEASED_0_5B_GENERATION = {"bos_token_id": 151643, "do_sample": False, "eos_token_id": 151643,
                            "max_new_tokens": 2048, "transformers_version": "4.45.0.dev0"}


def test_full_width_0_5b_round_trip_and_logits(tmp_path):
    """24 layers, 151,936 rows, bf16 in one model.safetensors: the released layout (~0.99 GB)."""
    shape = get_shape("0.5b")
    hf = random_hf_model(shape)
    round_to_bf16_(hf)
    source = tmp_path / "Qwen2.5-Coder-0.5B"
    source.mkdir()
    files = {n: t.to(torch.bfloat16) for n, t in hf.state_dict().items() if n != "lm_head.weight"}  # tied
    write_hf_weights(files, source, max_shard_size="50GB")
    (source / "config.json").write_text(json.dumps(RELEASED_0_5B_CONFIG, indent=2))
    (source / "generation_config.json").write_text(json.dumps(RELEASED_0_5B_GENERATION, indent=2))
    del files

    imported = import_hf(source, tmp_path / "mcore")
    assert (imported.shape, imported.dtype, imported.tensors) == (shape, torch.bfloat16, 24 * 12 + 2)
    tokens, positions = random_tokens(shape, batch=1, seq=16)
    with torch.no_grad():
        reference = hf(input_ids=tokens, position_ids=positions).logits
    del hf
    model, _ = load_model(tmp_path / "mcore", dtype="fp32")
    ours = megatron_logits(model, tokens, positions)
    print(f"0.5b full width: max|diff|, relative = {logits_difference(ours, reference)}")
    assert_logits_match(ours, reference, "0.5B full width")
    del model
    export_hf(tmp_path / "mcore", tmp_path / "out")  # dtype kept: bf16
    assert_same_tensors(source, tmp_path / "out")
    for name in ("config.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes(), name


def test_checkpoint_uses_the_te_names_so_both_layer_specs_load_it(tmp_path):
    """megatron's local spec stores its norms under the TE spec's keys; a TE model's state dict exports too."""
    shape = shrunk("1.5b")
    write_source(tmp_path / "hf", shape)
    import_hf(tmp_path / "hf", tmp_path / "mcore", allow_differing=SHRUNK)
    keys = set(dist_checkpointing.load_tensors_metadata(str(tmp_path / "mcore")))
    assert {"decoder.layers.self_attention.linear_qkv.layer_norm_weight",
            "decoder.layers.mlp.linear_fc1.layer_norm_weight"} <= keys
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in keys)

    model, _ = load_model(tmp_path / "mcore")
    local = model.state_dict()
    te_state = {k.replace(".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight")
                 .replace(".pre_mlp_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"): v
                for k, v in local.items()}
    from_te, from_local = hf_state_dict(te_state, shape), megatron_to_hf(local, shape)
    assert from_te.keys() == from_local.keys() and all(torch.equal(from_te[k], from_local[k]) for k in from_te)


def test_config_is_generated_when_the_import_files_are_gone(tmp_path):
    """A checkpoint without MCORE_DIR/hf/: config.json from the recipe, with the legacy rope keys, YaRN, and the eos
    of its stage (an SFT checkpoint stops on <|im_end|> like the released Instruct models; a base one on
    <|endoftext|>)."""
    from transformers import AutoConfig, AutoTokenizer

    shape = shrunk("0.5b")
    write_source(tmp_path / "hf", shape)
    import_hf(tmp_path / "hf", tmp_path / "mcore", allow_differing=SHRUNK)
    shutil.rmtree(tmp_path / "mcore" / "hf")
    with pytest.raises(ConversionError, match="does not record its model .* pass the recipe"):
        export_hf(tmp_path / "mcore", tmp_path / "out")
    recipe = to_recipe(compose_config(["+recipe=0.5b", "stage=sft", "model.num_layers=2", "model.vocab_size=1024",
                                       "model.yarn_factor=4.0"]))
    export_hf(tmp_path / "mcore", tmp_path / "out", recipe=recipe, tokenizer="qwen2.5")
    assert_same_tensors(tmp_path / "hf", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert shape_from_hf_config(config, allow_differing=SHRUNK) == shape
    assert yarn_from_hf_config(config) == YarnScaling(4.0, 32_768)
    assert (config["rope_theta"], config["rope_scaling"]["type"], config["torch_dtype"]) == (1e6, "yarn", "float32")
    loaded = AutoConfig.from_pretrained(tmp_path / "out")
    assert (loaded.tie_word_embeddings, loaded.rms_norm_eps, loaded.max_position_embeddings) == (True, 1e-6, 131_072)
    assert {k: loaded.rope_parameters[k] for k in ("rope_type", "factor", "rope_theta")} == {
        "rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]  # ChatML turns end with <|im_end|>
    assert (config["eos_token_id"], AutoTokenizer.from_pretrained(tmp_path / "out").eos_token) == (151645, "<|im_end|>")

    base = to_recipe(compose_config(["+recipe=0.5b", "model.num_layers=2", "model.vocab_size=1024",
                                     "model.yarn_factor=4.0"]))  # negative control: a pretraining checkpoint
    export_hf(tmp_path / "mcore", tmp_path / "base", recipe=base, tokenizer="qwen2.5")
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    generation = json.loads((tmp_path / "base" / "generation_config.json").read_text())
    assert (config["eos_token_id"], generation["eos_token_id"]) == (151643, 151643)
    assert AutoTokenizer.from_pretrained(tmp_path / "base").eos_token == "<|endoftext|>"


# ---------------------------------------------------------------------------------------------- errors
def write_source(directory, shape, drop=(), reshape=None, dtype=torch.float32):
    """A minimal HF directory written without transformers (for error cases): random tensors, config.json."""
    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(dims, generator=generator).to(dtype)
               for n, dims in hf_tensor_shapes(shape).items() if n not in drop}
    if reshape:
        tensors[reshape] = torch.zeros(3, 3, dtype=dtype)
    write_hf_weights(tensors, directory)
    (directory / "config.json").write_text(json.dumps(hf_config_dict(shape, None, dtype)))
    return tensors


def test_directories_that_are_not_checkpoints_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HFDirectoryError, match="no config.json, so it is not a Hugging Face checkpoint"):
        import_hf(tmp_path / "empty", tmp_path / "a")
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "config.json").write_text(json.dumps(hf_config_dict(shrunk("0.5b"), None,
                                                                                    torch.float32)))
    with pytest.raises(HFDirectoryError, match=r"no weights: looked for model.safetensors.index.json"):
        import_hf(tmp_path / "only_config", tmp_path / "b", allow_differing=SHRUNK)
    with pytest.raises(CheckpointError, match="not a megatron distributed checkpoint"):
        export_hf(tmp_path / "empty", tmp_path / "c")
    with pytest.raises(ConversionError, match="is a Hugging Face checkpoint .* use `convert.py import`"):
        export_hf(tmp_path / "only_config", tmp_path / "d")


def test_config_matching_no_shape_names_the_nearest_and_the_fields(tmp_path):
    write_source(tmp_path / "hf", shrunk("0.5b", hidden_size=512, num_attention_heads=8, head_dim=64))
    with pytest.raises(CheckpointMismatchError, match=r"nearest is 0.5b.*hidden_size: 896 in 0.5b vs 512"):
        import_hf(tmp_path / "hf", tmp_path / "out", allow_differing=SHRUNK)
    recipe = to_recipe(compose_config(["+recipe=1.5b", "model.num_layers=2", "model.vocab_size=1024"]))
    with pytest.raises(CheckpointMismatchError, match=r"not the recipe's model .*hidden_size: 512 in config.json"):
        import_hf(tmp_path / "hf", tmp_path / "out", recipe=recipe)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    shape = shrunk("7b")
    write_source(tmp_path / "missing", shape, drop=("model.layers.0.self_attn.k_proj.bias", "lm_head.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"missing 2 tensor\(s\): lm_head.weight, "
                                                      r"model.layers.0.self_attn.k_proj.bias"):
        import_hf(tmp_path / "missing", tmp_path / "a", allow_differing=SHRUNK)
    write_source(tmp_path / "wrong", shape, reshape="model.layers.0.mlp.down_proj.weight")
    with pytest.raises(CheckpointMismatchError, match=r"model.layers.0.mlp.down_proj.weight \(3, 3\) "
                                                      r"\(expected \(3584, 18944\)\)"):
        import_hf(tmp_path / "wrong", tmp_path / "b", allow_differing=SHRUNK)


def test_broken_index_and_pickled_code_are_refused(tmp_path):
    shape = shrunk("0.5b")
    tensors = write_source(tmp_path / "hf", shape)
    index = {"weight_map": {n: "model-00001-of-00002.safetensors" for n in tensors}}
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HFDirectoryError, match="lists shard file.*model-00001-of-00002.safetensors"):
        import_hf(tmp_path / "hf", tmp_path / "a", allow_differing=SHRUNK)

    class Payload:  # what a malicious pytorch_model.bin would carry instead of (only) tensors
        def __reduce__(self):
            return (print, ("pickled code ran",))

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_bytes((tmp_path / "hf" / "config.json").read_bytes())
    torch.save({**tensors, "extra": Payload()}, bin_dir / "pytorch_model.bin", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(HFDirectoryError, match="pickled objects other than tensors"):
        import_hf(bin_dir, tmp_path / "b", allow_differing=SHRUNK)


def test_pytorch_bin_checkpoints_load_with_weights_only(tmp_path):
    shape = shrunk("0.5b")
    tensors = write_source(tmp_path / "safe", shape)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_bytes((tmp_path / "safe" / "config.json").read_bytes())
    torch.save(tensors, tmp_path / "bin" / "pytorch_model.bin")
    import_hf(tmp_path / "bin", tmp_path / "mcore", allow_differing=SHRUNK)
    export_hf(tmp_path / "mcore", tmp_path / "out")
    assert_same_tensors(tmp_path / "safe", tmp_path / "out")


def test_export_with_the_wrong_shape_names_the_tensors(tmp_path):
    write_source(tmp_path / "hf", shrunk("0.5b"))
    import_hf(tmp_path / "hf", tmp_path / "mcore", allow_differing=SHRUNK)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ConversionError, match="exists and is not empty"):
        export_hf(tmp_path / "mcore", tmp_path / "taken")
    recipe = to_recipe(compose_config(["+recipe=0.5b", "model.num_layers=4", "model.vocab_size=1024"]))
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: decoder.layers.* \(2, .*needs \(4, "):
        export_hf(tmp_path / "mcore", tmp_path / "out", recipe=recipe)
    untied = to_recipe(compose_config(["+recipe=0.5b", "model.num_layers=2", "model.vocab_size=1024",
                                       "model.tied_embeddings=false"]))
    with pytest.raises(CheckpointMismatchError, match="missing: output_layer.weight"):
        export_hf(tmp_path / "mcore", tmp_path / "out", recipe=untied)


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("convert_cli", REPO / "launch" / "convert.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    (tmp_path / "empty").mkdir()
    assert cli.main(["import", "--hf", str(tmp_path / "empty"), "--out", str(tmp_path / "a")]) == 2
    assert "error: " in capsys.readouterr().err
    assert cli.main(["export", "--mcore", str(tmp_path / "empty"), "--out", str(tmp_path / "b"), "+recipe=0.5b",
                     "parallel.tp=3"]) == 2  # the recipe is checked first: 14 heads do not split over 3 ranks
    assert "tp-heads" in capsys.readouterr().err
