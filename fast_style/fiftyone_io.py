"""FiftyOne in and out: train on a FiftyOne dataset, saved view or zoo dataset (``data=fiftyone``), so that photos
curated in the FiftyOne App train directly; and record stylizations as a grouped dataset (``fiftyone.dataset=``),
so that styles and checkpoints can be compared side by side in the App.

fiftyone is imported inside the functions: it takes seconds to import (and starts a MongoDB), which train.py and
stylize.py must not pay when FiftyOne is not used.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pytorch_lightning.utilities import rank_zero_info

from fast_style.data import ImageFolderDataModule
from fast_style.errors import UserError

if TYPE_CHECKING:
    from fast_style.inference import Stylizer

GROUP_FIELD = "group"
CONTENT_SLICE = "content"
# What each stylization records, declared up front so that the types hold even when the first value is None.
RESULT_FIELDS = {"style": "StringField", "model": "StringField", "steps": "IntField", "seconds": "FloatField"}
# (content photo, model, output file, seconds to read + stylize + write it)
Stylization = tuple[Path, "Stylizer", Path, float]


def import_fiftyone() -> ModuleType:
    """The fiftyone package, or one line that says how to install it (it is an optional extra)."""
    try:
        import fiftyone
    except ImportError as e:
        raise UserError('FiftyOne is not installed; pip install -e ".[fiftyone]" (or pip install fiftyone)') from e
    return fiftyone


def names(items: Sequence[str]) -> str:
    return ", ".join(items) or "none"


class FiftyOneDataModule(ImageFolderDataModule):
    """Training photos from FiftyOne: a dataset (``dataset``), optionally one of its saved views (``view``) and
    only samples with any of ``tags``; or a zoo dataset (``zoo``, e.g. coco-2017; ``split``, ``max_samples``),
    downloaded by FiftyOne on first use and kept as a persistent dataset, so the next run starts at once and the
    photos can be browsed in the App. Crops, batches and validation photos work as for a folder."""

    def __init__(
        self,
        dataset: str | None = None,
        view: str | None = None,
        tags: str | list[str] | None = None,
        zoo: str | None = None,
        split: str = "train",
        max_samples: int | None = None,
        root: str | None = None,
        **folder_options: Any,
    ) -> None:
        """``root`` is not read (the photos come from FiftyOne): it is accepted so that folder settings such as
        experiment=quickstart's apply unchanged."""
        if (dataset is None) == (zoo is None):
            raise UserError(
                "data=fiftyone needs exactly one of data.dataset=NAME (a FiftyOne dataset) "
                "or data.zoo=NAME (a FiftyOne zoo dataset, e.g. coco-2017)"
            )
        if zoo is not None and view is not None:
            raise UserError("data.view= selects a saved view of data.dataset=; a zoo dataset (data.zoo=) has none")
        super().__init__(root=root or "", **folder_options)
        self.dataset, self.view, self.zoo, self.split, self.max_samples = dataset, view, zoo, split, max_samples
        self.tags = [tags] if isinstance(tags, str) else list(tags or [])

    def prepare_data(self) -> None:
        """Download a zoo dataset once per machine (Lightning runs this on one process, before ``setup``)."""
        if self.zoo is not None:
            self.load_zoo()

    def load_zoo(self) -> Any:
        fo = import_fiftyone()
        import fiftyone.zoo as foz

        if self.zoo not in (available := foz.list_zoo_datasets()):
            raise UserError(f"no FiftyOne zoo dataset {self.zoo!r}; choose one of {names(available)}")
        splits = foz.get_zoo_dataset(self.zoo).supported_splits
        if splits and self.split not in splits:
            raise UserError(f"zoo dataset {self.zoo} has no split {self.split!r}; data.split= one of {names(splits)}")
        # Style transfer needs the photos only: COCO's detections would take minutes to import for nothing.
        options = {"label_types": []} if self.zoo.startswith("coco-") else {}
        rank_zero_info(f"data: loading {self.zoo} ({self.split}) through the FiftyOne zoo (version {fo.__version__})")
        return foz.load_zoo_dataset(
            self.zoo, split=self.split if splits else None, max_samples=self.max_samples, persistent=True, **options
        )

    def load_named(self) -> Any:
        fo = import_fiftyone()
        if self.dataset not in (datasets := fo.list_datasets()):
            raise UserError(f"no FiftyOne dataset {self.dataset!r}; data.dataset= one of {names(datasets)}")
        dataset = fo.load_dataset(self.dataset)
        if self.view is None:
            return dataset
        if self.view not in (views := dataset.list_saved_views()):
            raise UserError(f"FiftyOne dataset {self.dataset!r} has no saved view {self.view!r}; saved: {names(views)}")
        return dataset.load_saved_view(self.view)

    def describe(self) -> str:
        zoo = f"FiftyOne zoo dataset {self.zoo} ({self.split})"
        parts = [zoo if self.zoo else f"FiftyOne dataset {self.dataset!r}"]
        if self.view:
            parts.append(f"saved view {self.view!r}")
        if self.tags:
            parts.append(f"tags {names(self.tags)}")
        return ", ".join(parts)

    def train_files(self) -> list[Path]:
        """The file of every image sample selected: dataset or zoo split, saved view, tags."""
        samples = self.load_zoo() if self.zoo is not None else self.load_named()
        if samples.media_type != "image":
            raise UserError(f"{self.describe()} holds {samples.media_type} samples; data=fiftyone needs images")
        selected = samples.match_tags(self.tags) if self.tags else samples
        files = [Path(path) for path in selected.values("filepath")]
        if len(files) < self.batch_size:
            hint = f" (tags there: {names(samples.distinct('tags'))})" if self.tags else ""
            raise UserError(
                f"{self.describe()} has {len(files)} samples, fewer than data.batch_size={self.batch_size}{hint}"
            )
        rank_zero_info(f"data: {len(files)} training photos from {self.describe()}")
        return files


