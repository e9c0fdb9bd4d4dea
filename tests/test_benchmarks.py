"""benchmarks/time_to_quality.py: a recipe trains the steps it chooses, and a failed training stops the others."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from types import ModuleType

import pytest

from .conftest import ROOT


@pytest.fixture(scope="module")
def time_to_quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("time_to_quality", ROOT / "benchmarks" / "time_to_quality.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("recipe", "own_steps"),
    [
        (["experiment=cpu"], True),  # its config sets 700 steps: the cosine must decay over those, not 10^6
        (["trainer.max_steps=5"], True),
        (["data.image_size=128", "init=wave"], False),
    ],
)
def test_a_recipe_keeps_the_step_count_its_configs_choose(time_to_quality, recipe, own_steps):
    assert time_to_quality.sets_max_steps("starry_night", recipe) is own_steps
    command = time_to_quality.training_command(
        "starry_night", " ".join(recipe), argparse.Namespace(data=ROOT, budgets=[1, 2]), ROOT
    )
    assert ("trainer.max_steps=1000000" in command) is not own_steps


def test_a_failed_training_stops_the_others_running_beside_it(time_to_quality, tmp_path):
    def job(name: str, code: str) -> tuple[str, subprocess.Popen, object]:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed by wait)
        return name, subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT), log

    sleeper = job("long", "import time; time.sleep(120)")
    running = [sleeper, job("broken", "raise SystemExit(1)")]
    start = time.monotonic()
    with pytest.raises(SystemExit, match="training broken failed"):
        time_to_quality.wait(running, start)
    assert time.monotonic() - start < 30  # not after the other one's two minutes
    assert sleeper[1].wait(timeout=10) != 0  # terminated
