"""Shared helpers: real photos from the repo's data/, and running train.py as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"
STYLES = ROOT / "data" / "styles"


def photo(name: str | None = None, size: int = 64) -> torch.Tensor:
    """A real photo from data/samples as a (1, 3, size, size) tensor in [0, 1]."""
    path = SAMPLES / name if name else sorted(SAMPLES.glob("*.jpg"))[0]
    image = v2.functional.to_image(Image.open(path).convert("RGB"))
    image = v2.functional.center_crop(v2.functional.resize(image, size, antialias=True), size)
    return v2.functional.to_dtype(image, torch.float32, scale=True).unsqueeze(0)


def run_train(cwd: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python train.py <overrides>`` in ``cwd`` (so logs/ and checkpoints/ land there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


# Tiny but real: real photos and the real loss network, at 64 px so a step takes a fraction of a second.
FAST = (
    "experiment=quickstart",
    "data.image_size=64",
    "data.val_size=64",
    "data.val_max_images=4",
    "style.size=128",
    "trainer.precision=32-true",
)


@pytest.fixture(scope="session")
def caffe_vgg_weights() -> dict:
    from fast_style.vgg import load_caffe_vgg19

    return load_caffe_vgg19()


@pytest.fixture(scope="session")
def fiftyone(tmp_path_factory) -> Iterator[ModuleType]:
    """fiftyone on a throwaway database: its own MongoDB in a temporary folder, a temporary zoo folder, and none of
    the user's FIFTYONE_* variables or ~/.fiftyone config. Subprocesses (train.py, the App server) inherit the
    variables, and with them this database. They must be set before fiftyone is first imported."""
    assert "fiftyone" not in sys.modules, "fiftyone was imported before its test database was set up"
    root = tmp_path_factory.mktemp("fiftyone")
    with pytest.MonkeyPatch.context() as patch:
        for key in [key for key in os.environ if key.startswith("FIFTYONE_")]:
            patch.delenv(key)
        patch.setenv("FIFTYONE_CONFIG_PATH", str(root / "config.json"))  # does not exist: defaults only
        patch.setenv("FIFTYONE_DATABASE_DIR", str(root / "db"))
        patch.setenv("FIFTYONE_DATASET_ZOO_DIR", str(root / "zoo"))
        patch.setenv("FIFTYONE_DATABASE_VALIDATION", "false")  # CI's offline MongoDB is older than FiftyOne likes
        patch.setenv("FIFTYONE_DO_NOT_TRACK", "true")
        import fiftyone

        assert Path(fiftyone.config.database_dir) == root / "db"
        yield fiftyone


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module of small-image tests: on a busy 2-core machine a second thread
    gains nothing and can cost several times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
