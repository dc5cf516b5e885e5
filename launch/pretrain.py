"""Pretraining entry: `torchrun --nproc_per_node=N launch/pretrain.py +recipe=SIZE [stage=...] [overrides]`.

Every rank composes the same Hydra config (recipes/), turns it into the typed Recipe and hands it to
train.loop.run. Examples:
    torchrun --nproc_per_node=2 launch/pretrain.py +recipe=tiny
    torchrun --nproc_per_node=8 launch/pretrain.py +recipe=7b stage=repo train.train_iters=1000
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from recipes import schema  # noqa: E402

schema.register()


@hydra.main(config_path="../recipes", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from train.loop import run

    run(OmegaConf.to_object(cfg), OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
