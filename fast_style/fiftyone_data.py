"""Training photos from FiftyOne (``data=fiftyone``): a dataset, one of its saved views, or a zoo dataset, so that
photos curated in the FiftyOne App train directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities import rank_zero_info

from fast_style.data import ImageFolderDataModule
from fast_style.errors import UserError
from fast_style.extras import import_fiftyone


def names(items: Sequence[str]) -> str:
    """``items`` listed for a message, or "none"."""
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
