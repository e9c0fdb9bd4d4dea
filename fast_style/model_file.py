"""Per-style model files: the transformer's weights plus metadata in one ``.safetensors`` file, written, found
(a style name or a path), read and rebuilt into a network; Lightning ``.ckpt`` files are read as well.

safetensors holds only tensors and strings, so loading a model file can never run code. Metadata:
``format`` (the plain string "fast-style/1"), and JSON strings: ``model`` (TransformerNet arguments)
plus whatever the trainer records (style, loss, data, config, steps, losses, date, run_id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fast_style.errors import UserError
from fast_style.files import atomic_path
from fast_style.network import TransformerNet
from fast_style.paths import PROJECT_ROOT

FORMAT = "fast-style/1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def find_model(style: str | Path) -> Path:
    """A model path as given, or a style name looked up as ``checkpoints/<name>.safetensors``
    in the current folder, then in the fast-style checkout."""
    text = str(style)
    if text.endswith((".safetensors", ".ckpt")) or "/" in text:
        return Path(text).expanduser()
    candidates = [Path("checkpoints") / f"{text}.safetensors", PROJECT_ROOT / "checkpoints" / f"{text}.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"no model for style {text!r} ({candidates[0]} does not exist); train one with "
        f"python train.py style={text} data.root=PHOTOS, or pass style=path/to/model.safetensors"
    )


def load_lightning_checkpoint(path: Path, what: str = "checkpoint") -> tuple[TransformerNet, dict[str, Any]]:
    """The transformer from a training checkpoint, read with ``weights_only=True`` (no arbitrary unpickling);
    one line naming ``what`` (``ckpt_path``, ``style``) for a missing, empty or foreign file."""
    if not path.is_file():
        raise UserError(f"{what}={path} does not exist; give a .ckpt from a run's checkpoints/ folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds on a file it cannot read (empty, truncated, a pickle)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a loadable Lightning checkpoint of plain tensors ({first_line})") from e
    if not isinstance(checkpoint, dict) or "fast_style_model" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a fast-style training checkpoint (no 'fast_style_model' entry)")
    config = checkpoint["fast_style_model"]
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    return build_network(config, state, path), {"model": config, "steps": checkpoint.get("global_step")}


def load_network(style: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """The network and metadata of a style name, a ``.safetensors`` model file or a Lightning ``.ckpt``;
    ``metadata["path"]`` says which file it came from."""
    path = find_model(style)
    if path.suffix == ".ckpt":
        net, metadata = load_lightning_checkpoint(path, "style")
        metadata["style"] = {"name": path.stem}
    else:
        net, metadata = load_model(path)
    metadata["path"] = str(path)
    return net, metadata
