"""Hugging Face <-> megatron checkpoints (one process, no GPU needed; the logic lives in the hf_interop package).

    # HF -> megatron: files any layout loads (torch_dist reshards on load); a recipe checks the model fits it
    python launch/convert.py import --hf Qwen2.5-Coder-7B --out ckpt/7b-base +recipe=7b parallel.tp=2
    torchrun --nproc_per_node=8 launch/pretrain.py +recipe=7b checkpoint.load=ckpt/7b-base

    # megatron -> HF: a run dir (its latest step), a checkpoints/step_* dir or an import
    python launch/convert.py export --mcore runs/7b-file --out hf/7b-file --tokenizer qwen2.5

Recipe overrides (Hydra syntax, as for launch/pretrain.py) are optional: import without one matches config.json
against the released shapes; export without one reads the recipe stored in a training checkpoint or the
import's MCORE_DIR/hf/convert.json.
"""
import argparse
import logging
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    importer = commands.add_parser("import", help="HF directory -> megatron dist checkpoint")
    importer.add_argument("--hf", required=True, type=Path, help="config.json + *.safetensors (sharded or not)")
    importer.add_argument("--out", required=True, type=Path, help="new megatron checkpoint directory")
    importer.add_argument("--allow-differing", default="", metavar="FIELDS",
                          help="without a recipe: shape fields that may differ from the released shapes, "
                               "e.g. num_layers,vocab_size for shrunk checkpoints")
    exporter = commands.add_parser("export", help="megatron checkpoint -> HF directory")
    exporter.add_argument("--mcore", required=True, type=Path, help="checkpoint dir, checkpoints/ dir or run dir")
    exporter.add_argument("--out", required=True, type=Path, help="new HF directory")
    exporter.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    exporter.add_argument("--tokenizer", default="auto", choices=("auto", "none", "qwen2.5"),
                          help="auto: the imported checkpoint's tokenizer files, if any; qwen2.5: derive the "
                               "Qwen2.5 tokenizer offline; none")
    for sub in (importer, exporter):
        sub.add_argument("--debug", action="store_true", help="errors with their traceback (as HYDRA_FULL_ERROR=1)")
        sub.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), default=None,
                         help="cast the weights (default: keep the source dtype)")
        sub.add_argument("overrides", nargs="*", help="recipe overrides, e.g. +recipe=7b model.num_layers=4")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hf_interop.files import HFDirectoryError
    from hf_interop.names import CheckpointMismatchError
    from recipes.compose import compose_config, to_recipe
    from recipes.validate import RecipeError
    from hf_interop import convert as hf_convert
    from train.checkpoint import CheckpointError

    try:
        recipe = to_recipe(compose_config(args.overrides)) if args.overrides else None
        if args.command == "import":
            allowed = tuple(field for field in args.allow_differing.split(",") if field)
            hf_convert.import_hf(args.hf, args.out, recipe=recipe, allow_differing=allowed, dtype=args.dtype)
        else:
            hf_convert.export_hf(args.mcore, args.out, recipe=recipe, dtype=args.dtype,
                                 max_shard_size=args.max_shard_size, tokenizer=args.tokenizer)
    except (CheckpointMismatchError, CheckpointError, HFDirectoryError, hf_convert.ConversionError, RecipeError,
            HydraException, OmegaConfBaseException) as error:
        if args.debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # dist checkpointing's writer starts a multiprocessing Manager: guard the entry
    sys.exit(main())
