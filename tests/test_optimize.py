"""Optimization-based stylization: it lowers the real loss, keeps valid images, follows blend weights; stylize.py."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from fast_style.config import compose_train_config
from fast_style.errors import UserError
from fast_style.images import to_tensor
from fast_style.objective import build_loss, load_style_image
from fast_style.optimize import (
    check_method,
    initial_image,
    optimize_argv,
    optimize_files,
    optimize_image,
    projected_lbfgs,
)
from fast_style.paths import CONFIG_DIR

from .conftest import ROOT, SAMPLES, SHARED_DATA, STYLES

SHARED_PHOTO = SHARED_DATA / "content" / "amber.jpg"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_photo(size: int = 64) -> torch.Tensor:
    """A real photo (the shared content set's, else a bundled sample), long side ``size``."""
    path = SHARED_PHOTO if SHARED_PHOTO.is_file() else sorted(SAMPLES.glob("*.jpg"))[0]
    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return to_tensor(image)


@pytest.fixture(scope="module")
def starry_loss():
    """The starry_night style's own training loss (johnson layers, its weights), style image at 128 px."""
    return build_loss(compose_train_config(["style=starry_night", "style.size=128"]))


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_optimization_halves_the_loss_in_20_iterations_and_keeps_valid_images(starry_loss, optimizer):
    content = small_photo()
    seen = []
    result = optimize_image(starry_loss, content, 20, optimizer, on_step=lambda s: seen.append(s))
    assert [s.iteration for s in seen] == list(range(1, 21))
    assert all(s.image.min() >= 0 and s.image.max() <= 1 for s in seen)  # every iterate is a valid image
    assert result.image.shape == content.shape and len(result.history) == 21
    assert result.history[20]["loss"] < 0.5 * result.history[0]["loss"]
    if optimizer == "lbfgs":  # its line search never lets the loss go up
        assert all(b["loss"] <= a["loss"] for a, b in itertools.pairwise(result.history))
    assert result.history[0]["content"] < 1e-6  # initialised from the photo
    # The last entry is the loss of the returned image itself.
    assert starry_loss(result.image, content)["loss"].item() == pytest.approx(result.history[-1]["loss"], rel=1e-4)


def test_projected_lbfgs_finds_the_minimum_inside_the_bounds():
    """An ill-conditioned quadratic whose unconstrained minimum lies partly outside [0, 1]: the answer is its
    clamp, and the loss never goes up on the way."""
    target = torch.linspace(-0.5, 1.5, 48).view(1, 3, 4, 4)
    curvature = torch.linspace(0.5, 20.0, 48).view_as(target)

    def evaluate(x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        residual = x - target
        return {"loss": float(0.5 * (curvature * residual**2).sum())}, curvature * residual

    history: list[dict[str, float]] = []
    iterates = list(projected_lbfgs(evaluate, torch.full_like(target, 0.5), 40, 1.0, history))
    assert len(iterates) == 40 and len(history) == 41
    assert all(x.min() >= 0 and x.max() <= 1 for x in iterates)
    assert torch.allclose(iterates[-1], target.clamp(0, 1), atol=1e-4)
    assert all(b["loss"] <= a["loss"] for a, b in itertools.pairwise(history))


def test_noise_inits_are_seeded_and_mix_lies_between():
    content = small_photo(32)
    a = initial_image(content, "noise", 0.5, torch.Generator().manual_seed(1))
    b = initial_image(content, "noise", 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, initial_image(content, "noise", 0.5, torch.Generator()))
    mix = initial_image(content, "mix", 0.25, torch.Generator().manual_seed(1))
    assert torch.allclose(mix, 0.75 * content + 0.25 * a)


def test_blend_weights_pull_the_result_towards_their_style():
    """Mostly-starry-night targets give an image closer to starry night's Gram matrices than mostly-wave ones."""
    loss = build_loss(compose_train_config(["style=starry_night", "style.size=64", "loss.tv_weight=0"]))
    styles = [load_style_image(STYLES / name, 64) for name in ("starry_night.jpg", "wave.jpg")]
    content = small_photo(48)
    results = {}
    for blend in ((0.8, 0.2), (0.2, 0.8)):
        loss.set_style(styles, blend)
        results[blend] = optimize_image(loss, content, 15).image
    style_loss = {}
    for index, target in enumerate(styles):
        loss.set_style([target])
        style_loss[index] = {blend: loss(image, content)["style"].item() for blend, image in results.items()}
    assert style_loss[0][(0.8, 0.2)] < style_loss[0][(0.2, 0.8)]  # closer to starry night
    assert style_loss[1][(0.2, 0.8)] < style_loss[1][(0.8, 0.2)]  # closer to the wave


def test_style_and_loss_options_move_into_optimize_overrides():
    argv = ["stylize.py", "method=optimize", "style.image=/p/my painting.jpg", "loss=gatys", "+loss.pooling=avg"]
    assert optimize_argv(argv) == [
        "stylize.py",
        "method=optimize",
        "style=my painting",
        "optimize.overrides=['style.image=/p/my painting.jpg','loss=gatys','loss.pooling=avg']",
    ]
    named = optimize_argv(["x", "style=wave", "style.image=[a.jpg,b.jpg]", "style.blend=[1,2]"])
    assert named == ["x", "style=wave", "optimize.overrides=['style.image=[a.jpg,b.jpg]','style.blend=[1,2]']"]
    assert optimize_argv(["x", "style=wave", "input=a.jpg"]) == ["x", "style=wave", "input=a.jpg"]


def stylize_config(*args: str):
    """stylize.py's config for a command line, as its __main__ would compose it."""
    with initialize_config_dir(str(CONFIG_DIR / "stylize"), version_base="1.3"):
        return compose("stylize", overrides=optimize_argv(["stylize.py", *args])[1:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["method=fast"], "method must be feedforward or optimize"),
        (["style.image=p.jpg"], "only method=optimize uses"),
        (["method=optimize", "optimize.optimizer=sgd"], "optimize.optimizer must be one of lbfgs, adam"),
        (["method=optimize", "optimize.init=zeros"], "optimize.init must be one of content, noise, mix"),
        (["method=optimize", "optimize.iterations=0"], "optimize.iterations must be a positive integer"),
        (["method=optimize", "optimize.lr=-1"], "optimize.lr must be a number > 0"),
        (["method=optimize", "style=m.safetensors"], "needs a style name from configs/style/"),
        (["method=optimize", "style=nope"], "unknown style 'nope'"),
        (["method=optimize", "style.image=/no/such.jpg"], "style image /no/such.jpg does not exist"),
        (["method=optimize", "loss.nope=1"], "could not apply"),
    ],
)
def test_optimize_mistakes_are_clear(args, message, tmp_path):
    cfg = stylize_config(*args, f"input={SAMPLES}", f"output={tmp_path}")
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        check_method(cfg)
        optimize_files(cfg)


@pytest.mark.slow
def test_stylize_py_optimizes_a_photo_with_a_new_style_and_saves_snapshots(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).save(photo)
    command = [sys.executable, str(ROOT / "stylize.py"), "method=optimize", f"style.image={STYLES / 'wave.jpg'}"]
    command += [f"input={photo}", "output=out.png", "optimize.iterations=4", "optimize.save_every=2"]
    command += ["max_size=48", "style.size=64", "loss=gatys", "loss.pooling=avg"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "after 4 lbfgs iterations" in result.stdout
    out, original = Image.open(tmp_path / "out.png"), Image.open(photo)
    assert max(out.size) == 48 and out.width / out.height == pytest.approx(original.width / original.height, rel=0.05)
    assert (tmp_path / "out_0002.png").is_file() and not (tmp_path / "out_0004.png").exists()


def test_existing_outputs_and_inputs_are_never_overwritten(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).save(photo)
    with pytest.raises(UserError, match="would overwrite an input image"):
        optimize_files(stylize_config("method=optimize", f"input={photo}", f"output={photo}"))
    (tmp_path / "photo_wave.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="1 output file.s. exist already, e.g. .*photo_wave.jpg; pass overwrite=true"):
        optimize_files(stylize_config("method=optimize", "style=wave", f"input={photo}", f"output={tmp_path}"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_optimization_on_the_gpu_matches_the_cpu(starry_loss):
    content = small_photo()
    cpu = optimize_image(starry_loss, content, 10)
    gpu_loss = build_loss(compose_train_config(["style=starry_night", "style.size=128"])).to("cuda")
    gpu = optimize_image(gpu_loss, content.to("cuda"), 10)
    assert gpu.image.device.type == "cuda"
    assert gpu.history[-1]["loss"] == pytest.approx(cpu.history[-1]["loss"], rel=0.05)


def test_an_image_too_small_for_the_loss_network_is_reported_and_skipped(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).resize((3, 2)).save(photos / "a_tiny.png")
    Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).save(photos / "b_photo.jpg")
    cfg = stylize_config(
        "method=optimize", "style=wave", "style.size=64", f"input={photos}", f"output={tmp_path / 'out'}",
        "optimize.iterations=1", "max_size=32",
    )  # fmt: skip
    assert optimize_files(cfg) == 1
    printed = capsys.readouterr().out  # on one line, however long the path: it can be copied
    assert f"{photos / 'a_tiny.png'} is 3x2 after max_size; the loss network needs at least 8 px" in printed
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b_photo_wave.jpg"]
