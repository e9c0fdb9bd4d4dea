"""Saving during training: atomic Lightning checkpoints, and the per-style model file kept up to date.

Kept apart from :mod:`fast_style.export` so that stylizing never imports Lightning.
"""

from __future__ import annotations

import platform
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_info

from fast_style.config import cpu_info
from fast_style.errors import UserError
from fast_style.export import DTYPES, atomic_path, read_metadata, save_model


def hardware(device: torch.device) -> str:
    """What trained the model, for its record: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    names = [line.split(":", 1)[1].strip() for line in cpu_info().splitlines() if line.startswith("model name")]
    return f"{names[0] if names else platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes each ``.ckpt`` atomically."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class ExportCallback(pl.Callback):
    """Exports the transformer to ``path`` at every Lightning checkpoint and at the end of training.

    A file at ``path`` from anything but this run (resumed runs included) is never replaced unless
    ``overwrite`` is set: training stops before its first step with one line that says so.
    """

    def __init__(
        self,
        path: str,
        overwrite: bool = False,
        dtype: str = "float32",
        snapshot_minutes: Sequence[float] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise UserError(f"export.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        marks = list(snapshot_minutes or [])
        if not all(isinstance(m, int | float) and not isinstance(m, bool) and m > 0 for m in marks):
            raise UserError(f"export.snapshot_minutes must be positive numbers of minutes, got {marks}")
        self.path, self.overwrite, self.dtype = Path(path), overwrite, dtype
        self.snapshot_minutes = sorted(marks)
        self.metadata = dict(metadata or {})
        self.run_id = uuid.uuid4().hex
        self.seconds_before, self.started = 0.0, time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "train_seconds": self.train_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = state_dict["run_id"]
        self.seconds_before = state_dict.get("train_seconds", 0.0)  # a resumed run adds to its earlier time
        self.snapshot_minutes = [m for m in self.snapshot_minutes if 60 * m > self.seconds_before]

    def train_seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()
        if not self.path.exists():
            return
        try:
            owner = read_metadata(self.path).get("run_id")
        except UserError:
            owner = None
        if owner == self.run_id:
            return
        if not self.overwrite:
            raise UserError(
                f"{self.path} already exists and was not written by this run; "
                f"set export.overwrite=true to replace it, or export.path=... to write elsewhere"
            )
        rank_zero_info(f"export: will overwrite {self.path} (export.overwrite=true)")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.export(trainer, pl_module)

    def snapshot_path(self, minutes: float) -> Path:
        return self.path.with_name(f"{self.path.stem}_{minutes:g}min{self.path.suffix}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """A copy of the model as it was after each of ``snapshot_minutes`` of training (time-to-quality curves)."""
        while self.snapshot_minutes and self.train_seconds() >= 60 * self.snapshot_minutes[0]:
            self.export(trainer, pl_module, self.snapshot_path(self.snapshot_minutes.pop(0)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.export(trainer, pl_module)
        rank_zero_info(f"export: wrote {self.path} ({trainer.global_step} steps)")

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path | None = None) -> None:
        if not trainer.is_global_zero:
            return
        losses = {
            k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))
        }
        metadata = {
            **self.metadata,
            "run_id": self.run_id,
            "steps": trainer.global_step,
            "losses": losses,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "train_seconds": round(self.train_seconds()),
            "hardware": hardware(pl_module.device),
        }
        save_model(pl_module.net, path or self.path, metadata, self.dtype)
