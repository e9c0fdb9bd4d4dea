"""The LightningModule that trains a TransformerNet against a frozen perceptual loss."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torchvision.utils import make_grid

from fast_style.data import Batch
from fast_style.errors import UserError
from fast_style.loss import PerceptualLoss
from fast_style.network import TransformerNet
from fast_style.temporal import temporal_error

log = logging.getLogger(__name__)


def write_lines(path: Path, lines: list[str]) -> None:
    """One line each, in UTF-8; a file name that is not valid UTF-8 (Python keeps its bytes as surrogates) is
    written back as its original bytes instead of failing at the end of a long run."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(f"{line}\n" for line in lines)


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """The learning rate rising linearly over ``warmup_steps``, then falling along a cosine to zero at
    ``total_steps``. The warm-up protects a warm start (``init=``): Adam's first steps move every weight by about
    the learning rate whatever its gradient, and at 2e-3 one such step took a trained network's loss from 8 to 88."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class StyleTransferModule(pl.LightningModule):
    """Trains ``net`` to minimise ``loss`` (whose style targets must already be set).

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_``) taking the parameters /
    the optimizer. With ``channels_last`` the networks and batches use NHWC memory layout, which is
    what the fast bf16 convolution kernels on CPUs and tensor cores on GPUs want.
    """

    def __init__(
        self,
        net: TransformerNet,
        loss: PerceptualLoss,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.channels_last = channels_last
        self.unreadable: set[str] = set()  # messages about files that could not be decoded (this process)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.loss.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._layout(images))

    def _readable(self, batch: Batch) -> torch.Tensor:
        """The batch's readable images; each unreadable file is reported once and counted."""
        images, problems = batch
        for problem in problems:
            if problem not in self.unreadable:
                self.unreadable.add(problem)
                rank_zero_warn(f"skipping an unreadable training file: {problem}")
        return self._layout(images)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        batch = self._readable(batch)
        self.log("data/unreadable_files", float(len(self.unreadable)))
        if not len(batch):  # readable files stand in for unreadable ones, so only a folder of nothing but those
            raise UserError(
                f"none of the training files could be read ({len(self.unreadable)} tried, e.g. "
                f"{min(self.unreadable)}); check them with python -m fast_style.data check DIR"
            )
        output = self.net(batch)
        terms = self.loss(output, batch)
        if self.loss.temporal_weight:
            self._add_temporal(terms, batch, output)
        self.log("train/loss", terms["loss"], prog_bar=True)
        # The crop size, which data.size_schedule (progressive resolution) changes during the run.
        self.log("train/image_size", float(batch.shape[-1]))
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
        return terms["loss"]

    def _add_temporal(
        self,
        terms: dict[str, torch.Tensor],
        batch: torch.Tensor,
        output: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> None:
        """The temporal term (fast_style.temporal) into ``terms``, and its weighted share into the total."""
        terms["temporal"] = temporal_error(self, batch, output, generator)
        terms["loss"] = terms["loss"] + self.loss.temporal_weight * terms["temporal"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        batch = self._readable(batch)
        if not len(batch):
            return
        output = self.net(batch)
        terms = self.loss(output, batch)
        # Logged for every run (one more forward pass), so runs can be compared for flicker; the same camera
        # motions at every validation.
        self._add_temporal(terms, batch, output, torch.Generator().manual_seed(batch_idx))
        # sync_dist: with several processes each validates its share of the photos; log the mean over all of them.
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(batch), sync_dist=True)
        # hp_metric: the number TensorBoard's HPARAMS tab shows next to each run's settings.
        self.log("hp_metric", terms["loss"], batch_size=len(batch), sync_dist=True)
        tensorboard = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if batch_idx == 0 and tensorboard is not None and not self.trainer.sanity_checking:
            # Row 1: the validation photos; row 2: their stylisations.
            grid = make_grid(torch.cat([batch, output]).float().clamp(0, 1).cpu(), nrow=len(batch), padding=4)
            tensorboard.experiment.add_image("val/stylized", grid, self.global_step)

    def on_train_end(self) -> None:
        """List every skipped file (from all processes) in ``<run folder>/unreadable_files.txt`` and say so in one line,
        so that a long run's skips are not lost among its warnings."""
        problems = self.unreadable
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_process: list[set[str] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_process, self.unreadable)
            problems = set().union(*(p for p in per_process if p))
        if problems and self.trainer.is_global_zero:  # into the run folder, whichever loggers (logger=) are in use
            path = Path(self.trainer.default_root_dir) / "unreadable_files.txt"
            write_lines(path, sorted(problems))
            log.warning("skipped %d unreadable training files; they are listed in %s", len(problems), path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The architecture, so a training checkpoint can be used for stylizing (fast_style.model_file).
        checkpoint["fast_style_model"] = self.net.config()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
