"""ONNX and TorchScript exports match the eager network at sizes other than the example's."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fast_style.export import export_onnx, export_torchscript, save_model
from fast_style.network import TransformerNet

from .conftest import photo

SIZES = [(96, 128), (75, 101)]  # a multiple of 4, and odd sides that need the internal padding


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    torch.manual_seed(0)
    return TransformerNet(width=0.5).eval()


def inputs():
    for h, w in SIZES:
        yield torch.nn.functional.interpolate(photo(size=128), size=(h, w), mode="bilinear", align_corners=False)


def test_torchscript_matches_eager_at_two_sizes(net, tmp_path):
    export_torchscript(net, tmp_path / "m.pt")
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    for x in inputs():
        with torch.no_grad():
            assert (scripted(x) - net(x)).abs().max() < 1e-5  # same kernels: float rounding only


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_and_matches_eager_at_two_sizes(net, tmp_path):
    import onnxruntime

    export_onnx(net, tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for x in inputs():
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = net(x).numpy()
        assert out.shape == expected.shape
        assert np.abs(out - expected).max() < 1e-4  # different kernels: float32 rounding differences only


@pytest.mark.slow
def test_export_command_writes_once_and_refuses_to_overwrite(net, tmp_path):
    save_model(net, tmp_path / "wave.safetensors")
    cmd = [sys.executable, "-m", "fast_style.export", f"style={tmp_path / 'wave.safetensors'}", "format=torchscript"]
    first = subprocess.run([*cmd, f"output={tmp_path / 'wave.pt'}"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert torch.jit.load(str(tmp_path / "wave.pt"))(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    again = subprocess.run([*cmd, f"output={tmp_path / 'wave.pt'}"], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "exists already" in again.stderr


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("overwrite=no", "exists already"),  # "no" is a real False: the file stays
        ("overwrite=maybe", "overwrite='maybe' is not true or false"),
        ("fromat=onnx", "Key 'fromat' is not in struct"),  # a typo is an error, not the default in force
        ("format=png", "format='png' is not one of onnx, torchscript"),
    ],
)
def test_export_command_arguments_are_checked_before_anything_is_written(net, tmp_path, argument, message):
    from fast_style.errors import UserError
    from fast_style.export import main

    save_model(net, tmp_path / "wave.safetensors")
    (tmp_path / "wave.pt").write_bytes(b"precious")
    with pytest.raises(UserError, match=message):
        main(
            [f"style={tmp_path / 'wave.safetensors'}", "format=torchscript", f"output={tmp_path / 'wave.pt'}", argument]
        )
    assert (tmp_path / "wave.pt").read_bytes() == b"precious"
