"""Data-loading throughput, next to what a training step consumes.

    python benchmarks/data.py [--root ../shared/data/train_photos] [--batches 50] [--size 256] [--batch 4]

Decoders: ms per JPEG (about 100, spread over ``--root``) in one process, for Pillow and torchvision's decode_jpeg
at full size (what training uses with the default 256 px crops of COCO-sized photos) and for Pillow's draft mode at
the reduction that 128 px crops allow. Loader: images/s out of ImageFolderDataModule's training loader (decode,
random-resized crop, flip) with 0, 1 and 2 worker processes, timed after one warm-up batch. Step: images/s that the
default training step consumes (vgg19, johnson layers), measured as benchmarks/train_step.py does.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torchvision.transforms import v2
from train_step import median_seconds, our_step

from fast_style.config import cpu_precision
from fast_style.data import ImageFolderDataModule, crop_reduction, read_rgb_tensor
from fast_style.images import list_images, read_image

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "train_photos"  # beside the checkout
DECODE_PASSES = 9


def decode_all(decode: Callable[[Path], object], paths: list[Path]) -> None:
    for path in paths:
        decode(path)


def loader_images_per_s(root: Path, size: int, batch: int, workers: int, batches: int) -> float:
    """Images/s out of the training loader, after a warm-up batch (which starts the workers)."""
    data = ImageFolderDataModule(str(root), image_size=size, batch_size=batch, num_workers=workers)
    data.setup()
    loader = iter(data.train_dataloader())
    next(loader)
    start = time.perf_counter()
    images = sum(len(next(loader)[0]) for _ in range(batches))
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of training photos")
    parser.add_argument("--batches", type=int, default=50, help="batches timed per loader")
    parser.add_argument("--size", type=int, default=256, help="crop size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="timed training steps")
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"skipped: {args.root} does not exist; pass --root with a folder of photos")
        return
    torch.manual_seed(0)
    jpegs = [p for p in list_images(args.root) if p.suffix.lower() in (".jpg", ".jpeg")]
    jpegs = jpegs[:: max(1, len(jpegs) // 100)]  # about 100, spread over the folder
    half = partial(crop_reduction, size=128, min_scale=0.5)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads;"
        f" {args.root}; {len(jpegs)} JPEGs for decoding, crops {args.size} px, batch {args.batch}"
    )
    print(f"| decoder (one process, median of {DECODE_PASSES} round-robin passes) | ms / image |\n|---|---|")
    decoders = {
        "Pillow, full size": lambda p: v2.functional.to_image(read_image(p)),
        "torchvision decode_jpeg, full size (training, 256 px crops)": read_rgb_tensor,
        "Pillow draft mode at the reduction for 128 px crops": partial(read_rgb_tensor, reduction=half),
    }
    passes = [partial(decode_all, decode, jpegs) for decode in decoders.values()]
    for name, seconds in zip(decoders, median_seconds(passes, DECODE_PASSES)):
        print(f"| {name} | {seconds / len(jpegs) * 1000:.2f} |")

    print("\n| loader | images/s |\n|---|---|")
    rates = {}
    for workers in (0, 1, 2):
        rates[workers] = loader_images_per_s(args.root, args.size, args.batch, workers, args.batches)
        print(f"| {workers} workers | {rates[workers]:.1f} |")
    batch = torch.rand(args.batch, 3, args.size, args.size)
    precision = cpu_precision()
    (seconds,) = median_seconds([our_step(batch, torch.rand(1, 3, 256, 256), "vgg19", precision)], args.rounds)
    consumed = args.batch / seconds
    print(f"| training step consumes ({precision}, median of {args.rounds}) | {consumed:.2f} |")
    print(" ".join(f"loader_{w}={rate:.1f}" for w, rate in rates.items()) + f" step={consumed:.2f}")


if __name__ == "__main__":
    main()
