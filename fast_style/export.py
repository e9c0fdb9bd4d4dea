"""``python -m fast_style.export``: a model file converted for other runtimes, ONNX or TorchScript.

``python -m fast_style.export style=NAME|PATH format=onnx|torchscript output=FILE [overwrite=true]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fast_style.config import parse_key_values
from fast_style.errors import UserError, exit_on_user_error
from fast_style.files import atomic_path
from fast_style.model_file import find_model, load_model
from fast_style.network import TransformerNet
from fast_style.onnx_model import export_onnx
from fast_style.options import boolean, choice, integer, text


def export_torchscript(net: TransformerNet, path: str | Path) -> None:
    """A scripted (not traced) module: it keeps the pad-to-multiple-of-4 logic, so any size works."""
    scripted = torch.jit.script(net.float().eval().to(memory_format=torch.contiguous_format))
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))


def main(argv: list[str]) -> None:
    """Convert the model of ``style=`` to ``format=`` at ``output=`` (next to the model's name by default)."""
    defaults = {"style": "wave", "format": "onnx", "output": None, "opset": 18, "overwrite": False}
    rules = {
        "style": text(),
        "format": choice("onnx", "torchscript"),
        "output": text(null=True),
        "opset": integer(7),
        "overwrite": boolean,
    }
    cfg = parse_key_values(defaults, argv, rules)
    source = find_model(cfg.style)
    net, _ = load_model(source)
    output = Path(cfg.output or source.with_suffix(".onnx" if cfg.format == "onnx" else ".pt").name)
    if output.exists() and not cfg.overwrite:
        raise UserError(f"{output} exists already; pass overwrite=true to replace it or output=... to write elsewhere")
    if cfg.format == "onnx":
        export_onnx(net, output, cfg.opset)
    else:
        export_torchscript(net, output)
    print(f"wrote {output} ({cfg.format}) from {source}")


if __name__ == "__main__":
    with exit_on_user_error():
        main(sys.argv[1:])
