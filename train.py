"""Train a style network: ``python train.py style=starry_night data.root=/data/coco/train2017``.

See README.md and configs/train.yaml for every option.
"""

import sys

import hydra
from omegaconf import DictConfig

from fast_style.config import resolve_style_argument
from fast_style.errors import exit_on_user_error
from fast_style.options import check_overrides
from fast_style.paths import CONFIG_DIR
from fast_style.training import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        train(cfg)


if __name__ == "__main__":
    with exit_on_user_error():
        sys.argv = resolve_style_argument(sys.argv)
        check_overrides(sys.argv[1:], CONFIG_DIR, "train", multirun=bool({"-m", "--multirun"} & set(sys.argv)))
    main()
