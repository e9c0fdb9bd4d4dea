"""FiftyOne: training on a dataset, saved view, tags or zoo split (data=fiftyone); stylize.py's results browser
(a grouped dataset of photos and their stylizations); the App serving it. Everything runs on the throwaway
database of the ``fiftyone`` fixture, with COCO-format data built here from the bundled COCO photos."""

from __future__ import annotations

import ast
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from fast_style.errors import UserError
from fast_style.extras import import_fiftyone
from fast_style.fiftyone_data import FiftyOneDataModule
from fast_style.fiftyone_results import slice_for
from fast_style.model_file import read_metadata, save_model
from fast_style.network import TransformerNet
from fast_style.stylize_files import stylize_files

from .conftest import FAST, ROOT, SAMPLES, run_train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fiftyone's own dependencies warn plenty

PHOTOS = sorted(SAMPLES.glob("*.jpg"))[:6]


def coco_labels(photos: list[Path]) -> dict:
    """A COCO instances file for ``photos``: one box per photo, as in COCO's own annotations."""
    images, annotations = [], []
    for i, photo in enumerate(photos, 1):
        width, height = Image.open(photo).size
        images.append({"id": i, "file_name": photo.name, "width": width, "height": height})
        box = [width / 4, height / 4, width / 2, height / 2]
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": box, "area": box[2] * box[3]})
        annotations[-1]["iscrowd"] = 0
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}


def write_coco(images_dir: Path, labels_path: Path) -> None:
    images_dir.mkdir(parents=True)
    for photo in PHOTOS:
        shutil.copy(photo, images_dir)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.write_text(json.dumps(coco_labels(PHOTOS)))


@pytest.fixture(scope="module")
def photos_dataset(fiftyone, tmp_path_factory) -> str:
    """A COCO-format dataset as users import theirs, four of its photos tagged "keep" and saved as view "curated"."""
    root = tmp_path_factory.mktemp("coco")
    write_coco(root / "data", root / "labels.json")
    dataset = fiftyone.Dataset.from_dir(
        dataset_type=fiftyone.types.COCODetectionDataset,
        data_path=str(root / "data"),
        labels_path=str(root / "labels.json"),
        name="photos",
        persistent=True,
    )
    dataset.take(4, seed=0).tag_samples("keep")
    dataset.save_view("curated", dataset.match_tags("keep"))
    return dataset.name


@pytest.fixture(scope="module")
def coco_zoo_download(fiftyone) -> Path:
    """The files FiftyOne's coco-2017 zoo download leaves (full annotations in raw/, images in validation/data/),
    so that loading the zoo dataset runs everything after the download, offline."""
    coco = Path(fiftyone.config.dataset_zoo_dir) / "coco-2017"
    write_coco(coco / "validation" / "data", coco / "raw" / "instances_val2017.json")
    return coco


def test_saved_views_and_tags_select_the_training_photos(photos_dataset):
    everything = FiftyOneDataModule(dataset=photos_dataset, batch_size=2).train_files()
    assert sorted(p.name for p in everything) == sorted(p.name for p in PHOTOS)
    curated = FiftyOneDataModule(dataset=photos_dataset, view="curated", batch_size=2).train_files()
    tagged = FiftyOneDataModule(dataset=photos_dataset, tags="keep", batch_size=2).train_files()
    assert len(curated) == 4 and sorted(curated) == sorted(tagged)
    assert all(p.is_file() for p in curated)


