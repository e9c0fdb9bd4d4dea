"""The Python API of stylizing: ``Stylizer``, a trained per-style model on a device, one forward pass per image
(in tiles when an image would not fit in memory), with the ``strength`` and ``preserve_color`` controls.

from fast_style import Stylizer
stylized = Stylizer.load("starry_night")(Image.open("photo.jpg"))
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from fast_style.devices import pick_device, pick_precision
from fast_style.errors import UserError
from fast_style.files import safe_name
from fast_style.images import to_arrays, to_batch
from fast_style.model_file import load_network
from fast_style.network import TransformerNet
from fast_style.onnx_model import MIN_SIDE, OnnxRuntimeNet, has_onnxruntime
from fast_style.stabilize import norm_statistics
from fast_style.tiling import NormStats, stylize_tiled

BACKENDS = ("auto", "torch", "onnxruntime")

# ITU-R BT.601 full-range RGB → YCbCr (the JPEG convention), on [0, 1] values.
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def luminance_transfer(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """What ``preserve_color`` does: the stylized luminance (Y) with the content's chroma (Cb, Cr), so the photo
    keeps its colours (Gatys et al. 2016, "Preserving color in neural artistic style transfer")."""
    matrix = RGB_TO_YCBCR.to(stylized)
    y = torch.einsum("ij,njhw->nihw", matrix[:1], stylized)
    cbcr = torch.einsum("ij,njhw->nihw", matrix[1:], content)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(matrix), torch.cat([y, cbcr], 1)).clamp(0, 1)


def finish(content: torch.Tensor, stylized: torch.Tensor, strength: float, preserve_color: bool) -> torch.Tensor:
    """The ``preserve_color`` and ``strength`` controls applied to a batch of stylizations of ``content``."""
    if preserve_color:
        stylized = luminance_transfer(stylized, content)
    return torch.lerp(content, stylized, strength) if strength < 1 else stylized


def memory_budget(device: torch.device) -> int:
    """Bytes the forward pass may use: half the free GPU memory, or on a CPU half the available memory
    but at most 1 GiB, so that stylizing a 4K photo stays within ~2 GiB in all."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return min(psutil.virtual_memory().available // 2, 1 << 30)


