"""CUDA paths; skipped where no GPU is visible (the CI machines have none)."""

import pytest
import torch

from fast_style import Stylizer
from fast_style.model_file import read_metadata, save_model
from fast_style.network import TransformerNet

from .conftest import FAST, photo, run_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_device_and_precision_stylize_on_the_gpu_like_the_cpu(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(TransformerNet(), path)
    gpu, cpu = Stylizer.load(path), Stylizer.load(path, device="cpu", precision="fp32")
    assert gpu.device.type == "cuda" and gpu.dtype in (torch.bfloat16, torch.float16)
    x = photo(size=128)
    assert (gpu.stylize_tensor(x) - cpu.stylize_tensor(x)).abs().mean() < 0.02


def test_training_runs_on_the_gpu_with_mixed_precision(tmp_path):
    fast = [o for o in FAST if not o.startswith("trainer.precision=")]
    run_train(tmp_path, *fast, "trainer=gpu", "trainer.max_steps=3", "export.path=m.safetensors")
    assert read_metadata(tmp_path / "m.safetensors")["steps"] == 3
