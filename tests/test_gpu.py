"""CUDA paths; skipped where no GPU is visible (the CI machines have none)."""

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style import Stylizer
from fast_style.model_file import read_metadata, save_model
from fast_style.network import TransformerNet

from .conftest import FAST, SAMPLES, levels, photo, run_train

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


def test_compiled_on_the_gpu_an_output_outlives_the_next_forward_pass():
    """compile=true records a CUDA graph per size, whose output memory the next pass reuses: what stylize_tensor
    returned must stay as it was (and match fp32 within the reduced-precision bound)."""
    torch.manual_seed(0)
    net = TransformerNet()
    compiled = Stylizer(net, {}, "cuda", "fp16", torch_compile=True)
    a, b = photo(size=64).cuda(), photo(size=64).flip(-1).cuda()
    outputs = [compiled.stylize_tensor(a) for _ in range(3)]  # warm-up, recording, replay
    kept = [out.clone() for out in outputs]
    compiled.stylize_tensor(b)
    assert all(torch.equal(out, copy) for out, copy in zip(outputs, kept))
    reference = Stylizer(net, {}, "cpu", "fp32").stylize_tensor(a.cpu())
    assert levels(outputs[-1], reference).mean() <= 0.5 and levels(outputs[-1], reference).max() <= 4


def test_photos_stylized_on_the_gpu_match_the_cpu_in_8_bit(tmp_path):
    """Photos cross to the GPU as 8-bit pixels and are blended and rounded there: the same pictures as on the
    CPU in fp32, within reduced precision's noise."""
    path = tmp_path / "m.safetensors"
    save_model(TransformerNet(), path)
    images = [Image.open(p).convert("RGB").resize((96, 64)) for p in sorted(SAMPLES.glob("*.jpg"))[:3]]
    gpu, cpu = Stylizer.load(path), Stylizer.load(path, device="cpu", precision="fp32", backend="torch")
    for options in ({}, {"strength": 0.5, "preserve_color": True}):
        on_gpu, on_cpu = gpu.stylize_images(images, **options), cpu.stylize_images(images, **options)
        diff = np.abs(np.stack(on_gpu).astype(int) - np.stack(on_cpu))
        assert diff.mean() < 0.7 and diff.max() <= 6
