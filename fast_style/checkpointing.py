"""Saving during training: atomic Lightning checkpoints, and the per-style model file kept up to date.

Kept apart from :mod:`fast_style.model_file` so that stylizing never imports Lightning.
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
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from fast_style.devices import cpu_info
from fast_style.errors import UserError
from fast_style.files import atomic_path, check_writable, remove_stale_temporaries
from fast_style.model_file import DTYPES, read_metadata, save_model


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
        self.failure: str | None = None  # why the latest export failed, if it did

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
        if self.path.is_dir():
            raise UserError(f"export.path={self.path} is a folder; give a file name like {self.path}/x.safetensors")
        if trainer.is_global_zero:  # where this run writes, before its first step: not after hours of training
            folders = [self.path.parent]
            if isinstance(trainer.checkpoint_callback, ModelCheckpoint) and trainer.checkpoint_callback.dirpath:
                folders.append(Path(trainer.checkpoint_callback.dirpath))
            if trainer.ckpt_path:  # the run resumed here was perhaps killed mid-write
                folders.append(Path(trainer.ckpt_path).parent)
            for folder, what in zip(folders, ("model file (export.path)", "Lightning checkpoints")):
                check_writable(folder, what)
            for folder in folders:
                for path in remove_stale_temporaries(folder):
                    rank_zero_info(f"removed {path}, left by an interrupted write")
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
        if not trainer.is_global_zero:
            return
        if self.failure is None:
            rank_zero_info(f"export: wrote {self.path} ({trainer.global_step} steps)")
            return
        # The trained network must survive: keep it in a Lightning checkpoint (one process only: saving through the
        # trainer would wait for the other processes, which do not get here).
        checkpoint = trainer.checkpoint_callback
        folder = Path(checkpoint.dirpath) if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath else None
        final = (folder or Path(trainer.default_root_dir)) / f"step{trainer.global_step:06d}-final.ckpt"
        if trainer.world_size == 1:
            trainer.save_checkpoint(final)
        elif isinstance(checkpoint, ModelCheckpoint) and checkpoint.last_model_path:
            final = Path(checkpoint.last_model_path)
        raise UserError(
            f"{self.failure}; the trained network is kept in the Lightning checkpoint {final}: stylize with "
            f"style={final}, or resume with ckpt_path={final} export.path=ELSEWHERE"
        )

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
        target = path or self.path  # a snapshot's failure is warned about, never the run's failure
        try:
            save_model(pl_module.net, target, metadata, self.dtype)
            if path is None:
                self.failure = None
        except OSError as e:  # a full disk or a vanished folder must not cost the run its checkpoints
            failure = f"could not write the model file {target} ({e.strerror or e})"
            if path is None:
                self.failure = failure
            rank_zero_warn(f"export: {failure}; training goes on, and its Lightning checkpoints are kept")