def test_the_coco_zoo_loads_after_its_download(coco_zoo_download, fiftyone):
    data = FiftyOneDataModule(zoo="coco-2017", split="validation", max_samples=5, batch_size=2)
    data.prepare_data()
    files = data.train_files()  # the persistent dataset prepare_data created, found again
    assert len(files) == 5 and all(p.parent == coco_zoo_download / "validation" / "data" for p in files)
    name = "coco-2017-validation-5"  # the name the README gives: zoo name, split, max_samples
    assert not fiftyone.load_dataset(name).has_sample_field("detections")  # labels are not needed for style


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dataset": "nope"}, r"no FiftyOne dataset 'nope'; data\.dataset= one of .*\bphotos\b"),
        ({"dataset": "photos", "view": "nope"}, r"has no saved view 'nope'; saved: curated$"),
        ({"dataset": "photos", "tags": "nope", "batch_size": 2}, r"has 0 samples, .* \(tags there: keep\)$"),
        ({"zoo": "nope"}, r"no FiftyOne zoo dataset 'nope'; choose one of .*\bcoco-2017\b"),
        ({"zoo": "coco-2017", "split": "val"}, r"no split 'val'; data\.split= one of train, validation, test$"),
        ({}, r"^data=fiftyone needs exactly one of data\.dataset=NAME"),
    ],
)
def test_unknown_names_are_one_line_errors_that_list_what_exists(photos_dataset, options, message):
    with pytest.raises(UserError) as error:
        FiftyOneDataModule(**options).train_files()
    assert "\n" not in str(error.value) and re.search(message, str(error.value)), str(error.value)


def test_without_fiftyone_installed_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fiftyone", None)  # makes `import fiftyone` raise ImportError
    with pytest.raises(UserError, match=r"FiftyOne is not installed; pip install -e \"\.\[fiftyone\]\""):
        import_fiftyone()


def test_fiftyone_is_imported_only_inside_functions():
    """train.py and stylize.py must not pay fiftyone's import (seconds, and a MongoDB) unless it is used."""
    for path in [ROOT / "train.py", ROOT / "stylize.py", *(ROOT / "fast_style").glob("*.py")]:
        for node in ast.parse(path.read_text()).body:
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            imported += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name.split(".")[0] == "fiftyone" for name in imported), f"{path}: {ast.unparse(node)}"


