"""Backends: ONNX Runtime on a CPU gives PyTorch's fp32 result on real photos, is chosen only where it applies,
keeps its exported graph between runs, and says in one line how to install it when it is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style import Stylizer
from fast_style.errors import UserError
from fast_style.images import to_tensor
from fast_style.inference import pick_backend
from fast_style.model_file import load_network
from fast_style.network import TransformerNet

from .conftest import ROOT, SAMPLES, levels

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def test_auto_picks_onnxruntime_on_a_cpu_in_fp32_and_pytorch_everywhere_else(monkeypatch):
    monkeypatch.setattr("fast_style.inference.has_onnxruntime", lambda: True)
    assert pick_backend("auto", CPU, "auto", torch_compile=False) == "onnxruntime"
    assert pick_backend("auto", CPU, "fp32", torch_compile=False) == "onnxruntime"
    assert pick_backend("auto", CPU, "bf16", torch_compile=False) == "torch"  # asked for bf16: PyTorch has it
    assert pick_backend("auto", CPU, "auto", torch_compile=True) == "torch"  # asked for torch.compile
    assert pick_backend("auto", CUDA, "auto", torch_compile=False) == "torch"
    assert pick_backend("auto", MPS, "auto", torch_compile=False) == "torch"
    assert pick_backend("torch", CPU, "auto", torch_compile=False) == "torch"
    monkeypatch.setattr("fast_style.inference.has_onnxruntime", lambda: False)
    assert pick_backend("auto", CPU, "auto", torch_compile=False) == "torch"  # without the extra: no error


@pytest.mark.parametrize(
    ("backend", "device", "precision", "message"),
    [
        ("tensorrt", CPU, "auto", "backend must be one of auto, torch, onnxruntime; got 'tensorrt'"),
        ("onnxruntime", CUDA, "auto", "backend=onnxruntime runs in fp32 on the CPU"),
        ("onnxruntime", CPU, "fp16", "backend=onnxruntime runs in fp32 on the CPU"),
    ],
)
def test_a_backend_that_cannot_run_as_asked_is_one_line(backend, device, precision, message):
    with pytest.raises(UserError, match=message):
        pick_backend(backend, device, precision, torch_compile=False)


def test_onnxruntime_without_the_onnx_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without the package gives
    with pytest.raises(UserError, match=r"backend=onnxruntime needs the onnx extra .*pip install 'fast-style\[onnx\]'"):
        Stylizer(TransformerNet(width=0.25), {}, "cpu", "fp32", backend="onnxruntime")


@pytest.mark.slow
def test_onnxruntime_gives_pytorchs_fp32_pixels_on_real_photos():
    """The shipped default style on every sample photo at an odd size (the graph pads to a multiple of 4 too):
    the two runtimes' float rounding may move a pixel by one level where it sits on a rounding edge, no more."""
    model = ROOT / "checkpoints" / "wave.safetensors"
    if not model.is_file():
        pytest.skip("checkpoints/wave.safetensors is not in this checkout")
    net, metadata = load_network(model)
    torch_fp32 = Stylizer(net, metadata, "cpu", "fp32", backend="torch")
    onnx = Stylizer(net, metadata, "cpu", "fp32", backend="onnxruntime")
    assert onnx.backend == "onnxruntime"
    for path in sorted(SAMPLES.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        image.thumbnail((254, 254))
        x = to_tensor(image)
        diff = levels(onnx.stylize_tensor(x), torch_fp32.stylize_tensor(x))
        assert diff.max() <= 1 and diff.mean() < 0.01, path.name
    # Images too small for the exported graph (sides under 8 px) run in PyTorch, with the same result.
    tiny = torch.rand(1, 3, 5, 300)
    assert torch.allclose(onnx.stylize_tensor(tiny), torch_fp32.stylize_tensor(tiny))


@pytest.mark.slow
def test_the_exported_graph_is_kept_and_a_damaged_one_is_exported_again(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("FAST_STYLE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = TransformerNet(width=0.25, trunk_norm="weight", upsample="nearest").eval()
    x = torch.rand(1, 3, 40, 36)
    first = Stylizer(net, {}, "cpu", "fp32", backend="onnxruntime")
    assert "exporting" in capfd.readouterr().err
    (graph,) = (tmp_path / "cache" / "onnx").iterdir()
    written = graph.stat().st_mtime_ns

    again = Stylizer(net, {}, "cpu", "fp32", backend="onnxruntime")
    assert graph.stat().st_mtime_ns == written and "exporting" not in capfd.readouterr().err
    np.testing.assert_array_equal(again.stylize_tensor(x).numpy(), first.stylize_tensor(x).numpy())

    graph.write_bytes(b"not an onnx graph")  # a damaged cache file
    repaired = Stylizer(net, {}, "cpu", "fp32", backend="onnxruntime")
    np.testing.assert_array_equal(repaired.stylize_tensor(x).numpy(), first.stylize_tensor(x).numpy())

    other = TransformerNet(width=0.25, trunk_norm="weight", upsample="nearest").eval()  # other weights: own graph
    Stylizer(other, {}, "cpu", "fp32", backend="onnxruntime")
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 2


@pytest.mark.slow
def test_compile_gives_eager_pixels_on_a_real_photo_whose_sides_are_not_multiples_of_4():
    """compile=true once failed on every CPU image (PyTorch 2.14 could not compile the padding's ``%`` of a size).
    The compiled graph fuses the normalisations differently, so a pixel on a rounding edge may move one level."""
    torch.manual_seed(0)
    net = TransformerNet(width=0.25, trunk_norm="weight", upsample="nearest").eval()
    eager = Stylizer(net, {}, "cpu", "fp32", backend="torch")
    compiled = Stylizer(net, {}, "cpu", "fp32", backend="torch", torch_compile=True)
    image = Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB").resize((70, 45))
    x = to_tensor(image)
    diff = levels(compiled.stylize_tensor(x), eager.stylize_tensor(x))
    assert diff.max() <= 1 and diff.mean() < 0.01
