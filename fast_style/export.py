"""Per-style model files: the transformer's weights plus metadata in one ``.safetensors`` file.

safetensors holds only tensors and strings, so loading a model file can never run code. Metadata:
``format`` (the plain string "fast-style/1"), and JSON strings: ``model`` (TransformerNet arguments)
plus whatever the trainer records (style, loss, data, config, steps, losses, date, run_id).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fast_style.errors import UserError
from fast_style.network import TransformerNet

FORMAT = "fast-style/1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# atomic_path's temporaries: .<name>.<8 random characters from mkstemp>.tmp
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: str | Path, older_than: float = 3600.0) -> list[Path]:
    """Delete atomic_path temporaries left in ``folder`` by a write that was killed (they are checkpoint-sized),
    if untouched for ``older_than`` seconds: a write in progress, by another run, keeps its file. Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        with contextlib.suppress(OSError):  # gone already, or not ours to delete
            if TEMPORARY.match(path.name) and path.is_file() and time.time() - path.stat().st_mtime > older_than:
                path.unlink()
                removed.append(path)
    return removed


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash mid-write leaves the old file intact (and no half-written one under the real name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the file gets the mode open() would give
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(folder: str | Path, what: str) -> None:
    """Create ``folder`` if needed and write a file in it, so that a location that cannot be written is one line
    before any work (and never a traceback after a long run). Probing beats ``os.access``, which says yes to root
    even on a read-only file system."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write the {what} to {folder} ({e.strerror or e}); choose another location") from e


def save_model(
    net: TransformerNet, path: str | Path, metadata: dict[str, Any] | None = None, dtype: str = "float32"
) -> None:
    """Write ``net``'s weights (floating point ones cast to ``dtype``) and metadata to ``path`` atomically."""
    if dtype not in DTYPES:
        raise UserError(f"export.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    tensors = {
        name: t.detach().to("cpu", DTYPES[dtype] if t.is_floating_point() else t.dtype).contiguous()
        for name, t in net.state_dict().items()
    }
    meta = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    meta.update(format=FORMAT, model=json.dumps(net.config()))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a fast-style model file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable .safetensors model file ({e}); re-export or re-download it") from e
    if raw.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not a fast-style model (format {raw.get('format')!r})")
    try:
        metadata = {key: value if key == "format" else json.loads(value) for key, value in raw.items()}
    except ValueError as e:
        raise UserError(f"{path} has malformed metadata ({e}); re-export or re-download it") from e
    if not isinstance(metadata.get("model"), dict):
        raise UserError(f"{path} does not record its architecture ('model' metadata); re-export or re-download it")
    return metadata


def build_network(config: dict[str, Any], state: dict[str, torch.Tensor], source: str | Path) -> TransformerNet:
    """``TransformerNet(**config)`` with ``state`` loaded in fp32, in eval mode; one clear line naming
    ``source`` when the weights do not fit the recorded architecture."""
    try:
        net = TransformerNet(**config)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (TypeError, ValueError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0]
        raise UserError(f"{source} does not match its recorded architecture {config}: {first_line}") from e
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:  # it would turn every photo black without a word
        raise UserError(
            f"{source} has NaN or infinite weights ({len(broken)} tensors, e.g. {broken[0]}): its training diverged; "
            "use an earlier checkpoint, or retrain with a lower optimizer.lr"
        )
    return net.eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransformerNet, dict[str, Any]]:
    """Rebuild the network recorded in a model file, with its weights in fp32, in eval mode."""
    metadata = read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable .safetensors model file ({e}); re-export or re-download it") from e
    return build_network(metadata["model"], state, path).to(device), metadata


def export_torchscript(net: TransformerNet, path: str | Path) -> None:
    """A scripted (not traced) module: it keeps the pad-to-multiple-of-4 logic, so any size works."""
    scripted = torch.jit.script(net.float().eval().to(memory_format=torch.contiguous_format))
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))


def export_onnx(net: TransformerNet, path: str | Path, opset: int = 18) -> None:
    """ONNX with dynamic batch, height and width (sides of at least 8 px), input and output in [0, 1]."""
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter needs both, from the onnx extra)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"format=onnx needs the onnx extra ({e}): pip install 'fast-style[onnx]'") from e
    net = net.float().eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(1, 3, 64, 48)
    dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=8, max=16384)}
    dims[3] = torch.export.Dim("width", min=8, max=16384)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            net, (example,), str(tmp), input_names=["image"], output_names=["stylized"],
            dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True, verbose=False,
        )  # fmt: skip


def main(argv: list[str]) -> None:
    """``python -m fast_style.export style=NAME|PATH format=onnx|torchscript output=FILE [overwrite=true]``"""
    from fast_style.config import parse_key_values
    from fast_style.inference import find_model
    from fast_style.options import boolean, choice, integer, text

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
    import sys

    from fast_style.errors import exit_on_user_error

    with exit_on_user_error():
        main(sys.argv[1:])