def results_dataset(fo: ModuleType, name: str) -> Any:
    """The grouped dataset that stylize.py records into, created on first use (persistent, so it stays)."""
    if name not in fo.list_datasets():
        dataset = fo.Dataset(name, persistent=True)
        dataset.add_group_field(GROUP_FIELD, default=CONTENT_SLICE)
        for field, kind in RESULT_FIELDS.items():
            dataset.add_sample_field(field, getattr(fo, kind))
        return dataset
    dataset = fo.load_dataset(name)
    if dataset.group_field != GROUP_FIELD or dataset.default_group_slice != CONTENT_SLICE:
        raise UserError(
            f"FiftyOne dataset {name!r} exists and does not hold stylize.py results "
            f"(no {GROUP_FIELD!r} groups with a {CONTENT_SLICE!r} slice); choose another fiftyone.dataset="
        )
    return dataset


def slice_for(model: str, style: str, slices: dict[str, str]) -> str:
    """A model's group slice: its style name, numbered when another model file already has that name, so every
    model (a style, or one checkpoint of it) keeps its own slice across runs. MongoDB refuses '.' and '$' there."""
    if model not in slices:
        base = style.replace(".", "_").replace("$", "_")
        taken = {CONTENT_SLICE, *slices.values()}
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        slices[model] = candidate
    return slices[model]


def record_stylizations(name: str, stylizations: Sequence[Stylization]) -> None:
    """Add every photo and its stylizations to the grouped FiftyOne dataset ``name``: one group per photo, with
    the photo in slice "content" and each model's output in that model's slice (fields: style, model, steps,
    seconds). A photo already stylized with a model is updated, not added again, so re-running never duplicates
    samples (and keeps the tags set in the App)."""
    fo = import_fiftyone()
    dataset = results_dataset(fo, name)
    rows = zip(*dataset.select_group_slices().values(["id", "filepath", "group.id", "group.name", "model"]))
    groups, slices, existing = {}, {}, {}  # photo → its group; model file → its slice; (group, slice) → sample
    for sample_id, path, group_id, slice_name, model in rows:
        existing[group_id, slice_name] = sample_id
        if slice_name == CONTENT_SLICE:
            groups[path] = fo.Group(id=group_id)
        elif model is not None:
            slices[model] = slice_name

    new, updated = [], 0
    for photo, stylizer, output, seconds in stylizations:
        model = str(Path(stylizer.metadata["path"]).resolve())
        fields = {
            "filepath": str(output.resolve()),
            "metadata": fo.ImageMetadata.build_for(str(output)),
            "style": stylizer.name,
            "model": model,
            "steps": stylizer.metadata.get("steps"),
            "seconds": seconds,
        }
        photo_path = str(photo.resolve())
        if photo_path not in groups:
            groups[photo_path] = group = fo.Group()
            metadata = fo.ImageMetadata.build_for(photo_path)
            new.append(fo.Sample(filepath=photo_path, metadata=metadata, group=group.element(CONTENT_SLICE)))
        group = groups[photo_path]
        slice_name = slice_for(model, stylizer.name, slices)
        if (sample_id := existing.get((group.id, slice_name))) is None:
            new.append(fo.Sample(group=group.element(slice_name), **fields))
        else:
            sample = dataset[sample_id]
            for key, value in fields.items():
                sample[key] = value
            sample.save()
            updated += 1
    dataset.add_samples(new, progress=False)
    print(
        f"FiftyOne: {len(new)} sample(s) added, {updated} updated in dataset {name!r} "
        f"({len(groups)} photos; slices {', '.join(dataset.group_slices)}); "
        f"compare them in the App: fiftyone app launch {shlex.quote(name)}"
    )
