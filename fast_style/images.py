"""Image files in and out: any common file read as upright 8-bit sRGB(A), with a clear error for a bad one; images
written atomically as sRGB; and PIL images to tensors and back.

Shared by training, stylizing and evaluation; kept free of Lightning and torchvision so that
stylizing starts fast.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps

from fast_style.errors import UserError
from fast_style.files import atomic_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Video files stylize.py accepts beside images (fast_style.video; any format FFmpeg reads works when named).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp")
# Pillow refuses to open an image with more pixels than this (a decompression bomb: a small file that claims an
# enormous size). data.max_pixels may lower the limit but not raise it past Pillow's own.
DEFAULT_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


def list_images(root: str | Path, what: str = "data.root") -> list[Path]:
    """Every image file below ``root`` (recursively, sorted); a clear error if there is none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{what}={root} is not a folder; point {what} at a folder of photos (e.g. COCO's train2017)")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise UserError(
            f"{what}={root} holds no {'/'.join(IMAGE_EXTENSIONS)} images; point {what} at a folder of photos"
        )
    return paths


def check_max_pixels(max_pixels: Any, what: str = "data.max_pixels") -> int:
    """``max_pixels`` if it is a usable limit (Pillow's own limit caps it), else a clear error."""
    if not isinstance(max_pixels, int) or not 1 <= max_pixels <= DEFAULT_MAX_PIXELS:
        raise UserError(f"{what} must be an integer from 1 to {DEFAULT_MAX_PIXELS} (Pillow's limit), got {max_pixels}")
    return max_pixels


@contextmanager
def reading_errors(path: str | Path) -> Iterator[None]:
    """Whatever a decoder raises on a bad file (Pillow and torchvision raise many kinds) becomes a UserError."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as e:
        raise UserError(f"{path} does not exist") from e
    except Exception as e:
        raise UserError(f"{path} is not a readable image ({e})") from e


def open_checked(path: str | Path, max_pixels: int) -> Image.Image:
    """The image with only its header read, so one that is too large is refused before any pixel is decoded."""
    image = Image.open(path)
    pixels = image.width * image.height
    if pixels > max_pixels:
        image.close()
        raise UserError(
            f"{path} is {image.width}x{image.height} = {pixels} pixels, more than the limit of {max_pixels}"
            " (data.max_pixels, a guard against decompression bombs)"
        )
    return image


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
SRGB_ICC = SRGB.tobytes()  # embedded in what we write, so that viewers do not have to guess


def to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """``image`` converted from its embedded ICC profile (Adobe RGB, Display P3, a CMYK or gray profile) to sRGB,
    which is what the network and every viewer of our outputs assume. Without a profile, or with one that cannot
    be read or does not fit the image's mode, it is taken as sRGB already."""
    if not icc or image.mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(source).strip() == ImageCms.getProfileDescription(SRGB).strip():
            return image
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        colour = image.convert({"RGBA": "RGB", "LA": "L"}.get(image.mode, image.mode))
        converted = ImageCms.profileToProfile(
            colour, source, SRGB, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB"
        )
    except (OSError, ValueError, ImageCms.PyCMSError):
        return image
    assert converted is not None
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def upright_8bit(image: Image.Image) -> Image.Image:
    """Decode an opened image as :func:`read_image` describes."""
    icc = image.info.get("icc_profile")
    image = ImageOps.exif_transpose(image)
    image.load()
    image = to_srgb(image, icc)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float32)
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / full_scale * 255 + 0.5, 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    mode = "RGBA" if has_alpha else "RGB"
    return image if image.mode == mode else image.convert(mode)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open any common image as upright 8-bit sRGB(A): EXIF rotation applied; an embedded colour profile converted
    to sRGB; grayscale, CMYK, palette and 16-bit images converted; transparency kept as an alpha channel. A UserError
    for a file that cannot be decoded or has more than ``max_pixels`` pixels (refused from its header, before
    decoding)."""
    with reading_errors(path), open_checked(path, max_pixels) as opened:
        return upright_8bit(opened)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as upright 8-bit RGB (alpha dropped)."""
    return read_image(path).convert("RGB")


def save_image(image: Image.Image, path: Path) -> None:
    """Save atomically in the format of ``path``'s suffix (JPEG quality 95; alpha dropped where unsupported), tagged
    as sRGB."""
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    options: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["icc_profile"] = SRGB_ICC  # the pixels are sRGB (inputs with other profiles were converted)
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **options)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB(A) PIL image → (1, 3, H, W) float in [0, 1] (alpha dropped)."""
    return to_batch(np.asarray(image.convert("RGB"))[None])


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] → 8-bit RGB PIL image (clamped, rounded to the nearest value)."""
    return Image.fromarray(to_arrays(tensor)[0])


def to_batch(arrays: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB → (N, 3, H, W) float in [0, 1] on ``device``. The pixels cross to a GPU as 8-bit
    values from pinned memory (a quarter of the bytes of float32, copied without blocking) and become floats
    there."""
    batch = torch.from_numpy(np.require(arrays, np.uint8, ["C", "W"]))  # read-only arrays (PIL's) are copied
    if torch.device(device).type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255)


def to_arrays(batch: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] → (N, H, W, 3) uint8 RGB (clamped, rounded to the nearest value), rounded on the
    batch's device so that only 8-bit values come back from a GPU."""
    return batch.float().clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
