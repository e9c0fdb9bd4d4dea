"""Training data: random crops from any folder tree of photos (COCO's train2014/train2017 as-is),
plus a small fixed set of validation photos whose stylisations are logged during training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fast_style.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


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


def read_image(path: str | Path) -> Image.Image:
    """Open any common image as upright 8-bit RGB(A): EXIF rotation applied; grayscale, CMYK, palette and
    16-bit images converted; transparency kept as an alpha channel."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except FileNotFoundError as e:
        raise UserError(f"{path} does not exist") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path} is not a readable image ({e})") from e
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float32)
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / full_scale * 255 + 0.5, 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as upright 8-bit RGB (alpha dropped)."""
    return read_image(path).convert("RGB")


Sample = tuple[torch.Tensor | None, str]  # (image, "") or, for an unreadable file, (None, what is wrong)
Batch = tuple[torch.Tensor, list[str]]  # the readable images, and one message per unreadable file


class ImageFiles(Dataset[Sample]):
    """Images from a list of files, as float tensors in [0, 1] after ``transform``.

    An unreadable file does not raise (that would end a long run): it yields ``(None, reason)``,
    which :func:`collate_readable` drops from the batch and reports.
    """

    def __init__(self, paths: list[Path], transform: v2.Transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        try:
            return self.transform(load_rgb(self.paths[index])), ""
        except UserError as e:
            return None, str(e)


def collate_readable(samples: list[Sample]) -> Batch:
    """Stack the readable images (possibly none) and list what was wrong with the others."""
    images = [image for image, _ in samples if image is not None]
    problems = [problem for image, problem in samples if image is None]
    return (torch.stack(images) if images else torch.empty(0, 3, 0, 0)), problems


class ImageFolderDataModule(pl.LightningDataModule):
    """Random-resized square crops of ``image_size`` from ``root``; centre crops of ``val_root`` for validation."""

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        image_size: int = 256,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        batch_size: int = 4,
        num_workers: int = 2,
        val_size: int = 256,
        val_max_images: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (("image_size", image_size), ("val_size", val_size)):
            if value < 16 or value % 4:
                raise UserError(f"data.{name} must be a multiple of 4 and at least 16, got {value}")
        if batch_size < 1 or num_workers < 0:
            raise UserError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {batch_size}, {num_workers}")
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise UserError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(crop_scale)}")
        self.root, self.val_root = root, val_root
        self.image_size, self.crop_scale, self.batch_size = image_size, (low, high), batch_size
        self.num_workers, self.val_size, self.val_max_images = num_workers, val_size, val_max_images

    def train_files(self) -> list[Path]:
        """The training images; other sources (COCO, FiftyOne) override only this."""
        return list_images(self.root)

    def setup(self, stage: str | None = None) -> None:
        to_float = v2.ToDtype(torch.float32, scale=True)
        self.train_set = ImageFiles(
            self.train_files(),
            v2.Compose(
                [
                    v2.ToImage(),
                    v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True),
                    v2.RandomHorizontalFlip(),
                    to_float,
                ]
            ),
        )
        val_paths = list_images(self.val_root, "data.val_root")[: self.val_max_images] if self.val_root else []
        self.val_set = ImageFiles(
            val_paths,
            v2.Compose(
                [v2.ToImage(), v2.Resize(self.val_size, antialias=True), v2.CenterCrop(self.val_size), to_float]
            ),
        )

    def _loader(self, dataset: ImageFiles, train: bool) -> DataLoader[Batch]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else len(dataset) or 1,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers if train else 0,
            persistent_workers=train and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_readable,
        )

    def train_dataloader(self) -> DataLoader[Batch]:
        if len(self.train_set) < self.batch_size:
            raise UserError(
                f"data.root={self.root} has {len(self.train_set)} images, fewer than data.batch_size={self.batch_size}"
            )
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader[Batch] | list:
        return self._loader(self.val_set, train=False) if len(self.val_set) else []
