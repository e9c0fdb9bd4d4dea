"""The network as an ONNX graph: exported for other runtimes, and run by ONNX Runtime as ``Stylizer``'s CPU backend.

On a CPU, ONNX Runtime runs our network faster than PyTorch does (README, "Speed"), but exporting a network
takes 10–20 s, so each exported graph is kept in a cache folder under a hash of the network's weights.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fast_style.errors import UserError
from fast_style.files import atomic_path
from fast_style.network import TransformerNet

ONNX_EXTRA = ("onnxruntime", "onnx", "onnxscript")  # the runtime; torch.onnx's exporter needs the other two
MIN_SIDE = 8  # the exported graph's smallest height and width (the first layer's reflection padding needs 4 px)


def has_onnxruntime() -> bool:
    """Whether the onnx extra is installed: ONNX Runtime and what exporting to it needs."""
    return all(importlib.util.find_spec(name) is not None for name in ONNX_EXTRA)


def require_onnx(what: str, packages: Sequence[str] = ONNX_EXTRA) -> None:
    """Raise one line naming ``what`` and how to install the onnx extra unless ``packages`` (of it) import."""
    try:
        for name in packages:
            importlib.import_module(name)
    except ImportError as e:
        raise UserError(f"{what} needs the onnx extra ({e}): pip install 'fast-style[onnx]'") from e


def export_onnx(net: TransformerNet, path: str | Path, opset: int = 18) -> None:
    """ONNX with dynamic batch, height and width (sides of at least 8 px), input and output in [0, 1], in one file."""
    require_onnx("format=onnx", ("onnx", "onnxscript"))
    net = net.float().eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(1, 3, 64, 48)
    dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=MIN_SIDE, max=16384)}
    dims[3] = torch.export.Dim("width", min=MIN_SIDE, max=16384)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            net, (example,), str(tmp), input_names=["image"], output_names=["stylized"],
            dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True, verbose=False,
            external_data=False,  # one self-contained file (weights inside): it is written under a temporary name
        )  # fmt: skip


def cache_dir() -> Path:
    """``$FAST_STYLE_CACHE``, else ``$XDG_CACHE_HOME/fast-style``, else ``~/.cache/fast-style``."""
    if os.environ.get("FAST_STYLE_CACHE"):
        return Path(os.environ["FAST_STYLE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fast-style"


def network_hash(net: TransformerNet) -> str:
    """A hash of the architecture, the weights (as fp32) and the PyTorch version that exports them."""
    digest = hashlib.sha256(json.dumps([net.config(), torch.__version__], sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


class OnnxRuntimeNet:
    """A network run by ONNX Runtime on the CPU, in fp32, on images with both sides of at least ``MIN_SIDE``."""

    def __init__(self, net: TransformerNet, name: str = "the model") -> None:
        require_onnx("backend=onnxruntime")
        import onnxruntime as ort

        self.path = cache_dir() / "onnx" / f"{network_hash(net)}.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # honour OMP_NUM_THREADS / torch.set_num_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no warnings about initializers on every load
        # Without its memory arena ONNX Runtime needs about what PyTorch needs (1024²: 0.6 GB above the process's
        # base, against 1.4 GB with it), so Stylizer's memory budget and tile=auto hold for both backends.
        options.enable_cpu_mem_arena = False
        cached = self.path.is_file()
        if not cached:
            print(f"exporting {name} to ONNX for ONNX Runtime (once; kept in {self.path.parent})", file=sys.stderr)
            export_onnx(net, self.path)

        def session() -> ort.InferenceSession:
            return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

        try:
            self.session = session()
        except Exception:
            if not cached:
                raise
            export_onnx(net, self.path)  # a damaged cache file (a disk error, a foreign file): export it again
            self.session = session()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] on the CPU → stylized (N, 3, H, W) in [0, 1], float32."""
        image = x.detach().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"image": image})[0])
