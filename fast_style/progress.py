"""The training progress bar: one bar for the whole run, so its ETA is the run's, not the epoch's."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class RunProgressBar(TQDMProgressBar):
    """Steps done out of ``trainer.max_steps`` with the time left for the whole run (Lightning's bar restarts every
    epoch, which on a folder of a few hundred photos is a few minutes of a run of hours). Runs without a step limit
    keep Lightning's per-epoch bar."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.max_steps < 0:
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # the first epoch of this process (a resumed run starts part-way)
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step
        bar.set_description(f"Training (epoch {trainer.current_epoch})")
        return None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.max_steps < 0:
            return super().on_train_batch_end(trainer, pl_module, *args)
        bar = self.train_progress_bar
        if not bar.disable and self._should_update(trainer.global_step, trainer.max_steps):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar
        return None
