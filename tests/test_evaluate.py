"""python -m fast_style.evaluate: equivalent iterations, SSIM, fair measurement, the report, and clear mistakes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from fast_style.errors import UserError
from fast_style.evaluate import LUMA, as_saved, equivalent_iterations, format_equivalent, load_content, main, ssim
from fast_style.images import to_image, to_tensor
from fast_style.model_file import save_model
from fast_style.network import TransformerNet
from fast_style.objective import file_sha256

from .conftest import ROOT, SAMPLES, photo

TERMS = {"content", "style", "tv", "total", "ssim"}


pytestmark = pytest.mark.usefixtures("one_thread")


CURVE = {50: 4.0, 100: 3.0, 200: 2.0, 300: 1.5}


@pytest.mark.parametrize(
    ("network_total", "estimate", "lower", "upper", "text"),
    [
        (2.5, 150.0, 100.0, 200.0, "150"),  # halfway between the losses at 100 and 200
        (3.0, 100.0, 50.0, 100.0, "100"),
        (4.0, 50.0, 50.0, 50.0, "50"),
        (1.75, 250.0, 200.0, 300.0, "250"),
        (1.0, None, 300.0, None, ">300"),  # better than the optimizer after 300: only a lower bound
        (9.0, None, 0.0, 50.0, "<50"),  # worse than after 50: only an upper bound
    ],
)
def test_equivalent_iterations_interpolate_inside_and_bound_outside(network_total, estimate, lower, upper, text):
    result = equivalent_iterations(network_total, CURVE)
    assert result == {"estimate": estimate, "lower": lower, "upper": upper}
    assert format_equivalent(result) == text


def test_equivalent_iterations_use_the_best_loss_reached_so_far():
    bumpy = {50: 3.0, 100: 3.5, 200: 2.0}  # the optimizer got worse between 50 and 100
    assert equivalent_iterations(3.2, bumpy)["upper"] == 50.0
    assert equivalent_iterations(2.5, bumpy)["estimate"] == pytest.approx(150.0)


def test_ssim_is_the_gaussian_window_ssim_of_the_luminance():
    a = photo(size=64)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert ssim(a, b) < 0.9
    luma = torch.tensor(LUMA).view(1, 3, 1, 1)
    ya, yb = (a * luma).sum(1, keepdim=True), (b * luma).sum(1, keepdim=True)
    _, full = structural_similarity_index_measure(yb, ya, data_range=1.0, return_full_image=True)
    assert ssim(a, b) == pytest.approx(float(full[..., 5:-5, 5:-5].mean()), abs=1e-4)  # where the window fits
    gray = a.mean(1, keepdim=True).expand_as(a)  # colour changes that keep the luminance do not count
    assert ssim(a, gray + (a * luma).sum(1, keepdim=True) - (gray * luma).sum(1, keepdim=True)) > 0.999


def test_losses_are_measured_on_the_image_as_saved():
    x = torch.rand(1, 3, 8, 8) * 1.4 - 0.2  # out-of-range values, as a raw network output could have
    saved = to_tensor(to_image(x))
    assert torch.equal(as_saved(x), saved)


def make_model(path: Path, seed: int, name: str = "starry_night") -> Path:
    torch.manual_seed(seed)
    save_model(TransformerNet(width=0.25), path, {"style": {"name": name}, "steps": seed})
    return path


@pytest.fixture(scope="module")
def content_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("content")
    shutil.copy(sorted(SAMPLES.glob("*.jpg"))[0], folder / "photo.jpg")
    return folder


FAST = ["size=48", "iterations=[2,4]", "style.size=128"]


def test_two_checkpoints_are_measured_on_the_same_photos_and_report_every_field(tmp_path, content_dir):
    a, b = make_model(tmp_path / "a.safetensors", 1), make_model(tmp_path / "b.safetensors", 2)
    out = tmp_path / "eval"
    # Measured with the starry_night config at style weight 0.3, where an untrained network is worse than 2 L-BFGS
    # iterations (asserted below); overrides change the config as for train.py.
    args = [f"style=[{a},{b}]", f"content={content_dir}", *FAST, "loss.style_weight=0.3"]
    report = main([*args, f"output={out}", f"tensorboard={tmp_path}/tb"])
    assert report == json.loads((out / "evaluation.json").read_text())
    settings = report["settings"]
    assert settings["images"] == 1 and settings["size"] == 48 and settings["iterations"] == [2, 4]
    assert {"content", "optimizer", "seed", "device", "torch", "threads"} <= set(settings)
    first, second = report["models"]
    for model, path in ((first, a), (second, b)):
        assert model["path"] == str(path) and model["steps"] in (1, 2) and Path(model["grid"]).is_file()
        yardstick = model["yardstick"]  # the starry_night config's loss with the overrides
        assert yardstick["name"] == "starry_night" and yardstick["size"] == 128
        assert yardstick["loss"]["preset"] == "johnson" and yardstick["loss"]["style_weight"] == 0.3
        assert len(yardstick["images"][0]["sha256"]) == 64
        (row,) = model["images"]
        assert Path(row["image"]).name == "photo.jpg"
        for part in (row, model["mean"]):
            assert set(part["network"]) == TERMS | {"seconds"} and set(part["photo"]) == TERMS
            assert set(part["optimizer"]) == {"2", "4"}
            assert all(set(v) == TERMS | {"seconds", "evaluations"} for v in part["optimizer"].values())
            assert set(part["equivalent_iterations"]) == {"estimate", "lower", "upper"}
        net, opt = row["network"], row["optimizer"]
        assert net["total"] == pytest.approx(net["content"] + 0.3 * net["style"] + 2.0 * net["tv"], rel=1e-4)
        assert row["photo"]["content"] < 1e-6 and row["photo"]["ssim"] == pytest.approx(1.0, abs=1e-5)
        assert opt["4"]["total"] < opt["2"]["total"] < row["photo"]["total"]  # the optimizer makes progress
        assert opt["4"]["seconds"] > opt["2"]["seconds"] > 0 and net["seconds"] > 0
        assert opt["4"]["evaluations"] >= 5 and opt["2"]["evaluations"] >= 3  # the start, then one or more per step
        # An untrained network is worse than 2 L-BFGS steps: a bound, not an invented number.
        assert row["equivalent_iterations"] == {"estimate": None, "lower": 0.0, "upper": 2.0}
    # One yardstick: the optimizer ran once and both models are compared with the same numbers.
    assert first["images"][0]["optimizer"] == second["images"][0]["optimizer"]
    assert first["images"][0]["network"]["total"] != second["images"][0]["network"]["total"]
    grid = Image.open(first["grid"])
    assert grid.size == (3 * 48 + 4 * 4, 48 + 2 * 4)  # photo | network | L-BFGS 4, one row per photo

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "tensors": 0}).Reload()
    scalars = events.Tags()["scalars"]
    assert "0_" + str(a).replace("/", "_") + "/optimizer_total" in scalars
    assert [e.step for e in events.Scalars(scalars[0])] == [0, 2, 4]
    assert len(events.Tags()["images"]) == 2


def test_evaluation_is_deterministic(tmp_path, content_dir):
    model = make_model(tmp_path / "m.safetensors", 3)
    args = [f"style={model}", f"content={content_dir}", "size=32", "iterations=[3]", "style.size=64"]

    def losses(report: dict) -> dict:
        row = report["models"][0]["images"][0]
        return {k: {t: v for t, v in row[k].items() if t != "seconds"} for k in ("network", "photo")} | {
            "optimizer": {t: v for t, v in row["optimizer"]["3"].items() if t != "seconds"}
        }

    first = main([*args, f"output={tmp_path}/1"])
    assert losses(first) == losses(main([*args, f"output={tmp_path}/2"]))
    assert Image.open(tmp_path / "1" / "grid_0_starry_night.jpg").tobytes() == (
        Image.open(tmp_path / "2" / "grid_0_starry_night.jpg").tobytes()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["size=256"], "content is not set; add content=FOLDER"),
        (["content=x", "iterations=[100,50]"], "iterations must be increasing positive integers"),
        (["content=x", "iterations=50"], "iterations must be increasing positive integers"),
        (["content=x", "size=8"], "size must be an integer of at least 32"),
        (["content=x", "max_images=0"], "max_images must be a positive integer"),
        (["content=x", "sise=256"], "Key 'sise' is not in struct; the options are style, content"),
        (["content", "x"], "could not read 'content': arguments are key=value pairs"),
        (["content=/no/such/folder"], "content=/no/such/folder is not a folder"),
        (["content={samples}", "style=nope"], "no model for style 'nope'"),
        (["content={samples}", "style={custom}"], "style 'my_style' has no config in configs/style/"),
        (["content={samples}", "loss_style=wave", "style={custom}", "loss.nope=1"], "could not apply"),
    ],
)
def test_evaluate_mistakes_are_clear(args, message, tmp_path):
    custom = make_model(tmp_path / "custom.safetensors", 0, name="my_style")
    args = [a.format(samples=SAMPLES, custom=custom) for a in args]
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
        main([*args, f"output={tmp_path}/out"])


@pytest.mark.slow
def test_the_command_line_prints_one_line_and_exits_2():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fast_style.evaluate", "size=256"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: content is not set; add content=FOLDER (the photos to evaluate on)"
    ]


def test_photos_are_centre_cropped_squares_at_the_requested_size(tmp_path):
    wide = tmp_path / "wide.png"
    image = Image.new("RGB", (120, 60), (255, 0, 0))
    image.paste((0, 0, 255), (45, 0, 75, 60))  # a blue band in the middle quarter, red around it
    image.save(wide)
    content = load_content(wide, 40)  # 120×60 → 80×40 → the middle 40×40: red, the band (px 10-30), red
    assert content.shape == (1, 3, 40, 40)
    assert torch.equal(content[0, :, 20, 20], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(content[0, :, 20, 2], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(content[0, :, 20, 37], torch.tensor([1.0, 0.0, 0.0]))


def test_a_model_is_measured_by_its_own_recorded_objective_unless_told_otherwise(tmp_path, content_dir, monkeypatch):
    """A model trained with other weights than its style's config (an experiment, a new style) is measured against
    what it was trained for; loss_style= measures it with a style config instead."""
    torch.manual_seed(3)
    monkeypatch.chdir(tmp_path)  # the recorded path is relative to the checkout, as training writes it
    painting = "data/styles/wave.jpg"
    loss = {"_target_": "fast_style.loss.PerceptualLoss", "preset": "johnson", "style_weight": 7.0, "tv_weight": 0.5}
    image = {"path": painting, "sha256": file_sha256(ROOT / painting)}
    recorded = {"style": {"name": "my_wave", "images": [image], "size": 96}, "loss": loss}
    model = tmp_path / "my_wave.safetensors"
    save_model(TransformerNet(width=0.25), model, recorded)
    settings = [f"content={content_dir}", "size=48", "iterations=[2,4]", f"cache={tmp_path / 'cache'}"]
    own = main([f"style={model}", *settings, f"output={tmp_path / 'own'}"])["models"][0]
    assert own["yardstick"]["objective"] == str(model) and own["yardstick"]["loss"]["style_weight"] == 7.0
    net = own["mean"]["network"]
    assert net["total"] == pytest.approx(net["content"] + 7.0 * net["style"] + 0.5 * net["tv"], rel=1e-4)
    # The optimizer's results were cached: a second run, of another model trained for the same objective under
    # another name (as wave_light is for wave), reads them instead of optimizing again.
    cached = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert cached == [".json", ".png"]
    twin = tmp_path / "twin.safetensors"
    save_model(TransformerNet(width=0.25), twin, {**recorded, "style": {**recorded["style"], "name": "my_wave_light"}})
    both = main([f"style=[{model},{twin}]", *settings, f"output={tmp_path / 'again'}"])["models"]
    assert both[1]["images"][0]["optimizer"] == both[0]["images"][0]["optimizer"] == own["images"][0]["optimizer"]
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == cached  # nothing new was optimized
    # Each is reported with its own record, though one yardstick served both.
    assert [(m["yardstick"]["objective"], m["yardstick"]["name"]) for m in both] == [
        (str(model), "my_wave"),
        (str(twin), "my_wave_light"),
    ]

    other = main([f"style={model}", *settings, "loss_style=wave", "style.size=128", f"output={tmp_path / 'cfg'}"])
    yardstick = other["models"][0]["yardstick"]
    assert yardstick["objective"] == "configs/style/wave.yaml" and yardstick["loss"]["style_weight"] != 7.0


def test_a_style_config_and_a_model_trained_from_it_share_the_optimizers_cache(tmp_path, content_dir, monkeypatch):
    """The config names the painting by an absolute path, the model file by one relative to the checkout: the same
    objective all the same, so the optimizer runs once."""
    monkeypatch.chdir(tmp_path)
    settings = [f"content={content_dir}", "size=48", "iterations=[2,4]", f"cache={tmp_path / 'cache'}"]
    first = make_model(tmp_path / "a.safetensors", 1)
    config = main([f"style={first}", "loss_style=wave", "style.size=128", *settings])["models"][0]
    cached = sorted((tmp_path / "cache").iterdir())
    yardstick = config["yardstick"]
    painting = "data/styles/wave.jpg"
    assert yardstick["images"][0]["path"] != painting  # written differently from what training records
    recorded = {
        "style": {"name": "wave", "images": [{"path": painting, "sha256": file_sha256(ROOT / painting)}], "size": 128},
        "loss": {"_target_": "fast_style.loss.PerceptualLoss", **yardstick["loss"]},
    }
    trained = tmp_path / "wave.safetensors"
    save_model(TransformerNet(width=0.25), trained, {**recorded, "style": {**recorded["style"], "blend": None}})
    own = main([f"style={trained}", *settings])["models"][0]
    assert own["yardstick"]["objective"] == str(trained)
    assert sorted((tmp_path / "cache").iterdir()) == cached  # nothing new was optimized
