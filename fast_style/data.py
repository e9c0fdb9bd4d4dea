"""Training data: random crops from any folder tree of photos or a local COCO download, plus a small fixed set of
validation photos whose stylisations are logged during training.

``python -m fast_style.data check DIR`` reads a folder as training would and reports the files it would skip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext, suppress
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from rich.console import Console
from rich.progress import track
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

from fast_style.errors import UserError, exit_on_user_error
from fast_style.images import (
    DEFAULT_MAX_PIXELS,
    check_max_pixels,
    list_images,
    open_checked,
    reading_errors,
    upright_8bit,
)


def read_rgb_tensor(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, reduction: Callable[[int, int], int] | None = None
) -> torch.Tensor:
    """Training's decoder: an upright uint8 RGB tensor (3, H, W), or a UserError as from :func:`read_image`.

    A JPEG is decoded at 1/``reduction(width, height)`` scale (libjpeg's DCT scaling, via Pillow's draft mode) when
    that is 2, 4 or 8; at full size it goes through torchvision's decode_jpeg, which gives the same pixels and was
    faster on a CPU (benchmarks/data.py). Pillow decodes everything else, and whatever decode_jpeg refuses.
    """
    with reading_errors(path), open_checked(path, max_pixels) as opened:
        factor = reduction(opened.width, opened.height) if reduction else 1
        if factor > 1:
            opened.draft(None, (opened.width // factor, opened.height // factor))
        elif opened.format == "JPEG" and not opened.info.get("icc_profile"):  # decode_jpeg ignores colour profiles
            with suppress(RuntimeError):
                return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        image = upright_8bit(opened)
        return v2.functional.to_image(image if image.mode == "RGB" else image.convert("RGB"))


def crop_reduction(
    width: int, height: int, size: int, min_scale: float, ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> int:
    """How far (1, 2, 4 or 8) a ``width`` x ``height`` JPEG may shrink while decoding without costing a
    ``RandomResizedCrop(size, scale=(min_scale, …), ratio)`` any detail: every crop it can take keeps both sides
    at least ``size``, so crops are only ever scaled down, as at full size.

    Its smallest crops cover ``min_scale`` of the area at the most extreme aspect ratio, with sides
    √(min_scale·W·H·min(ratio[0], 1/ratio[1])); its fallback, a centre crop, is at least the image's shorter side.
    So a 640x480 COCO photo with 256 px crops from half its area needs every pixel (smallest crop 339 px), while
    128 px crops allow 1/2.
    """
    smallest = min(math.sqrt(min_scale * width * height * min(ratio[0], 1 / ratio[1])), width, height)
    return next(factor for factor in (8, 4, 2, 1) if factor == 1 or smallest / factor >= size)


@cache  # built once per size: with data.size_schedule every sample asks for its size (~0.16 ms to build)
def train_transform(size: int, crop_scale: tuple[float, float]) -> tuple[v2.Transform, Callable[[int, int], int]]:
    """Training's transform for crops of ``size`` px, and the JPEG decoding reduction it allows."""
    # Square crops (ratio 1): RandomResizedCrop's default 3:4-4:3 range would stretch the photos.
    crop = v2.RandomResizedCrop(size, scale=crop_scale, ratio=(1.0, 1.0), antialias=True)
    transform = v2.Compose([v2.ToImage(), crop, v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
    return transform, partial(crop_reduction, size=size, min_scale=crop.scale[0], ratio=crop.ratio)


Sample = tuple[torch.Tensor | None, list[str]]  # (image or None, what was wrong with each unreadable file tried)
Batch = tuple[torch.Tensor, list[str]]  # the readable images, and one message per unreadable file


class ImageFiles(Dataset[Sample]):
    """Images from a list of files, as float tensors in [0, 1] after ``transform`` (see :func:`read_rgb_tensor`).

    An unreadable file does not raise (that would end a long run). With ``substitute`` (training) the next readable
    file in the list takes its place, so every batch is full and every process of a multi-GPU run does the same
    work (a skipped step on one process stops them all); without it (validation) it yields ``None``, which
    :func:`collate_readable` drops. Either way the reasons go along, to be reported.

    ``resized(size)`` gives the transform and reduction for crops of another size, which a sampler may ask for
    per sample (progressive resolution, ``data.size_schedule``).
    """

    def __init__(
        self,
        paths: list[Path],
        transform: v2.Transform,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        reduction: Callable[[int, int], int] | None = None,
        substitute: bool = False,
        resized: Callable[[int], tuple[v2.Transform, Callable[[int, int], int]]] | None = None,
    ) -> None:
        self.paths, self.transform, self.max_pixels, self.reduction = paths, transform, max_pixels, reduction
        self.substitute, self.resized = substitute, resized

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int] | tuple[int, int, int]) -> Sample:
        """``item``: an index, or (index, seed[, crop size]) from :class:`ResumableSampler`; the seed fixes its
        random crop."""
        if isinstance(item, tuple):
            index, seed, *size = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._read(index, *size)
        return self._read(item)

    def _read(self, index: int, size: int | None = None) -> Sample:
        transform, reduction = (self.transform, self.reduction) if size is None else self.resized(size)
        problems = []
        for offset in range(len(self.paths) if self.substitute else 1):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                return transform(read_rgb_tensor(path, self.max_pixels, reduction)), problems
            except UserError as e:
                problems.append(str(e))
        return None, problems  # without substitute: this file; with it: every file is unreadable


