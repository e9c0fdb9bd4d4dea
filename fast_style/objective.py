"""A style's objective: its style images (loaded at the size the style targets are computed at, and fingerprinted)
and the perceptual loss with their targets set. Training, optimization-based stylizing and evaluation all measure
with this one loss."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.transforms import v2

from fast_style.errors import UserError
from fast_style.images import load_rgb
from fast_style.loss import PerceptualLoss


def as_list(images: str | Sequence[str]) -> list[str]:
    """``style.image`` may be one path or a list of paths (blended)."""
    return [images] if isinstance(images, str) else list(images)


def load_style_image(path: str | Path, size: int | None) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], resized so its shorter side is ``size`` (None keeps the file's size)."""
    if not Path(path).is_file():
        raise UserError(f"style image {path} does not exist; set style.image=PATH to an image file")
    image = v2.functional.to_image(load_rgb(path))
    if size is not None:
        image = v2.functional.resize(image, size, antialias=True)
    return v2.functional.to_dtype(image, torch.float32, scale=True).unsqueeze(0)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, so that a model records which style image it learned, wherever it lies."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_loss(cfg: DictConfig) -> PerceptualLoss:
    """The perceptual loss of ``cfg.loss`` with the style targets of ``cfg.style`` set."""
    style_tensors = [load_style_image(path, cfg.style.size) for path in as_list(cfg.style.image)]
    loss = instantiate(cfg.loss)
    loss.set_style(style_tensors, cfg.style.get("blend"))
    return loss