def pick_tile(tile: int | str | None, height: int, width: int, bytes_per_pixel: float, budget: int) -> int | None:
    """The tile side for an image, or None to run it whole. ``auto`` tiles only what does not fit ``budget``."""
    if tile in (None, 0, "none", False):
        return None
    if tile == "auto":
        if height * width * bytes_per_pixel <= budget:
            return None
        # Tiled, the quarter-resolution features stay whole (~1/8 of the untiled need); tiles get the rest.
        rest = max(budget - height * width * bytes_per_pixel / 8, budget / 4)
        return max(256, int((rest / bytes_per_pixel) ** 0.5) // 64 * 64)
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 64:
        raise UserError(f"tile must be auto, null, or a size in pixels >= 64, got {tile!r}")
    return tile if max(height, width) > tile else None


def pick_backend(backend: str, device: torch.device, precision: str, torch_compile: bool) -> str:
    """``auto``: ONNX Runtime on a CPU in fp32 when the onnx extra is installed (it measured faster than
    PyTorch on both CPU kinds we have, README "Speed"), else PyTorch."""
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    cpu_fp32 = device.type == "cpu" and precision in ("auto", "fp32") and not torch_compile
    if backend == "auto":
        return "onnxruntime" if cpu_fp32 and has_onnxruntime() else "torch"
    if backend == "onnxruntime" and not cpu_fp32:
        raise UserError("backend=onnxruntime runs in fp32 on the CPU: use device=cpu precision=auto compile=false")
    return backend


class Stylizer:
    """A loaded per-style model on a device, ready to stylize images of any size."""

    # Peak activation memory of an untiled fp32 forward pass per pixel and unit of model width (measured
    # with benchmarks/stylize.py: 500–650 bytes per pixel for the standard model).
    BYTES_PER_PIXEL = 600

    def __init__(
        self,
        net: TransformerNet,
        metadata: dict[str, Any],
        device: str = "auto",
        precision: str = "auto",
        tile: int | str | None = "auto",
        torch_compile: bool = False,
        backend: str = "auto",
    ) -> None:
        self.device = pick_device(device)
        self.backend = pick_backend(backend, self.device, precision, torch_compile)
        self.dtype = torch.float32 if self.backend == "onnxruntime" else pick_precision(self.device, precision)
        self.tile = tile
        pick_tile(tile, 0, 0, 0, 0)  # reject a bad value now, not at the first image
        # channels_last suits the bf16/fp16 kernels (oneDNN, tensor cores); for fp32 on a CPU it measured
        # slower (1024², AVX2-only EPYC: 6.9 s vs 5.6 s per image), so it is used only with reduced precision.
        self.memory_format = torch.contiguous_format
        if self.dtype != torch.float32 or self.device.type == "cuda":
            self.memory_format = torch.channels_last
        self.net = net.eval().to(self.device, memory_format=self.memory_format)
        # One graph per image size (dynamic=False): for a video or a folder of equal-size photos that is one
        # compilation. Symbolic sizes bought nothing: on the CPU (PyTorch 2.14) each new size still compiled
        # again, 3x slower than a fixed-size compilation, and the graph ran 15-25% slower (README "Speed").
        # On a GPU each size's graph is also recorded as a CUDA graph ("reduce-overhead"), so a forward pass is
        # one launch instead of one per kernel; its output lives in the graph's memory, which the next pass
        # overwrites, so stylize_tensor copies it out.
        self.cuda_graphs = torch_compile and self.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self.forward = torch.compile(self.net, dynamic=False, mode=mode) if torch_compile else self.net
        self.metadata = metadata
        style = metadata.get("style")
        self.name = safe_name(style.get("name", "style") if isinstance(style, dict) else "style")
        self.onnx = OnnxRuntimeNet(self.net, self.name) if self.backend == "onnxruntime" else None

    @classmethod
    def load(
        cls,
        style: str | Path,
        device: str = "auto",
        precision: str = "auto",
        tile: int | str | None = "auto",
        torch_compile: bool = False,
        backend: str = "auto",
    ) -> Stylizer:
        """From a style name (``checkpoints/<name>.safetensors``), a ``.safetensors`` model file,
        or a Lightning ``.ckpt`` training checkpoint."""
        net, metadata = load_network(style)
        return cls(net, metadata, device, precision, tile, torch_compile, backend)

    @torch.inference_mode()
    def stylize_tensor(self, images: torch.Tensor, norm_stats: NormStats | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] → stylized (N, 3, H, W) in [0, 1], float32, on the input's device.

        Images too large for memory (see ``tile``) go through the network in tiles, with the same result.
        ``norm_stats`` replaces each instance norm's per-image statistics (video stabilization; runs eagerly).
        Tiles, ``norm_stats`` and images under 8 px a side run in PyTorch with either backend."""
        x = images.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        height, width = x.shape[-2:]
        per_pixel = self.BYTES_PER_PIXEL * self.net.width * x.shape[0] * (1 if self.dtype == torch.float32 else 0.5)
        tile = pick_tile(self.tile, height, width, per_pixel, memory_budget(self.device) if self.tile == "auto" else 0)
        with autocast:
            if tile is None and norm_stats is not None:
                with norm_statistics(self.net, norm_stats):
                    out = self.net(x)
            elif tile is None and self.onnx is not None and min(height, width) >= MIN_SIDE:
                out = self.onnx(x)
            elif tile is None:
                out = self.forward(x)
                out = out.clone() if self.cuda_graphs else out
            else:
                tiled = [stylize_tiled(self.net, image[None], tile, norm_stats) for image in x]
                out = tiled[0] if len(tiled) == 1 else torch.cat(tiled)
        return out.float().to(images.device)

    def __call__(
        self, image: Image.Image, strength: float = 1.0, preserve_color: bool = False, max_size: int | None = None
    ) -> Image.Image:
        """Stylize one PIL image; the result has the same size (after ``max_size``) and alpha channel.

        ``strength`` blends with the original (0 = the photo, 1 = fully stylized); ``preserve_color``
        keeps the photo's colours and takes only the luminance of the stylization.
        """
        return self.stylize_images([image], strength, preserve_color, max_size)[0]

    def stylize_images(
        self,
        images: Sequence[Image.Image],
        strength: float = 1.0,
        preserve_color: bool = False,
        max_size: int | None = None,
    ) -> list[Image.Image]:
        """Stylize several PIL images as :meth:`__call__` does each. Those of equal size (after ``max_size``) go
        through the network together, in one forward pass: on a GPU one image leaves most of it idle."""
        if not 0 <= strength <= 1:
            raise UserError(f"strength must be between 0 and 1, got {strength}")
        images = [shrink(image, max_size) for image in images]
        sizes: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            sizes.setdefault(image.size, []).append(i)
        results: dict[int, Image.Image] = {}
        for indices in sizes.values():
            content = to_batch(np.stack([np.asarray(images[i].convert("RGB")) for i in indices]), self.device)
            stylized = finish(content, self.stylize_tensor(content), strength, preserve_color)
            for i, out in zip(indices, to_arrays(stylized)):
                results[i] = Image.fromarray(out)
                if images[i].mode in ("RGBA", "LA"):
                    results[i].putalpha(images[i].getchannel("A"))
        return [results[i] for i in range(len(images))]


def shrink(image: Image.Image, max_size: int | None) -> Image.Image:
    """``image``, or a copy scaled down so that its long side is ``max_size``."""
    if max_size is None or max(image.size) <= max_size:
        return image
    image = image.copy()
    image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    return image