class ResumableSampler(Sampler[tuple[int, int] | tuple[int, int, int]]):
    """A random order of ``size`` indices per epoch, each index with its own seed for its random crop, both drawn
    from ``seed`` and the epoch alone: so the data of step k is the same whether or not the run was stopped and
    resumed in between. ``done()`` says how many samples of the current epoch the training loop has already used
    (restored from a checkpoint when resuming mid-epoch); iteration starts after them. With ``crop_size(epoch,
    position)`` each index also carries the crop size of its place in the epoch's order."""

    def __init__(
        self,
        size: int,
        seed: int,
        done: Callable[[], int] = lambda: 0,
        crop_size: Callable[[int, int], int] | None = None,
    ) -> None:
        self.size, self.seed, self.done, self.epoch, self.crop_size = size, seed, done, 0, crop_size

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int] | tuple[int, int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        start = self.done()
        if self.crop_size is None:
            yield from list(zip(order, seeds))[start:]
        else:
            yield from (
                (i, s, self.crop_size(self.epoch, p)) for p, (i, s) in enumerate(zip(order, seeds)) if p >= start
            )


def collate_readable(samples: list[Sample]) -> Batch:
    """Stack the readable images (possibly none) and list what was wrong with the unreadable files."""
    images = [image for image, _ in samples if image is not None]
    problems = list(dict.fromkeys(problem for _, found in samples for problem in found))
    return (torch.stack(images) if images else torch.empty(0, 3, 0, 0)), problems


class ImageFolderDataModule(pl.LightningDataModule):
    """Random-resized square crops of ``image_size`` from ``root``; centre crops of ``val_root`` for validation.

    ``size_schedule`` ([[step, size], ...]) is progressive resolution: from each step on, crops of that size
    (cheap small crops for most steps, the full size for the last ones). Files with more than ``max_pixels``
    pixels are skipped as unreadable, before they are decoded.
    """

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
        max_pixels: int = DEFAULT_MAX_PIXELS,
        exclude: str | Sequence[str] | None = None,
        size_schedule: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__()
        try:
            self.size_schedule = [(int(step), int(size)) for step, size in size_schedule or []]
        except (TypeError, ValueError):
            self.size_schedule = []
            steps = None
        else:
            steps = [step for step, _ in self.size_schedule]
        if steps is None or steps != sorted(set(steps)) or min(steps, default=1) < 1:
            raise UserError(
                "data.size_schedule must be [[step, size], ...] with steps >= 1 in increasing order, e.g."
                f" [[250,256]] for crops of 256 px from step 250 on; got {size_schedule}"
            )
        sizes = [("image_size", image_size), ("val_size", val_size)]
        for name, value in sizes + [("size_schedule", size) for _, size in self.size_schedule]:
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
        self.max_pixels = check_max_pixels(max_pixels)
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])

    def train_files(self) -> list[Path]:
        """The training images; other sources (COCO, FiftyOne) override only this."""
        return list_images(self.root)

    def setup(self, stage: str | None = None) -> None:
        to_float = v2.ToDtype(torch.float32, scale=True)
        files = self.train_files()
        kept = without_copies(files, excluded_files(self.exclude))
        if len(kept) < len(files):
            rank_zero_info(f"data.exclude: left out {len(files) - len(kept)} of {len(files)} training images")
        resized = partial(train_transform, crop_scale=self.crop_scale)
        transform, reduction = resized(self.image_size)
        self.train_set = ImageFiles(kept, transform, self.max_pixels, reduction, substitute=True, resized=resized)
        val_paths = list_images(self.val_root, "data.val_root")[: self.val_max_images] if self.val_root else []
        self.val_set = ImageFiles(
            val_paths,
            v2.Compose(
                [v2.ToImage(), v2.Resize(self.val_size, antialias=True), v2.CenterCrop(self.val_size), to_float]
            ),
            self.max_pixels,
        )

    def samples_done(self) -> int:
        """Training samples (all processes) the loop has used in the current epoch: 0, or where a resumed run
        left off (Lightning restores its batch count from the checkpoint before it asks for the data)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return batches * self.batch_size * trainer.world_size

    def crop_size(self, epoch: int, position: int) -> int:
        """The crop size of the sample at ``position`` of ``epoch``'s order: the size ``size_schedule`` gives its
        training step. Every sample of a batch, on every process, has the same step (``samples_done``'s layout)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        steps_per_epoch = len(self.train_set) // world // self.batch_size
        step = epoch * steps_per_epoch + position // (self.batch_size * world)
        return next((size for start, size in reversed(self.size_schedule) if step >= start), self.image_size)

    def _loader(self, dataset: ImageFiles, train: bool) -> DataLoader[Batch]:
        sizes = self.crop_size if self.size_schedule else None
        sampler = ResumableSampler(len(dataset), torch.initial_seed(), self.samples_done, sizes) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else len(dataset) or 1,
            sampler=sampler,
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


def excluded_files(specs: Sequence[str]) -> list[Path]:
    """The files named by ``data.exclude``: image files, folders of images, or text files listing one path a line
    (relative to the list's folder). A missing path is an error: a typo must not silently exclude nothing."""
    files: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            files += list_images(path, "data.exclude")
        elif path.suffix.lower() == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            files += [path.parent / line for line in lines if line and not line.startswith("#")]
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"data.exclude: {path} does not exist; give image files, folders or .txt lists of paths")
    return files


