"""Hydra glue: config resolvers, the style-name shortcut, and one-line checks of user-set values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fast_style.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


def gpu_amp_precision() -> str:
    """bf16 mixed precision where the GPU supports it (Ampere and newer), else fp16 with loss scaling."""
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def cpu_info() -> str:
    """The text of /proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX). Elsewhere PyTorch emulates bf16
    and a training step gets tens of times slower than fp32 (measured on an AVX2-only AMD EPYC)."""
    flags = cpu_info().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def parse_key_values(defaults: dict[str, Any], argv: list[str]) -> DictConfig:
    """``key=value`` command-line arguments over ``defaults`` (for the ``python -m fast_style.*`` tools)."""
    try:
        return OmegaConf.merge(defaults, OmegaConf.from_dotlist(argv))  # type: ignore[return-value]
    except Exception as e:
        raise UserError(f"could not read the arguments {argv} ({e}); use key=value pairs") from e


def cpu_precision() -> str:
    """Lightning precision for CPU training: bf16 autocast where the CPU does bf16 natively, else fp32."""
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


OmegaConf.register_new_resolver("cpu_precision", cpu_precision, replace=True)
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
OmegaConf.register_new_resolver("gpu_amp_precision", gpu_amp_precision, replace=True)

# Keys users set on the command line, with the Python types they must have.
EXPECTED_TYPES: dict[str, tuple[type, ...]] = {
    "data.image_size": (int,),
    "data.batch_size": (int,),
    "data.num_workers": (int,),
    "trainer.max_steps": (int,),
    "trainer.precision": (str, int),
    "loss.content_weight": (int, float),
    "loss.style_weight": (int, float),
    "loss.tv_weight": (int, float),
    "model.norm": (str,),
    "model.upsample": (str,),
    "model.width": (int, float),
    "style.size": (int, type(None)),
    "export.overwrite": (bool,),
    "seed": (int, type(None)),
}
_ABSENT = object()
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


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
    """One clear line for a missing mandatory value or a value of the wrong type."""
    for key in ("data.root", "style.image"):
        node, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(OmegaConf.select(cfg, node), leaf):
            raise UserError(f"{key} is not set; add {key}=PATH to the command line")
    for key, types in EXPECTED_TYPES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        # bool is an int subclass: never accept true/false for a number.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(TYPE_NAMES[t] for t in types)
            raise UserError(f"{key}={value!r} is not {expected}; fix it on the command line or in the config")


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
