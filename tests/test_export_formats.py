"""python -m fast_style.export: ONNX and TorchScript exports match the eager network at sizes other than the
example's; the command checks its arguments and the onnx extra."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fast_style.export import export_onnx, export_torchscript
from fast_style.model_file import save_model
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
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # one file: the weights are inside it
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


def test_onnx_export_without_the_onnx_extra_is_one_line(tmp_path):
    """Run as a user without ``pip install 'fast-style[onnx]'`` would: onnxscript cannot be imported."""
    save_model(TransformerNet(width=0.25), tmp_path / "m.safetensors")
    code = (
        "import sys; sys.modules['onnxscript'] = None; from fast_style.errors import exit_on_user_error; "
        "from fast_style.export import main\nwith exit_on_user_error(): main(sys.argv[1:])"
    )
    args = [f"style={tmp_path / 'm.safetensors'}", f"output={tmp_path / 'm.onnx'}"]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: format=onnx needs the onnx extra (import of onnxscript "
        "halted; None in sys.modules): pip install 'fast-style[onnx]'"
    ]
    assert not (tmp_path / "m.onnx").exists()