@pytest.mark.slow
def test_train_py_trains_on_a_saved_view(photos_dataset, tmp_path):
    result = run_train(
        tmp_path, *FAST, "data=fiftyone", f"data.dataset={photos_dataset}", "data.view=curated",
        "trainer.max_steps=2", "export.path=model.safetensors",
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "data: 4 training photos from FiftyOne dataset 'photos', saved view 'curated'" in log
    metadata = read_metadata(tmp_path / "model.safetensors")
    assert metadata["steps"] == 2 and metadata["data"]["view"] == "curated"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Small real networks: two styles, and a second model file of the first style (as a later checkpoint)."""
    folder = tmp_path_factory.mktemp("models")
    paths = []
    for i, (style, steps) in enumerate([("starry", 100), ("wave", 200), ("starry", 300)]):
        torch.manual_seed(i)
        paths.append(folder / f"{i}_{style}.safetensors")
        save_model(TransformerNet(width=0.25), paths[-1], {"style": {"name": style}, "steps": steps})
    return paths


@pytest.fixture(scope="module")
def comparison(fiftyone, models, tmp_path_factory) -> str:
    """Three photos stylized with the first two models, recorded in FiftyOne dataset "comparison"."""
    photos = tmp_path_factory.mktemp("photos")
    for photo in PHOTOS[:3]:
        Image.open(photo).resize((96, 64)).save(photos / photo.name)
    stylize_files([str(models[0]), str(models[1])], str(photos), str(photos.parent / "stylized"), "cpu", "fp32",
                  fiftyone_dataset="comparison", backend="torch")  # fmt: skip
    return "comparison"


def samples_in(dataset) -> int:
    return len(dataset.select_group_slices())


def test_results_browser_groups_each_photo_with_its_stylizations(fiftyone, comparison, models):
    dataset = fiftyone.load_dataset(comparison)
    assert dataset.media_type == "group" and dataset.default_group_slice == "content"
    assert {"content", "starry", "wave"} <= set(dataset.group_slices)
    assert len(dataset) == 3  # groups, one per photo
    first = dataset.select_group_slices().match({"model": str(models[0].resolve())}).first()
    assert (first.style, first.steps, first.group.name) == ("starry", 100, "starry")
    assert first.seconds > 0 and Path(first.filepath).name.endswith("_starry.jpg")
    assert (first.metadata.width, first.metadata.height) == (96, 64)  # read from the file written
    group = dataset.get_group(first.group.id)
    assert Path(group["content"].filepath).name == Path(first.filepath).name.replace("_starry", "")
    assert Path(group["wave"].filepath).name == Path(first.filepath).name.replace("_starry", "_wave")


@pytest.mark.slow
def test_stylize_py_re_runs_update_the_samples_and_print_how_to_open_the_app(fiftyone, comparison, models):
    dataset = fiftyone.load_dataset(comparison)
    before = samples_in(dataset)
    photos = Path(dataset.select_group_slices("content").first().filepath).parent
    command = [sys.executable, str(ROOT / "stylize.py"), f"style=[{models[0]},{models[1]}]", f"input={photos}"]
    command += [f"output={photos.parent / 'stylized'}", "overwrite=true", "device=cpu", "precision=fp32"]
    result = subprocess.run([*command, f"fiftyone.dataset={comparison}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 sample(s) added, 6 updated in dataset 'comparison'" in result.stdout
    assert result.stdout.strip().endswith("fiftyone app launch comparison")
    assert samples_in(dataset) == before


def test_results_browser_gives_another_model_of_a_style_its_own_slice(fiftyone, comparison, models):
    dataset = fiftyone.load_dataset(comparison)
    photos = Path(dataset.select_group_slices("content").first().filepath).parent
    before = samples_in(dataset)
    for _ in range(2):  # the second run changes nothing
        stylize_files([str(models[2])], str(photos), str(photos.parent / "later"), "cpu", "fp32", overwrite=True,
                      fiftyone_dataset=comparison, backend="torch")  # fmt: skip
        dataset.reload()
        assert samples_in(dataset) == before + 3 and len(dataset) == 3
    assert sorted(dataset.group_slices) == ["content", "starry", "starry_2", "wave"]
    assert dataset.select_group_slices("starry_2").values("steps") == [300] * 3


def test_every_model_file_keeps_a_slice_of_its_own():
    slices = {"/m/a.safetensors": "starry"}
    assert slice_for("/m/b.safetensors", "starry", slices) == "starry_2"
    assert slice_for("/m/c.ckpt", "content", slices) == "content_2"  # the photos' slice is taken
    assert slice_for("/m/d.ckpt", "v1.5", slices) == "v1_5"  # MongoDB field names have no dots
    assert slice_for("/m/a.safetensors", "renamed", slices) == "starry"  # a known model keeps its slice


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, query: str | None = None) -> tuple[int, str]:
    data = json.dumps({"query": query}).encode() if query else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()


@pytest.mark.slow
def test_the_app_serves_the_results_dataset(comparison):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, page = fetch(f"http://127.0.0.1:{port}/datasets/{comparison}")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-3000:]
                time.sleep(0.5)
        assert status == 200 and "<title>FiftyOne</title>" in page and 'id="root"' in page
        query = f'{{ dataset(name: "{comparison}") {{ name defaultGroupSlice groupMediaTypes {{ name mediaType }} }} }}'
        status, answer = fetch(f"http://127.0.0.1:{port}/graphql", query)
        dataset = json.loads(answer)["data"]["dataset"]
        assert dataset["name"] == comparison and dataset["defaultGroupSlice"] == "content"
        assert {g["name"] for g in dataset["groupMediaTypes"]} >= {"content", "starry", "wave"}
        assert {g["mediaType"] for g in dataset["groupMediaTypes"]} == {"image"}
    finally:
        server.terminate()
        server.wait(timeout=30)
