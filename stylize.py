"""Stylize photos with trained per-style models: ``python stylize.py style=starry_night input=photo.jpg``.

See README.md and configs/stylize.yaml for every option.
"""

import sys

import hydra
from omegaconf import DictConfig, ListConfig

from fast_style.errors import exit_on_user_error
from fast_style.optimize import check_method, optimize_argv, optimize_files
from fast_style.options import check_overrides, check_values
from fast_style.paths import CONFIG_DIR
from fast_style.stylize_files import STYLIZE_RULES, stylize_files
from fast_style.video import VideoSettings


@hydra.main(version_base="1.3", config_path="configs/stylize", config_name="stylize")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        check_values(cfg, STYLIZE_RULES)
        if check_method(cfg) == "optimize":
            sys.exit(1 if optimize_files(cfg) else 0)
        styles = list(cfg.style) if isinstance(cfg.style, ListConfig) else [str(cfg.style)]
        failed = stylize_files(
            styles,
            str(cfg.input),
            str(cfg.output),
            device=cfg.device,
            precision=cfg.precision,
            max_size=cfg.max_size,
            preserve_color=cfg.preserve_color,
            strength=cfg.strength,
            overwrite=cfg.overwrite,
            fiftyone_dataset=cfg.fiftyone.dataset,
            tile=cfg.tile,
            torch_compile=cfg.compile,
            video=VideoSettings(**cfg.video),
            backend=cfg.backend,
            batch_size=cfg.batch_size,
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    sys.argv = optimize_argv(sys.argv)  # style.image=, loss=... for method=optimize
    with exit_on_user_error():
        check_overrides(sys.argv[1:], CONFIG_DIR / "stylize", "stylize")
    main()
