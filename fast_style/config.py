"""Hydra glue: config resolvers, the style-name shortcut, and one-line checks of user-set values."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fast_style.devices import cpu_has_fast_bf16
from fast_style.errors import UserError
from fast_style.options import Rule, boolean, check_values, choice, integer, number, text
from fast_style.paths import CONFIG_DIR, PROJECT_ROOT


def gpu_amp_precision() -> str:
    """bf16 mixed precision where the GPU supports it (Ampere and newer), else fp16 with loss scaling."""
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def parse_key_values(defaults: dict[str, Any], argv: list[str], rules: Mapping[str, Rule] | None = None) -> DictConfig:
    """``key=value`` command-line arguments over ``defaults`` (for the ``python -m fast_style.*`` tools): an unknown
    key is an error (a typo must not silently leave the default in force), and ``rules`` check the values."""
    base = OmegaConf.create(defaults)
    OmegaConf.set_struct(base, True)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not read the arguments {' '.join(argv)} ({reason}); use key=value pairs with the keys "
            + ", ".join(defaults)
        ) from e
    assert isinstance(cfg, DictConfig)
    return check_values(cfg, rules or {})


def cpu_precision() -> str:
    """Lightning precision for CPU training: bf16 autocast where the CPU does bf16 natively, else fp32."""
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


OmegaConf.register_new_resolver("cpu_precision", cpu_precision, replace=True)
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver("gpu_amp_precision", gpu_amp_precision, replace=True)

# Lightning's precision settings (trainer.precision), as it accepts them.
LIGHTNING_PRECISIONS = (
    "32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true", "64", 64
)  # fmt: skip
# Keys users set on the command line, and what their values must be.
TRAIN_RULES: dict[str, Rule] = {
    "data.image_size": integer(16),
    "data.batch_size": integer(1),
    "data.num_workers": integer(0),
    "trainer.max_steps": integer(1),
    "trainer.precision": choice(*LIGHTNING_PRECISIONS),
    "trainer.deterministic": boolean,
    "optimizer.lr": number(positive=True),
    "loss.content_weight": number(0),
    "loss.style_weight": number(0),
    "loss.tv_weight": number(0),
    "loss.temporal_weight": number(0),
    "model.norm": text(),
    "model.upsample": text(),
    "model.width": number(positive=True),
    "style.size": integer(16, null=True),
    "export.overwrite": boolean,
    "channels_last": boolean,
    "seed": integer(null=True),
}


def style_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in (config_dir / "style").glob("*.yaml") if p.stem != "custom")


def resolve_style_argument(argv: list[str], config_dir: Path = CONFIG_DIR) -> list[str]:
    """Let ``style=NAME style.image=PATH`` train a new style without writing a config file first.

    A known NAME selects ``configs/style/NAME.yaml``. An unknown NAME with ``style.image`` becomes
    ``style=custom style.name=NAME``; without ``style.image`` it is an error that lists the styles.
    """
    known = style_names(config_dir)
    has_image = any(arg.startswith("style.image=") for arg in argv)
    out = []
    for arg in argv:
        if not arg.startswith("style="):
            out.append(arg)
            continue
        names = arg.removeprefix("style=").split(",")
        unknown = [n for n in names if n not in known and n != "custom"]
        if not unknown:
            out.append(arg)
        elif len(names) == 1 and has_image:
            out += ["style=custom", f"style.name={names[0]}"]
        else:
            raise UserError(
                f"unknown style {unknown[0]!r}: choose one of {', '.join(known)}, "
                f"or train a new one with style={unknown[0]} style.image=PATH"
            )
    return out


def check_config(cfg: DictConfig) -> None:
    """One clear line for a missing mandatory value or a value of the wrong type or range (booleans normalised)."""
    for key in ("data.root", "style.image"):
        node, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(OmegaConf.select(cfg, node), leaf):
            raise UserError(f"{key} is not set; add {key}=PATH to the command line")
    check_values(cfg, TRAIN_RULES)


def compose_train_config(overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    """``configs/train.yaml`` composed with ``overrides`` (``style=NAME``, ``style.image=...``, ``loss=gatys``,
    ``loss.style_weight=5`` ...) exactly as train.py would see them: a style's image and its own loss weights.

    Works inside a running Hydra app (stylize.py): its global state is set aside and restored.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    overrides = resolve_style_argument(list(overrides), config_dir)
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            return compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(f"could not apply {' '.join(overrides)} to the training config: {first_line}") from e
    finally:
        restore_gh_from_backup(backup)
