"""Training data: every kind of image decodes or is skipped (never a crash), fast JPEG decoding that keeps crop
quality, `python -m fast_style.data check`, and local COCO downloads (data=coco)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from fast_style.data import (
    CocoDataModule,
    ImageFiles,
    ImageFolderDataModule,
    check_folder,
    crop_reduction,
    read_rgb_tensor,
)
from fast_style.errors import UserError
from fast_style.images import read_image
from fast_style.model_file import read_metadata

from .conftest import FAST, ROOT, SAMPLES, run_train
from .test_training import events, only_run

LIMIT = 1_000_000  # data.max_pixels in these tests, so that an ordinary 1200x1000 image counts as too large
# Decoded (upright) sizes of the good files below.
GOOD = {
    "photo.jpg": (640, 480),
    "gray.jpg": (320, 240),
    "cmyk.jpg": (320, 240),
    "rgba.png": (80, 64),
    "palette.png": (80, 64),
    "sixteen_bit.png": (80, 64),
    "exif_rotated.jpg": (64, 96),  # stored 96x64, EXIF orientation 6 (rotate 90°)
    "tiny.png": (12, 9),  # smaller than any crop: upscaled, not skipped
}
BAD = ["bomb.png", "corrupt.png", "empty.jpg", "notes.jpg", "too_large.png", "truncated.jpg"]


def png(width: int, height: int, pixels: bytes) -> bytes:
    """A grayscale PNG that claims ``width`` x ``height`` whatever ``pixels`` (raw scanlines) holds."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder with one file of every kind training meets: good ones in every mode, and bad ones."""
    folder = tmp_path_factory.mktemp("photos")
    base = Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB").resize((640, 480))
    base.save(folder / "photo.jpg", quality=90)
    small = base.resize((320, 240))
    small.convert("L").save(folder / "gray.jpg")
    small.convert("CMYK").save(folder / "cmyk.jpg")
    rgba = base.resize((80, 64))
    rgba.putalpha(Image.linear_gradient("L").resize((80, 64)))
    rgba.save(folder / "rgba.png")
    base.resize((80, 64)).convert("P").save(folder / "palette.png", transparency=0)
    gray16 = np.asarray(base.resize((80, 64)).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(folder / "sixteen_bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.resize((96, 64)).save(folder / "exif_rotated.jpg", exif=exif)
    base.resize((12, 9)).save(folder / "tiny.png")

    (folder / "bomb.png").write_bytes(png(20000, 20000, b"\0" * 64))  # 400 Mpixel claimed in 100 bytes
    (folder / "too_large.png").write_bytes(png(1200, 1000, b"\0" * 1201 * 1000))  # only above data.max_pixels
    corrupt = bytearray((folder / "rgba.png").read_bytes())
    start = corrupt.index(b"IDAT") + 20
    corrupt[start : start + 40] = bytes(b ^ 0x55 for b in corrupt[start : start + 40])
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "truncated.jpg").write_bytes((folder / "photo.jpg").read_bytes()[:4000])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_good_files_of_every_kind_become_crops_and_bad_ones_are_reported_not_raised(photos):
    data = ImageFolderDataModule(str(photos), image_size=64, num_workers=0, max_pixels=LIMIT)
    data.setup()
    samples = {path.name: data.train_set[i] for i, path in enumerate(data.train_set.paths)}
    assert sorted(samples) == sorted([*GOOD, *BAD])
    for name in GOOD:
        image, problems = samples[name]
        assert problems == [] and image.shape == (3, 64, 64) and 0 <= image.min() <= image.max() <= 1, name
    for name in BAD:  # reported, and the next readable file in the list stands in: batches stay full
        image, problems = samples[name]
        assert image is not None and image.shape == (3, 64, 64) and problems[0].startswith(f"{photos / name} "), name
    validation = ImageFiles(data.train_set.paths, v2.ToDtype(torch.float32, scale=True), LIMIT)  # no stand-ins
    for i, path in enumerate(validation.paths):
        assert (validation[i][0] is None) == (path.name in BAD), path.name


def test_a_folder_of_nothing_but_unreadable_files_stops_training_with_one_line(photos, tmp_path):
    """It once "trained" on empty batches and exported the untouched initial weights."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in BAD:
        shutil.copy(photos / name, bad)
    result = run_train(
        tmp_path,
        *FAST,
        f"data.root={bad}",
        "data.batch_size=2",
        "trainer.max_steps=2",
        f"data.max_pixels={LIMIT}",
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: none of the training files could be read")
    assert "Traceback" not in result.stderr and not list(tmp_path.rglob("*.safetensors"))


def test_decoded_images_are_upright_rgb_at_their_displayed_size(photos):
    for name, (width, height) in GOOD.items():
        assert read_rgb_tensor(photos / name).shape == (3, height, width), name
    sixteen = np.asarray(Image.open(photos / "sixteen_bit.png"), dtype=np.float64)
    eight = read_rgb_tensor(photos / "sixteen_bit.png")[0].numpy()
    assert np.abs(eight - sixteen / 257).max() <= 0.5  # 16-bit values scaled to 8 bits, not clipped to white


def test_full_size_jpegs_decode_to_the_same_pixels_as_pillow(photos):
    for name in ("photo.jpg", "gray.jpg", "cmyk.jpg", "exif_rotated.jpg"):
        pillow = torch.from_numpy(np.array(read_image(photos / name).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(read_rgb_tensor(photos / name), pillow), name


def test_jpegs_decode_smaller_only_when_every_random_crop_keeps_its_full_size():
    assert crop_reduction(640, 480, size=256, min_scale=0.5) == 1  # COCO at the defaults: smallest crop 339 px
    assert crop_reduction(640, 480, size=128, min_scale=0.5) == 2
    assert crop_reduction(4032, 3024, size=256, min_scale=0.5) == 8
    for (width, height), size in [((640, 480), 64), ((640, 480), 128), ((4032, 3024), 256), ((5000, 600), 64)]:
        factor = crop_reduction(width, height, size, min_scale=0.5)
        reduced = torch.empty(1, -(-height // factor), -(-width // factor))  # what draft mode decodes
        for _ in range(500):
            *_, crop_height, crop_width = RandomResizedCrop.get_params(reduced, [0.5, 1.0], [3 / 4, 4 / 3])
            assert min(crop_height, crop_width) >= size - 1  # (-1: rounding of the crop size)


def test_draft_decoding_shrinks_the_jpeg_as_allowed(photos):
    reduction = partial(crop_reduction, size=64, min_scale=0.5)
    assert read_rgb_tensor(photos / "photo.jpg", reduction=reduction).shape == (3, 120, 160)  # 1/4
    assert read_rgb_tensor(photos / "cmyk.jpg", reduction=reduction).shape == (3, 120, 160)  # 1/2


def test_images_above_the_pixel_limit_are_refused_before_decoding(photos):
    with pytest.raises(UserError, match="could be decompression bomb"):  # Pillow's own limit
        read_rgb_tensor(photos / "bomb.png")
    read_rgb_tensor(photos / "too_large.png")
    with pytest.raises(UserError, match=r"1200x1000 = 1200000 pixels, more than the limit of 1000000 \(data.max"):
        read_rgb_tensor(photos / "too_large.png", max_pixels=LIMIT)
    with pytest.raises(UserError, match="data.max_pixels must be an integer from 1 to 178956970"):
        ImageFolderDataModule(str(photos), max_pixels=10**9)


def test_data_check_reports_each_unreadable_file_and_the_sizes(photos):
    command = [sys.executable, "-m", "fast_style.data", "check", str(photos), "--size", "100"]
    result = subprocess.run([*command, f"--max-pixels={LIMIT}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    for name in BAD:
        (line,) = [line for line in lines if line.startswith(f"{photos / name} ")]
        assert "pixels" in line or "not a readable image (" in line  # the reason
    assert f"14 images in {photos}: 8 readable, 6 unreadable (above)" in lines
    assert "width: min 12, median 80, max 640 px" in lines
    assert "height: min 9, median 80, max 480 px" in lines
    assert "5 of 8 smaller than 100 px on the shorter side (upscaled to 100 px crops)" in lines
    assert "Warning" not in result.stderr


def test_data_check_of_a_clean_folder_is_silent_about_files(capsys):
    assert check_folder(SAMPLES, size=256) == 0
    assert capsys.readouterr().out.startswith(f"12 images in {SAMPLES}: 12 readable, 0 unreadable\n")
    with pytest.raises(UserError, match="DIR=/nowhere is not a folder"):
        check_folder("/nowhere")


@pytest.mark.slow
def test_training_skips_counts_logs_and_lists_every_bad_file(photos, tmp_path):
    result = run_train(
        tmp_path, *FAST, f"data.root={photos}", f"data.batch_size={len(GOOD) + len(BAD)}", "data.num_workers=1",
        f"data.max_pixels={LIMIT}", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
        "export.path=model.safetensors",
    )  # fmt: skip
    assert read_metadata(tmp_path / "model.safetensors")["steps"] == 2
    run_dir = only_run(tmp_path / "logs")
    assert [e.value for e in events(run_dir).Scalars("data/unreadable_files")] == [6.0, 6.0]
    output = result.stdout + result.stderr
    for name in BAD:  # one warning per file, however often it comes up
        assert output.count(f"skipping an unreadable training file: {photos / name} ") == 1
    listing = run_dir / "unreadable_files.txt"
    assert f"skipped 6 unreadable training files; they are listed in {listing}" in output
    assert [line.split(" ")[0] for line in listing.read_text().splitlines()] == [str(photos / n) for n in BAD]


def coco_download(root: Path, split: str, names: list[str], annotated: list[str] | None) -> Path:
    """A COCO-layout folder: real COCO photos as ``<split>/<name>``, and an annotations file if ``annotated``."""
    (root / split).mkdir(parents=True)
    for source, name in zip(sorted(SAMPLES.glob("*.jpg")), names):
        shutil.copy(source, root / split / name)
    if annotated is not None:
        (root / "annotations").mkdir()
        images = [{"id": i, "file_name": name, "width": 640, "height": 480} for i, name in enumerate(annotated)]
        annotations = {"images": images, "annotations": [], "categories": []}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(annotations))
    return root


NAMES = [f"{i:012d}.jpg" for i in range(1, 7)]


def test_coco_trains_on_the_images_its_annotations_list_that_are_there(tmp_path):
    root = coco_download(tmp_path, "train2017", NAMES, annotated=[*NAMES[:4], "000000999999.jpg"])
    with pytest.warns(UserWarning, match="1 of the 5 images listed in .* are not in"):
        files = CocoDataModule(str(root)).train_files()
    assert [p.name for p in files] == NAMES[:4]


def test_coco_without_annotations_trains_on_every_image_of_the_split(tmp_path):
    root = coco_download(tmp_path, "train2014", NAMES, annotated=None)
    assert [p.name for p in CocoDataModule(str(root), split="train2014").train_files()] == NAMES


def test_a_folder_that_is_not_a_coco_download_gets_one_line_saying_what_was_expected(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(UserError) as error:
        CocoDataModule(str(tmp_path)).train_files()
    message = str(error.value)
    assert "\n" not in message
    assert (
        f"data.root={tmp_path} is not a COCO download: expected the train2017 images in {tmp_path}/train2017/"
        in message
    )
    assert "found the folders photos" in message and "data=folder" in message


@pytest.mark.slow
def test_training_on_a_local_coco_download(tmp_path):
    root = coco_download(tmp_path / "coco", "val2017", NAMES, annotated=NAMES)
    run_train(
        tmp_path, *FAST, "data=coco", f"data.root={root}", "data.split=val2017", "trainer.max_steps=2",
        "export.path=model.safetensors",
    )  # fmt: skip
    meta = read_metadata(tmp_path / "model.safetensors")
    assert (
        meta["steps"] == 2 and meta["data"]["split"] == "val2017" and meta["data"]["root"] == root.name
    )  # outside the checkout: by name


def test_excluded_photos_are_left_out_by_content_wherever_they_lie(tmp_path):
    photos, elsewhere = tmp_path / "photos", tmp_path / "validation"
    (photos / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    samples = sorted(SAMPLES.glob("*.jpg"))[:6]
    for index, path in enumerate(samples):
        shutil.copy(path, photos / ("sub" if index % 2 else "") / f"train_{index}.jpg")
    shutil.copy(samples[0], elsewhere / "val.jpg")  # a copy under another name: found by its bytes
    (tmp_path / "list.txt").write_text(f"# held out\n{photos / 'sub' / 'train_3.jpg'}\n")
    module = ImageFolderDataModule(
        str(photos), image_size=32, batch_size=1, exclude=[str(elsewhere), str(tmp_path / "list.txt")]
    )
    module.setup()
    assert sorted(p.name for p in module.train_set.paths) == [
        "train_1.jpg",
        "train_2.jpg",
        "train_4.jpg",
        "train_5.jpg",
    ]
    with pytest.raises(UserError, match=r"data.exclude: .*nowhere does not exist"):
        ImageFolderDataModule(str(photos), exclude=str(tmp_path / "nowhere")).setup()


def test_training_crops_are_square_cuts_of_the_photo_not_stretched(tmp_path):
    # A checkerboard of square 10 px cells: a square crop shows as many cells across as down; a crop stretched
    # to 3:4 or 4:3 (RandomResizedCrop's default ratio range) shows up to a third more one way.
    (tmp_path / "photos").mkdir()
    cells = (np.indices((100, 200)) // 10).sum(0) % 2
    Image.fromarray((cells * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "photos" / "board.png")
    module = ImageFolderDataModule(str(tmp_path / "photos"), image_size=40, crop_scale=(0.5, 0.5), batch_size=1)
    module.setup()
    for _ in range(20):
        crop = module.train_set[0][0][0] > 0.5
        across = int((crop[20, 1:] != crop[20, :-1]).sum())
        down = int((crop[1:, 20] != crop[:-1, 20]).sum())
        assert abs(across - down) <= 1, (across, down)


def test_progressive_resolution_switches_crop_size_at_the_scheduled_steps_across_epochs():
    # 12 photos in batches of 5 are 2 steps an epoch (the last 2 photos dropped): steps 0-1, 2-3, 4-5.
    torch.manual_seed(0)
    module = ImageFolderDataModule(
        str(SAMPLES), val_root=None, image_size=32, batch_size=5, num_workers=1, size_schedule=[[3, 48], [5, 64]]
    )
    module.setup()
    loader = module.train_dataloader()
    sizes = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        sizes += [tuple(images.shape[-2:]) for images, _ in loader]
    assert sizes == [(32, 32)] * 3 + [(48, 48)] * 2 + [(64, 64)]


def test_progressive_resolution_keeps_each_steps_size_when_resumed_mid_epoch():
    torch.manual_seed(0)
    module = ImageFolderDataModule(str(SAMPLES), val_root=None, image_size=32, batch_size=2, size_schedule=[[2, 48]])
    module.setup()
    full = [images for images, _ in module.train_dataloader()]
    module.samples_done = lambda: 2  # resumed after the first step of the epoch
    resumed = [images for images, _ in module.train_dataloader()]
    assert [tuple(x.shape) for x in full] == [(2, 3, 32, 32)] * 2 + [(2, 3, 48, 48)] * 4
    for before, after in zip(full[1:], resumed, strict=True):  # the same crops, at the same sizes
        torch.testing.assert_close(before, after, rtol=0, atol=0)


@pytest.mark.parametrize(
    "schedule", [256, [[0, 256]], [[5, 256], [3, 128]], [[5, 256], [5, 128]], [["soon", 256]], [[1, 2, 3]]]
)
def test_a_size_schedule_that_is_not_increasing_steps_and_sizes_is_one_line(schedule):
    with pytest.raises(UserError, match=r"data.size_schedule must be \[\[step, size\], ...\]"):
        ImageFolderDataModule(str(SAMPLES), size_schedule=schedule)
    with pytest.raises(UserError, match="data.size_schedule must be a multiple of 4 and at least 16, got 250"):
        ImageFolderDataModule(str(SAMPLES), size_schedule=[[5, 250]])
