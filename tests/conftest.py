"""Shared helpers: real photos from the repo's data/, and running train.py as users do."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
SHARED_DATA = ROOT.parent / "shared" / "data"  # beside the checkout, as CI lays it out; may be absent

# ONNX Runtime's exported graphs (backend=auto on a CPU) go to a folder of this test session, not the user's cache;
# subprocesses (stylize.py) inherit it.
os.environ["FAST_STYLE_CACHE"] = tempfile.mkdtemp(prefix="fast-style-cache-")


def photo(name: str | None = None, size: int = 64) -> torch.Tensor:
    """A real photo from data/samples as a (1, 3, size, size) tensor in [0, 1]."""
    path = SAMPLES / name if name else sorted(SAMPLES.glob("*.jpg"))[0]
    image = v2.functional.to_image(Image.open(path).convert("RGB"))
    image = v2.functional.center_crop(v2.functional.resize(image, size, antialias=True), size)
    return v2.functional.to_dtype(image, torch.float32, scale=True).unsqueeze(0)


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-value difference in 8-bit levels, after each is rounded to a pixel as save_image rounds it (on the
    CPU, so a GPU result compares with a CPU one)."""
    return ((a.float().cpu() * 255).round() - (b.float().cpu() * 255).round()).abs()


def run_train(cwd: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python train.py <overrides>`` in ``cwd`` (so logs/ and checkpoints/ land there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
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


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small real network, as a model file (random weights are enough for geometry, modes and controls)."""
    from fast_style.model_file import save_model
    from fast_style.network import TransformerNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model(TransformerNet(width=0.25), path, {"style": {"name": "tiny"}})
    return path


@pytest.fixture(scope="module")
def stylizer(model_file):
    """The tiny model of ``model_file`` in fp32 PyTorch on the CPU (ONNX Runtime has its own tests)."""
    from fast_style.inference import Stylizer

    return Stylizer.load(model_file, device="cpu", precision="fp32", backend="torch")


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


def adobe_rgb_icc() -> bytes:
    """A wide-gamut ICC v2 matrix/TRC profile with the Adobe RGB (1998) primaries (D50-adapted) and gamma 563/256,
    written out here: no profile file ships with Pillow or Debian's base system, and CI installs from PyPI only."""
    import struct

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    name = b"Adobe RGB (1998) primaries, test profile"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(name) + 1) + name + b"\0" + bytes(8) + bytes(3 + 67)
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, 563) + bytes(2)  # gamma as u8Fixed8, padded to 4 bytes
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.60974, 0.31111, 0.01947)),
        (b"gXYZ", xyz(0.20528, 0.62567, 0.06087)),
        (b"bXYZ", xyz(0.14919, 0.06322, 0.74457)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text" + bytes(4) + b"no copyright, test data\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ") + bytes(12)
    header += b"acsp" + bytes(4 + 4 + 4 + 4 + 8 + 4) + s15(0.9642) + s15(1.0) + s15(0.8249)
    header += bytes(128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data
