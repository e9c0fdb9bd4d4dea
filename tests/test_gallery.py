"""The gallery: a contact sheet of photos × styles and each model's training record."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fast_style.errors import UserError
from fast_style.gallery import main, shown_path
from fast_style.model_file import save_model
from fast_style.network import TransformerNet

from .conftest import ROOT, SAMPLES


def test_contact_sheet_has_a_row_per_photo_and_a_column_per_style_and_records(tmp_path):
    models = []
    for i, name in enumerate(["inky", "pastel"]):
        torch.manual_seed(i)
        models.append(tmp_path / f"{name}.safetensors")
        metadata = {"style": {"name": name}, "steps": 1000 + i, "losses": {"train/content": 0.5, "train/style": 0.25}}
        save_model(TransformerNet(width=0.25), models[-1], {**metadata, "train_seconds": 5400, "hardware": "CPU"})
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(SAMPLES.glob("*.jpg"))[:2]:
        shutil.copy(path, photos)
    output = tmp_path / "docs" / "gallery.md"

    main([f"styles=[{models[0]},{models[1]}]", f"content={photos}", "size=48", f"output={output}"])

    sheet = np.asarray(Image.open(tmp_path / "docs" / "gallery" / "contact_sheet.jpg"), dtype=np.float32)
    assert sheet.shape == (2 * 48, 3 * 48, 3)
    photo, inky, pastel = (sheet[:48, 48 * c : 48 * (c + 1)] for c in range(3))
    assert np.abs(inky - photo).mean() > 5 and np.abs(inky - pastel).mean() > 5  # each column is its own style
    text = output.read_text()
    assert "](gallery/contact_sheet.jpg)" in text
    assert "| inky | 1000 | 1.5 h | CPU |" in text and "| pastel | 1001 |" in text and "0.5 / 0.25 / ?" in text

    with pytest.raises(UserError, match="exists already; pass overwrite=true"):
        main([f"styles=[{models[0]}]", f"content={photos}", f"output={output}"])
    with pytest.raises(UserError, match="exists already; pass overwrite=true"):  # "no" is False, not a string
        main([f"styles=[{models[0]}]", f"content={photos}", f"output={output}", "overwrite=no"])
    with pytest.raises(UserError, match="Key 'ouptut' is not in struct"):
        main([f"styles=[{models[0]}]", f"content={photos}", "ouptut=elsewhere.md"])
    assert "| inky | 1000 |" in output.read_text()


def test_records_carry_each_models_numbers_from_an_evaluation_report(tmp_path):
    from fast_style.evaluate import format_equivalent
    from fast_style.evaluate import main as evaluate

    models = []
    for name in ("measured", "unmeasured"):
        models.append(tmp_path / f"{name}.safetensors")
        save_model(TransformerNet(width=0.25), models[-1], {"style": {"name": "starry_night"}, "steps": 3})
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted(SAMPLES.glob("*.jpg"))[0], photos)
    report = evaluate([f"style={models[0]}", f"content={photos}", "size=48", "iterations=[2,4]", "style.size=128",
                       f"output={tmp_path / 'eval'}"])  # fmt: skip
    mean = report["models"][0]["mean"]
    output = tmp_path / "gallery.md"
    main([f"styles=[{models[0]},{models[1]}]", f"content={photos}", "size=48", f"output={output}",
          f"evaluation={tmp_path / 'eval' / 'evaluation.json'}"])  # fmt: skip
    rows = [line for line in output.read_text().splitlines() if line.startswith("| starry_night |")]
    ratio = mean["network"]["style"] / mean["photo"]["style"]
    iterations = format_equivalent(mean["equivalent_iterations"])
    assert rows[0].endswith(f"| {iterations} | {ratio:.2f} | {mean['network']['ssim']:.2f} |")
    assert rows[1].endswith("| - | - | - |")
    with pytest.raises(UserError, match="is not a readable evaluation.json"):
        main([f"styles=[{models[0]}]", f"content={photos}", f"output={tmp_path / 'g2.md'}", f"evaluation={photos}"])


def test_the_page_names_a_bundled_model_relative_to_the_project_so_it_reads_the_same_on_every_machine(tmp_path):
    assert shown_path(ROOT / "checkpoints" / "wave.safetensors") == "checkpoints/wave.safetensors"
    assert shown_path(tmp_path / "mine.safetensors") == str(tmp_path / "mine.safetensors")