def without_copies(files: list[Path], excluded: list[Path]) -> list[Path]:
    """``files`` less every file with the same bytes as one of ``excluded`` (wherever either lies: the validation
    photos are often copies inside the training folder). Only files of an excluded size are hashed."""
    if not excluded:
        return files

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    existing = [path for path in excluded if path.is_file()]
    sizes = {path.stat().st_size for path in existing}
    hashes = {digest(path) for path in existing}
    return [path for path in files if not (path.stat().st_size in sizes and digest(path) in hashes)]


class CocoDataModule(ImageFolderDataModule):
    """A local COCO download: ``root`` holds the ``split`` folder of images (train2017/, train2014/, …) and
    optionally annotations/. When annotations/captions_<split>.json or instances_<split>.json exists, it lists the
    images (captions first: it is a fifth of the size); otherwise every image in the split folder is used.
    """

    def __init__(self, root: str, split: str = "train2017", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.split = split

    def train_files(self) -> list[Path]:
        root = Path(self.root).expanduser()
        images = root / self.split
        if not images.is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise UserError(
                f"data.root={root} is not a COCO download: expected the {self.split} images in {images}/"
                f" (data.split={self.split}) and optionally annotations/captions_{self.split}.json"
                + (f"; found the folders {', '.join(found)}" if found else "")
                + "; for any other folder of photos use data=folder"
            )
        candidates = [root / "annotations" / f"{kind}_{self.split}.json" for kind in ("captions", "instances")]
        annotations = next((path for path in candidates if path.is_file()), None)
        if annotations is None:
            return list_images(images, f"data.root/{self.split}")
        listed = sorted(set(coco_file_names(annotations)))
        present = {entry.name for entry in os.scandir(images)}
        paths = [images / name for name in listed if name in present]
        if not paths:
            raise UserError(f"none of the {len(listed)} images listed in {annotations} are in {images}/")
        if len(paths) < len(listed):
            rank_zero_warn(
                f"{len(listed) - len(paths)} of the {len(listed)} images listed in {annotations} are not in"
                f" {images}/; training on the {len(paths)} that are"
            )
        return paths


def coco_file_names(annotations: Path) -> list[str]:
    """The image file names a COCO annotations file lists (its ``images[*].file_name``)."""
    try:
        with open(annotations, encoding="utf-8") as f:
            return [image["file_name"] for image in json.load(f)["images"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{annotations} is not a COCO annotations file ({type(e).__name__}: {e})") from e


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int] | str:
    """(width, height) of an image as training decodes it (upright), or what is wrong with it."""
    try:
        image = read_rgb_tensor(path, max_pixels)
    except UserError as e:
        return str(e)
    return image.shape[-1], image.shape[-2]


def check_folder(root: str | Path, size: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 1) -> int:
    """Decode every image below ``root`` as training does; print one line per unreadable file, then size
    statistics. Returns the number of unreadable files."""
    paths = list_images(root, "DIR")
    check_max_pixels(max_pixels, "--max-pixels")
    inspect = partial(inspect_image, max_pixels=max_pixels)
    sizes: list[tuple[int, int]] = []
    problems: list[str] = []
    console = Console(stderr=True)  # the progress bar, on a terminal only; the report goes to stdout, after it
    with multiprocessing.Pool(workers) if workers > 1 else nullcontext() as pool:
        results = pool.imap(inspect, paths, chunksize=16) if pool else map(inspect, paths)
        progress = track(
            results, "checking", len(paths), console=console, transient=True, disable=not console.is_terminal
        )
        for result in progress:
            if isinstance(result, str):
                problems.append(result)
            else:
                sizes.append(result)
    for problem in problems:
        print(problem)
    print(
        f"{len(paths)} images in {root}: {len(sizes)} readable, {len(problems)} unreadable"
        + " (above)" * bool(problems)
    )
    if sizes:
        for name, values in (("width", [w for w, _ in sizes]), ("height", [h for _, h in sizes])):
            print(f"{name}: min {min(values)}, median {statistics.median(values):g}, max {max(values)} px")
        small = sum(min(w, h) < size for w, h in sizes)
        print(f"{small} of {len(sizes)} smaller than {size} px on the shorter side (upscaled to {size} px crops)")
    return len(problems)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fast_style.data", description="Training-data tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="report the files training would skip, and image sizes; exit code 1 if any is unreadable"
    )
    check.add_argument("dir", help="folder of photos, searched recursively")
    check.add_argument("--size", type=int, default=256, help="crop size (data.image_size), default 256")
    check.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="data.max_pixels")
    check.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        sys.exit(1 if check_folder(args.dir, args.size, args.max_pixels, args.workers) else 0)


if __name__ == "__main__":
    main()
