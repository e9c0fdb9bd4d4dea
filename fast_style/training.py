"""Builds everything a training run needs from the Hydra config and runs it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from fast_style.checkpointing import AtomicCheckpointIO, ExportCallback
from fast_style.config import check_config
from fast_style.errors import UserError
from fast_style.model_file import load_lightning_checkpoint, load_network
from fast_style.module import StyleTransferModule
from fast_style.network import TransformerNet
from fast_style.objective import as_list, build_loss, file_sha256
from fast_style.paths import PROJECT_ROOT

log = logging.getLogger(__name__)


def warm_start(net: TransformerNet, init: str) -> TransformerNet:
    """``net`` with the weights of another model (a style name, model file or ``.ckpt``), so that a new style
    starts from a network that already draws photos instead of relearning it. The architectures must match."""
    source, metadata = load_network(init)
    if source.config() != net.config():
        raise UserError(
            f"init={init} is a {source.config()} network, but model= builds {net.config()}; "
            "set the model.* keys to match it, or start from another model"
        )
    net.load_state_dict(source.state_dict())
    log.info("init: starting from the weights of %s", metadata["path"])
    return net


def build_module(cfg: DictConfig) -> StyleTransferModule:
    """Transformer (from ``init=`` weights if set) + perceptual loss with its style targets set + optimiser
    factories."""
    net = instantiate(cfg.model)
    if cfg.get("init"):
        net = warm_start(net, str(cfg.init))
    return StyleTransferModule(
        net=net,
        loss=build_loss(cfg),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        channels_last=cfg.channels_last,
    )


def portable(value: Any, root: Path = PROJECT_ROOT) -> Any:
    """``value`` with every path outside the checkout made shareable: relative to the fast-style checkout when inside
    it, else just its name. Paths are absolute (``/``, ``~``) or relative to the working folder (``./``, ``../``).
    A model file is shipped to others and must not carry the trainer's folders."""
    if isinstance(value, dict):
        return {key: portable(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item, root) for item in value]
    if isinstance(value, str) and value.startswith(("/", "~", "./", "../")):
        path = Path(os.path.abspath(Path(value).expanduser()))  # '..' removed, symbolic links kept
        return str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    return value


def export_metadata(cfg: DictConfig) -> dict[str, Any]:
    """What a model file records about how it was trained (the weights record the rest): names, hashes and paths
    relative to the checkout, never absolute paths of the training machine."""
    container = portable(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(container, dict)
    return {
        "style": {
            "name": cfg.style.name,
            "images": [{"path": portable(str(p)), "sha256": file_sha256(p)} for p in as_list(cfg.style.image)],
            "size": cfg.style.size,
            "blend": container["style"].get("blend"),
        },
        "loss": container["loss"],
        "data": {k: v for k, v in container["data"].items() if not k.startswith("_")},
        "config": container,
    }


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one style network as configured; returns the final logged metrics."""
    check_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    loggers: list[Logger] = [instantiate(c) for c in (cfg.get("logger") or {}).values()]  # configs/logger/
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    callbacks.append(ExportCallback(**cfg.export, metadata=export_metadata(cfg)))
    trainer: pl.Trainer = instantiate(
        cfg.trainer, default_root_dir=str(run_dir), logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )
    # Every setting becomes a hyperparameter (TensorBoard's HPARAMS tab), so runs can be compared side by side.
    settings = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(settings)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and str(ckpt_path) not in ("last", "best", "hpc", "registry"):
        load_lightning_checkpoint(Path(str(ckpt_path)).expanduser(), "ckpt_path")  # one line if it is no checkpoint
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}
