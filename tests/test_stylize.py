"""Stylizing: any size and image mode, colour and strength controls, safe loading, stylize.py's contract."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style import Stylizer
from fast_style.errors import UserError
from fast_style.images import read_image, to_arrays, to_batch, to_tensor
from fast_style.inference import RGB_TO_YCBCR
from fast_style.model_file import save_model
from fast_style.network import TransformerNet

from .conftest import ROOT, SAMPLES, photo


def sample(size: tuple[int, int] = (517, 383)) -> Image.Image:
    return Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB").resize(size)


def test_odd_sizes_come_back_at_exactly_their_size(stylizer):
    out = stylizer(sample((517, 383)))
    assert out.size == (517, 383) and out.mode == "RGB"
    assert np.asarray(out).std() > 1  # an image, not a constant


def test_exif_rotated_portrait_photos_keep_their_displayed_orientation(stylizer, tmp_path):
    path = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90° (portrait)
    sample((64, 48)).save(path, exif=exif)
    image = read_image(path)
    assert image.size == (48, 64)
    assert stylizer(image).size == (48, 64)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "I;16"])
def test_grayscale_cmyk_palette_rgba_and_16_bit_images_work(stylizer, tmp_path, mode):
    base = sample((40, 36))
    if mode == "I;16":
        array = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        image = Image.fromarray(array)
        assert image.mode == "I;16"
    elif mode == "RGBA":
        image = base.copy()
        image.putalpha(Image.linear_gradient("L").resize(base.size))
    else:
        image = base.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image.save(tmp_path / f"in{suffix}")
    loaded = read_image(tmp_path / f"in{suffix}")
    out = stylizer(loaded)
    assert out.size == (40, 36)
    if mode == "RGBA":
        assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], np.asarray(image)[..., 3])
    if mode == "I;16":  # 16-bit values are scaled to 8 bits, not clipped to white
        assert np.abs(np.asarray(loaded.convert("L"), dtype=int) - np.asarray(base.convert("L"), dtype=int)).max() <= 1


def test_strength_zero_returns_the_photo_and_half_is_between(stylizer):
    photo = sample((64, 48))
    assert np.array_equal(np.asarray(stylizer(photo, strength=0.0)), np.asarray(photo))
    full = np.asarray(stylizer(photo), dtype=float)
    half = np.asarray(stylizer(photo, strength=0.5), dtype=float)
    assert np.abs(half - (full + np.asarray(photo, dtype=float)) / 2).max() <= 1


def test_8_bit_pixels_cross_to_the_network_and_back_unchanged():
    """Photos and video frames go to the network's device as 8-bit values: each of the 256 values v reads as
    v/255 and comes back as v; results are clamped and rounded to the nearest value."""
    arrays = np.arange(256 * 3, dtype=np.int64).reshape(1, 16, 16, 3).astype(np.uint8).repeat(2, axis=0)
    batch = to_batch(arrays)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    assert torch.equal(batch[0, :, 0, 0], torch.tensor([0, 1, 2]) / 255)
    assert np.array_equal(to_arrays(batch), arrays)
    assert np.array_equal(to_arrays(batch + 0.49 / 255), arrays)
    assert np.array_equal(to_arrays(batch + 0.51 / 255), np.minimum(arrays.astype(int) + 1, 255))
    assert to_arrays(batch - 2).max() == 0 and to_arrays(batch + 2).min() == 255
    assert torch.equal(to_tensor(Image.fromarray(arrays[0])), batch[:1])


def test_preserve_color_keeps_the_photos_chroma(stylizer):
    photo = sample((96, 64))
    content = to_tensor(photo)

    def chroma(image: Image.Image) -> torch.Tensor:
        return torch.einsum("ij,njhw->nihw", RGB_TO_YCBCR[1:], to_tensor(image))

    plain, kept = stylizer(photo), stylizer(photo, preserve_color=True)
    target = chroma(photo)
    assert (chroma(kept) - target).abs().mean() < 0.01
    assert (chroma(plain) - target).abs().mean() > 3 * (chroma(kept) - target).abs().mean()
    # ...while the luminance is the stylization's, not the photo's.
    luma = torch.einsum("ij,njhw->nihw", RGB_TO_YCBCR[:1], to_tensor(kept))
    assert (luma - torch.einsum("ij,njhw->nihw", RGB_TO_YCBCR[:1], content)).abs().mean() > 0.02


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Exploit(marker)}, f)
    torch.save({"state_dict": {"x": _Exploit(marker)}}, tmp_path / "evil2.ckpt")
    for path in (evil, tmp_path / "evil2.ckpt"):
        with pytest.raises(UserError, match="not a loadable Lightning checkpoint"):
            Stylizer.load(path)
    assert not marker.exists()


def test_an_unknown_style_name_says_how_to_get_a_model():
    with pytest.raises(UserError, match=r"no model for style 'no_such_style'.*train\.py style=no_such_style"):
        Stylizer.load("no_such_style")


def run_stylize(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "stylize.py"), *overrides], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.slow
def test_a_folder_with_a_corrupt_file_stylizes_the_rest_and_fails(model_file, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(64, 48), (50, 70)]):
        sample(size).save(photos / f"p{i}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = run_stylize(tmp_path, f"style={model_file}", f"input={photos}", "output=out", "precision=fp32")
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0_tiny.jpg", "p1_tiny.jpg"]
    assert "broken.jpg" in result.stdout + result.stderr
    assert "1 unreadable input(s) skipped" in result.stdout
    assert Image.open(tmp_path / "out" / "p1_tiny.jpg").size == (50, 70)


@pytest.mark.slow
def test_existing_outputs_and_inputs_are_never_overwritten(model_file, tmp_path):
    photo = tmp_path / "photo.jpg"
    sample((32, 32)).save(photo)
    first = run_stylize(tmp_path, f"style={model_file}", f"input={photo}", "output=out.png")
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "out.png").read_bytes()
    again = run_stylize(tmp_path, f"style={model_file}", f"input={photo}", "output=out.png")
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: 1 output file(s) exist")
    assert (tmp_path / "out.png").read_bytes() == before
    onto_input = run_stylize(tmp_path, f"style={model_file}", f"input={photo}", f"output={photo}", "overwrite=true")
    assert onto_input.returncode == 2 and "would overwrite an input image" in onto_input.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["no", "false", "'false'", "off"])
def test_overwrite_no_never_overwrites(model_file, tmp_path, spelling):
    """A string is truthy in Python: overwrite=no once replaced an existing output."""
    photo = tmp_path / "photo.jpg"
    sample((32, 32)).save(photo)
    (tmp_path / "out.png").write_bytes(b"precious")
    result = run_stylize(tmp_path, f"style={model_file}", f"input={photo}", "output=out.png", f"overwrite={spelling}")
    assert result.returncode == 2 and "exist already" in result.stderr
    assert (tmp_path / "out.png").read_bytes() == b"precious"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("style=nope",), "no model for style 'nope'"),
        (("input=/nowhere/*.jpg",), "matches no image or video file"),
        (("strength=2",), "strength=2 is not a number from 0 to 1"),
        (("precision=fp8",), "precision='fp8' is not one of auto, fp32, fp16, bf16"),
        (("backend=tensorrt",), "backend='tensorrt' is not one of auto, torch, onnxruntime"),
        (("strength=abc",), "strength='abc' is not a number from 0 to 1"),
        (("max_size=0",), "max_size=0 is not an integer from 1"),
        (("max_size=big",), "max_size='big' is not an integer"),
        (("device=5",), "device=5 is not auto, cpu, cuda, cuda:N or mps"),
        (("overwrite=maybe",), "overwrite='maybe' is not true or false"),
        (("preserve_color=sometimes",), "preserve_color='sometimes' is not true or false"),
        (("batch_size=0",), "batch_size=0 is not auto or a positive integer"),
        (("batch_size=many",), "batch_size='many' is not auto or a positive integer"),
        (("outptu=x",), "stylize has no option 'outptu'"),
        (("input=photos/café.jpg",), "quote such a value for Hydra"),
        (("input=a,b.jpg",), "add -m for a sweep"),
    ],
)
def test_stylize_mistakes_are_one_clear_line(model_file, tmp_path, overrides, message):
    args = [f"style={model_file}", f"input={SAMPLES}", *overrides]
    result = run_stylize(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[-1]]
    assert message in result.stderr and "Traceback" not in result.stderr


def stylize_quietly(styles: list, inputs: Path, output: Path | str, **options) -> int:
    from fast_style.stylize_files import stylize_files

    return stylize_files(
        [str(s) for s in styles], str(inputs), str(output), device="cpu", precision="fp32", backend="torch", **options
    )


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_same_names_in_one_run_give_separate_outputs(model_file, tmp_path):
    """2023/IMG_0001.jpg and 2024/IMG_0001.jpg, a.JPG and a.jpg, and two models of one style: once one output
    silently replaced the other."""
    photos = tmp_path / "photos"
    for name in ("2023/IMG_0001.jpg", "2024/IMG_0001.jpg", "a.JPG", "a.jpg"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        sample((24, 20)).save(photos / name, format="JPEG")
    second_model = tmp_path / "tiny_again.safetensors"
    second_model.write_bytes(model_file.read_bytes())  # same style name in its metadata
    assert stylize_quietly([model_file, second_model], photos, tmp_path / "out") == 0
    expected = [f"{stem}_{style}.jpg" for stem in ("2023/IMG_0001", "2024/IMG_0001") for style in ("tiny", "tiny_2")]
    expected += [f"{stem}_{style}.jpg" for stem in ("a", "a_2") for style in ("tiny", "tiny_2")]  # a_2: a.jpg
    assert files_below(tmp_path / "out") == sorted(expected)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batches_of_photos_give_each_photo_its_own_stylization(model_file, tmp_path, batch_size, capsys):
    """Photos of equal size share a forward pass (batch_size; 8 on a GPU): each output is still its own photo's
    stylization, as one at a time, at its own size; an unreadable file among them is skipped and said."""
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"a": (40, 32), "b": (40, 32), "c": (40, 32), "d": (28, 36), "e": (40, 32)}
    for i, (name, size) in enumerate(sizes.items()):
        Image.open(sorted(SAMPLES.glob("*.jpg"))[i]).convert("RGB").resize(size).save(photos / f"{name}.png")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    assert stylize_quietly([model_file], photos, out, batch_size=batch_size) == 1
    assert files_below(out) == [f"{name}_tiny.png" for name in sizes]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("stylized 5 image(s) with tiny") and summary.endswith(
        f"→ {out}; 1 unreadable input(s) skipped"
    )
    alone = Stylizer.load(model_file, "cpu", "fp32", backend="torch")
    for name, size in sizes.items():
        written = np.asarray(Image.open(out / f"{name}_tiny.png"), dtype=np.int16)
        expected = np.asarray(alone(read_image(photos / f"{name}.png")), dtype=np.int16)
        assert written.shape == (size[1], size[0], 3)
        assert np.abs(written - expected).max() <= 1, name  # batched convolutions may round differently


def test_batch_size_auto_batches_photos_on_a_gpu_only():
    """On a CPU a batch is no faster and needs more memory; on a GPU one photo leaves most of it idle."""
    from fast_style.stylize_files import resolve_batch_size

    on = [SimpleNamespace(device=torch.device(kind)) for kind in ("cpu", "cuda")]
    assert resolve_batch_size("auto", on[:1]) == 1
    assert resolve_batch_size("auto", on) == 8
    assert resolve_batch_size(5, on[:1]) == 5
    with pytest.raises(UserError, match="not auto or a positive integer"):
        resolve_batch_size(True, on)


def test_a_style_name_from_model_metadata_never_leaves_the_output_folder(tmp_path):
    crafted = tmp_path / "crafted.safetensors"
    save_model(TransformerNet(width=0.25), crafted, {"style": {"name": "../../escaped"}})
    photos = tmp_path / "a" / "b" / "photos"
    photos.mkdir(parents=True)
    sample((24, 20)).save(photos / "p.jpg")
    assert stylize_quietly([crafted], photos, tmp_path / "a" / "b" / "out") == 0
    assert files_below(tmp_path) == ["a/b/out/p_escaped.jpg", "a/b/photos/p.jpg", "crafted.safetensors"]


@pytest.mark.parametrize("output", ["out/run_v1.2/", "out/run_v1.2", "existing.png"])
def test_an_output_with_dots_a_trailing_slash_or_an_existing_folder_is_a_folder(model_file, tmp_path, output):
    (tmp_path / "existing.png").mkdir()
    sample((24, 20)).save(tmp_path / "p.jpg")
    assert stylize_quietly([model_file], tmp_path / "p.jpg", tmp_path / output) == 0
    assert (tmp_path / output / "p_tiny.jpg").is_file()


def test_an_unwritable_output_folder_is_one_line_before_any_work(model_file, tmp_path):
    sample((24, 20)).save(tmp_path / "p.jpg")
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write the output to .*a_file/out"):
        stylize_quietly([model_file], tmp_path / "p.jpg", tmp_path / "a_file" / "out")


@pytest.mark.parametrize("max_size", [None, 2])
def test_tiny_images_and_max_size_2_do_not_stop_a_folder(model_file, tmp_path, max_size):
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"dot.png": (1, 1), "three_by_two.png": (3, 2), "strip.png": (40, 3), "photo.jpg": (48, 36)}
    for name, size in sizes.items():
        sample(size).save(photos / name)
    assert stylize_quietly([model_file], photos, tmp_path / "out", max_size=max_size) == 0
    for name, size in sizes.items():
        out = Image.open(tmp_path / "out" / f"{Path(name).stem}_tiny{Path(name).suffix}")
        expected = Image.new("RGB", size)
        if max_size:
            expected.thumbnail((max_size, max_size))  # as stylizing shrinks (never enlarges)
        assert out.size == expected.size, name


def test_bf16_output_layer_tanh_and_8_bit_conversion_run_in_fp32():
    """In bf16 the output had only bf16's 8-bit mantissa (steps of 1/256 near white), which bands smooth skies
    once converted to 8-bit pixels. The body of the network still runs in bf16 (that is its speed-up); its
    rounding leaves noise of well under one level on average, not bands."""
    torch.manual_seed(0)
    net = TransformerNet().eval()  # full width: bf16 is emulated on CPUs without AVX512-BF16, so a small photo
    x = photo(size=96)
    out = Stylizer(net, {}, "cpu", "bf16").stylize_tensor(x)
    assert (out.bfloat16().float() == out).float().mean() < 0.01  # was 1.0: every value on the bf16 grid
    reference = Stylizer(net, {}, "cpu", "fp32").stylize_tensor(x)
    levels = (out * 255 + 0.5).floor() - (reference * 255 + 0.5).floor()
    assert levels.abs().mean() < 0.7 and levels.abs().max() <= 6
    with torch.autocast("cpu", torch.bfloat16):
        assert net(x).dtype == torch.float32


def wide_gamut_copy(folder: Path, suffix: str) -> tuple[Path, np.ndarray]:
    """A real photo stored in Adobe RGB (its pixels converted, the profile embedded), and its sRGB pixels."""
    import io

    from PIL import ImageCms

    from .conftest import adobe_rgb_icc

    icc = adobe_rgb_icc()
    original = sample((96, 64))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    wide = ImageCms.profileToProfile(original, srgb, ImageCms.ImageCmsProfile(io.BytesIO(icc)), renderingIntent=1)
    assert np.abs(np.asarray(wide, int) - np.asarray(original, int)).max() > 20  # the stored values differ
    path = folder / f"wide{suffix}"
    wide.save(path, icc_profile=icc, **({"quality": 100, "subsampling": 0} if suffix == ".jpg" else {}))
    return path, np.asarray(original, dtype=int)


def test_photos_with_a_wide_gamut_profile_are_read_as_srgb_everywhere(tmp_path):
    from fast_style.data import read_rgb_tensor

    png, original = wide_gamut_copy(tmp_path, ".png")
    assert np.abs(np.asarray(read_image(png), int) - original).max() <= 2  # stylizing, evaluation
    assert np.abs(read_rgb_tensor(png).permute(1, 2, 0).numpy().astype(int) - original).max() <= 2  # training
    jpeg, _ = wide_gamut_copy(tmp_path, ".jpg")  # training's fast JPEG decoder knows no profiles: not used here
    assert np.array_equal(read_rgb_tensor(jpeg).permute(1, 2, 0).numpy(), np.asarray(read_image(jpeg)))
    unconverted = np.abs(np.asarray(Image.open(jpeg).convert("RGB"), int) - original)
    converted = np.abs(read_rgb_tensor(jpeg).permute(1, 2, 0).numpy().astype(int) - original)
    assert converted.mean() < 0.7 * unconverted.mean()


def test_strength_zero_gives_back_a_wide_gamut_photo_in_its_own_colours_tagged_srgb(model_file, tmp_path):
    from PIL import ImageCms

    png, original = wide_gamut_copy(tmp_path, ".png")
    assert stylize_quietly([model_file], png, tmp_path / "out.png", strength=0.0) == 0
    written = Image.open(tmp_path / "out.png")
    assert np.abs(np.asarray(written.convert("RGB"), int) - original).max() <= 2
    profile = ImageCms.ImageCmsProfile(__import__("io").BytesIO(written.info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)
