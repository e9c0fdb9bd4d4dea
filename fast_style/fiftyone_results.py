"""Stylize results in FiftyOne (``stylize.py fiftyone.dataset=``): every photo and its stylizations recorded as one
group of a grouped dataset, so that styles and checkpoints can be compared side by side in the FiftyOne App.

fiftyone itself is imported only when results are recorded (fast_style.extras)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fast_style.errors import UserError
from fast_style.extras import import_fiftyone

if TYPE_CHECKING:
    from fast_style.inference import Stylizer

GROUP_FIELD = "group"
CONTENT_SLICE = "content"
# What each stylization records, declared up front so that the types hold even when the first value is None.
RESULT_FIELDS = {"style": "StringField", "model": "StringField", "steps": "IntField", "seconds": "FloatField"}
# (content photo, model, output file, seconds to stylize it (its share of a batch) and write it)
Stylization = tuple[Path, "Stylizer", Path, float]


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
