"""Checking what users type: one rule per key, shared by every command, so a bad value is one clear line.

A rule takes ``(key, value)`` and returns the value to use (``overwrite=no`` becomes False) or raises a
:class:`UserError`. Booleans accept only real booleans and the usual spellings: any other string would be
"truthy" in Python, and ``overwrite=no`` must never overwrite anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fast_style.errors import UserError

Rule = Callable[[str, Any], Any]
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
_ABSENT = object()


def invalid(key: str, value: Any, expected: str) -> UserError:
    return UserError(f"{key}={value!r} is not {expected}; fix it on the command line or in the config")


def boolean(key: str, value: Any) -> bool:
    """True/False, or one of the usual spellings (yes/no, on/off, 1/0, any case); nothing else."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise invalid(key, value, "true or false")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int subclass: true is not 1 here


def integer(low: int | None = None, high: int | None = None, null: bool = False) -> Rule:
    """An integer in [low, high] (either bound optional), or null when ``null``."""

    def rule(key: str, value: Any) -> int | None:
        if value is None and null:
            return None
        if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = f" from {low}" * (low is not None) + f" to {high}" * (high is not None)
            raise invalid(key, value, f"an integer{bounds}" + " or null" * null)
        return value

    return rule


def number(low: float | None = None, high: float | None = None, positive: bool = False, null: bool = False) -> Rule:
    """A finite number in [low, high] (or > 0 when ``positive``), or null when ``null``."""

    def rule(key: str, value: Any) -> float | int | None:
        if value is None and null:
            return None
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < float("inf")
        too_low = finite and ((low is not None and value < low) or (positive and value <= 0))
        if not finite or too_low or (high is not None and value > high):
            bounds = " > 0" * positive + f" from {low}" * (low is not None) + f" to {high}" * (high is not None)
            raise invalid(key, value, f"a number{bounds}" + " or null" * null)
        return value

    return rule


def choice(*options: Any, null: bool = False) -> Rule:
    """One of ``options`` (compared as given: 32 and "32" are different options)."""

    def rule(key: str, value: Any) -> Any:
        if (value is None and null) or any(value == o and type(value) is type(o) for o in options):
            return value
        raise invalid(key, value, "one of " + ", ".join(str(o) for o in options) + ", null" * null)

    return rule


def matches(pattern: str, description: str) -> Rule:
    """A string matching ``pattern`` in full."""

    def rule(key: str, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise invalid(key, value, description)
        return value

    return rule


def text(null: bool = False) -> Rule:
    """A string (a number typed where a name belongs is almost always a mistake), or null when ``null``."""

    def rule(key: str, value: Any) -> str | None:
        if value is None and null:
            return None
        if not isinstance(value, str):
            raise invalid(key, value, "a string" + " or null" * null)
        return value

    return rule


DEVICE = matches(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps")


def check_values(cfg: DictConfig, rules: Mapping[str, Rule]) -> DictConfig:
    """Apply ``rules`` to ``cfg`` in place (keys absent from ``cfg`` are skipped); returns ``cfg``."""
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        checked = rule(key, value)
        if checked is not value:
            OmegaConf.update(cfg, key, checked, merge=False)
    return cfg


QUOTING_HINT = (
    "Hydra reads , = [ ] { } ( ) spaces and non-ASCII letters such as é as syntax: quote such a value for Hydra "
    "inside the shell's quotes, e.g. 'input=\"photos/café, 2024.jpg\"'"
)


def check_overrides(argv: Iterable[str], config_dir: Path, config_name: str, multirun: bool = False) -> None:
    """Parse and apply ``key=value`` overrides to ``config_name`` before Hydra runs, so that a value Hydra cannot
    parse or a key the config does not have is one line (with a hint) instead of Hydra's multi-line error.
    Hydra's own flags (``-m``, ``--cfg``, ``hydra.*``) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [arg for arg in argv if not arg.startswith("-") and not arg.lstrip("+~").startswith("hydra.")]
    parser = OverridesParser.create()
    sweeps = False
    for arg in overrides:
        try:
            (parsed,) = parser.parse_overrides([arg])
        except OverrideParseException as e:
            raise UserError(f"could not read the argument {arg} ({str(e).splitlines()[0]}); {QUOTING_HINT}") from e
        if parsed.is_sweep_override():
            if not multirun:
                raise UserError(f"{arg} is a list of values to sweep over (add -m for a sweep); {QUOTING_HINT}")
            sweeps = True
    if sweeps:
        return  # each job of a sweep is checked when it runs
    if GlobalHydra.instance().is_initialized():
        return  # inside a running Hydra app (tests): its config was composed already
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
        if unknown := re.match(r"Could not override '([^']+)'", message):
            message = f"{config_name} has no option {unknown.group(1)!r}; check its spelling against the README"
        raise UserError(message) from e
    finally:
        GlobalHydra.instance().clear()
