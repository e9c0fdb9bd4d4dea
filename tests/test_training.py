"""End to end through train.py, as users run it: learning, TensorBoard, export, resume, DDP, errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fast_style.devices import cpu_has_fast_bf16
from fast_style.model_file import load_model, read_metadata, save_model
from fast_style.network import TransformerNet

from .conftest import FAST, ROOT, photo, run_train

pytestmark = pytest.mark.slow

COSINE = ("scheduler=cosine", "scheduler.T_max=40")


def events(run_dir: Path) -> EventAccumulator:
    (event_file,) = run_dir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def only_run(logs: Path) -> Path:
    (run_dir,) = [p for p in (logs / "starry_night").iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short real run: 30 steps on the bundled photos, checkpoints every 10, validation every 15."""
    cwd = tmp_path_factory.mktemp("train")
    run_train(
        cwd, *FAST, *COSINE,
        "trainer.max_steps=30", "trainer.log_every_n_steps=1", "trainer.val_check_interval=15",
        "callbacks.model_checkpoint.every_n_train_steps=10", "export.path=model.safetensors",
        "optimizer.lr=3e-3",
    )  # fmt: skip
    return cwd


def test_training_reduces_the_style_loss(trained):
    style = [e.value for e in events(only_run(trained / "logs")).Scalars("train/style")]
    assert len(style) == 30
    first, last = sum(style[:3]) / 3, sum(style[-3:]) / 3
    assert last < 0.7 * first, f"style loss went from {first:.3f} to {last:.3f}"


def test_tensorboard_gets_losses_per_layer_images_and_hparams(trained):
    acc = events(only_run(trained / "logs"))
    scalars = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/content", "train/style", "train/tv", "val/loss", "hp_metric", "lr-Adam"}
    expected |= {"val/temporal"}  # every run measures how well it follows a camera motion
    expected |= {f"train/style/{layer}" for layer in ("relu1_2", "relu2_2", "relu3_4", "relu4_4")}
    assert expected <= scalars
    images = acc.Images("val/stylized")
    assert [i.step for i in images] == [15, 30]
    assert images[0].width > images[0].height  # a grid: photos in row 1, stylisations in row 2
    assert acc.PluginTagToContent("hparams")  # settings in TensorBoard's HPARAMS tab


def test_lightning_checkpoints_every_k_steps_plus_last(trained):
    names = sorted(p.name for p in (only_run(trained / "logs") / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step000010.ckpt", "step000020.ckpt", "step000030.ckpt"]


def test_exported_model_reproduces_the_trained_network(trained):
    net, meta = load_model(trained / "model.safetensors")
    assert meta["steps"] == 30 and meta["style"]["name"] == "starry_night"
    assert len(meta["style"]["images"][0]["sha256"]) == 64
    assert meta["loss"]["network"] == "vgg19" and "train/loss" in meta["losses"]
    assert meta["train_seconds"] > 0 and meta["hardware"]  # the training record shown in the gallery
    # Shareable: names, hashes and paths relative to the checkout, not the training machine's folders.
    recorded = json.dumps(meta)
    assert str(ROOT) not in recorded and str(trained) not in recorded and str(Path.home()) not in recorded
    assert meta["style"]["images"][0]["path"] == "data/styles/starry_night.jpg"
    assert meta["data"]["root"] == "data/samples" and meta["config"]["paths"]["root"] == "."
    ckpt = torch.load(only_run(trained / "logs") / "checkpoints" / "last.ckpt", weights_only=True)
    reference = TransformerNet(**meta["model"])
    reference.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    x = photo(size=64)
    with torch.no_grad():
        assert torch.equal(net(x), reference.eval()(x))


def test_training_checkpoints_stylize_like_the_exported_model(trained):
    from fast_style import Stylizer

    from_ckpt = Stylizer.load(
        only_run(trained / "logs") / "checkpoints" / "step000030.ckpt", "cpu", "fp32", backend="torch"
    )
    from_export = Stylizer.load(trained / "model.safetensors", "cpu", "fp32", backend="torch")
    x = photo(size=64)
    assert from_export.metadata["steps"] == 30  # (runs before the resume test, which extends the run)
    assert torch.equal(from_ckpt.stylize_tensor(x), from_export.stylize_tensor(x))


def test_resume_continues_step_count_and_lr_schedule(trained):
    first = only_run(trained / "logs")
    # A checkpoint write killed mid-way leaves its temporary (checkpoint-sized): resuming removes it.
    stale = first / "checkpoints" / ".step000040.ckpt.k3x_9a2q.tmp"
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    run_train(
        trained, *FAST, *COSINE, "trainer.max_steps=40", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=15", "export.path=model.safetensors",
        "optimizer.lr=3e-3", f"ckpt_path={first}/checkpoints/step000020.ckpt",
    )  # fmt: skip
    (second,) = [p for p in (trained / "logs" / "starry_night").iterdir() if p != first]
    resumed = events(second)
    steps = [e.step for e in resumed.Scalars("train/loss")]
    assert steps[0] == 20 and steps[-1] == 39  # Lightning logs step k as k-1 after the optimiser step
    lr_first = {e.step: e.value for e in events(first).Scalars("lr-Adam")}
    lr_resumed = {e.step: e.value for e in resumed.Scalars("lr-Adam")}
    for step in range(20, 30):
        assert lr_resumed[step] == pytest.approx(lr_first[step], rel=1e-6)
    # The resumed run may update its own export (same run id) and records the total steps.
    resumed_meta = read_metadata(trained / "model.safetensors")
    assert resumed_meta["steps"] == 40
    assert not stale.exists()
    # Training time adds up over both runs: the resume starts from the time recorded at step 20.
    state = torch.load(first / "checkpoints" / "step000020.ckpt", weights_only=True)["callbacks"]
    (before,) = [v["train_seconds"] for k, v in state.items() if k.startswith("ExportCallback")]
    assert resumed_meta["train_seconds"] >= before > 0


def test_an_existing_model_file_is_never_overwritten(trained, tmp_path):
    target = tmp_path / "precious.safetensors"
    shutil.copy(trained / "model.safetensors", target)
    before = target.read_bytes()
    result = run_train(tmp_path, *FAST, "trainer.max_steps=2", f"export.path={target}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {target} already exists")
    assert "Traceback" not in result.stderr
    assert target.read_bytes() == before
    run_train(tmp_path, *FAST, "trainer.max_steps=2", f"export.path={target}", "export.overwrite=true")
    assert read_metadata(target)["steps"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("style.image=/nowhere/painting.jpg",), "style image /nowhere/painting.jpg does not exist"),
        (("data.root=/nowhere",), "data.root=/nowhere is not a folder"),
        (("data.root={empty}",), "holds no .jpg/.jpeg/.png/.webp images"),
        (("style=nope",), "unknown style 'nope'"),
        (("data.batch_size=four",), "data.batch_size='four' is not an integer"),
        (("model.norm=layer",), "model.norm must be one of instance, batch"),
        (("trainer.max_stepz=3",), "train has no option 'trainer.max_stepz'"),
        (("optimizer.lr=fast",), "optimizer.lr='fast' is not a number > 0"),
        (("trainer.precision=bf17",), "trainer.precision='bf17' is not one of"),
        (("loss.temporal_weight=-1",), "loss.temporal_weight=-1 is not a number from 0"),
        (("export.overwrite=maybe",), "export.overwrite='maybe' is not true or false"),
        (("data.root=photos/café",), "quote such a value for Hydra"),
        (("export.path={a_file}/model.safetensors",), "cannot write the model file (export.path) to"),
        (("export.path={empty}",), "is a folder; give a file name"),
        (("ckpt_path=/nowhere/last.ckpt",), "ckpt_path=/nowhere/last.ckpt does not exist"),
        (("ckpt_path={a_file}",), "is not a loadable Lightning checkpoint"),
        (("ckpt_path={empty_file}",), "is not a loadable Lightning checkpoint"),
        (("ckpt_path={foreign_ckpt}",), "is not a fast-style training checkpoint"),
    ],
)
def test_user_mistakes_are_one_clear_line(tmp_path, overrides, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder, not a checkpoint")
    (tmp_path / "empty_file").write_bytes(b"")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    places = {"empty": tmp_path / "empty", "a_file": tmp_path / "a_file", "empty_file": tmp_path / "empty_file"}
    overrides = tuple(o.format(**places, foreign_ckpt=tmp_path / "foreign.ckpt") for o in overrides)
    result = run_train(tmp_path, *FAST, "trainer.max_steps=1", *overrides, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in result.stderr


def test_the_temporal_term_is_logged_and_weighted_into_the_training_loss(tmp_path):
    run_train(tmp_path, *FAST, "loss.temporal_weight=50", "trainer.max_steps=3", "trainer.log_every_n_steps=1")
    acc = events(only_run(tmp_path / "logs"))
    term = {name: [e.value for e in acc.Scalars(f"train/{name}")] for name in ("loss", "content", "style", "tv")}
    temporal = [e.value for e in acc.Scalars("train/temporal")]
    assert len(temporal) == 3 and all(t > 0 for t in temporal)
    for step in range(3):  # starry_night's weights: content 1, style 2, tv 2
        parts = term["content"][step] + 2 * term["style"][step] + 2 * term["tv"][step] + 50 * temporal[step]
        assert term["loss"][step] == pytest.approx(parts, rel=1e-4)


def test_logger_many_writes_tensorboard_and_csv_into_the_run_folder(tmp_path):
    run_train(tmp_path, *FAST, "logger=many", "trainer.max_steps=2", "trainer.log_every_n_steps=1")
    run_dir = only_run(tmp_path / "logs")
    assert "train/loss" in events(run_dir).Tags()["scalars"]
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "train/loss"} <= set(header)


def test_a_new_style_trains_from_any_image(tmp_path):
    painting = Path(__file__).parents[1] / "data" / "styles" / "wave.jpg"
    run_train(tmp_path, *FAST, "style=my_wave", f"style.image={painting}", "trainer.max_steps=2")
    meta = read_metadata(next((tmp_path / "logs" / "my_wave").glob("*/my_wave.safetensors")))
    assert meta["style"]["name"] == "my_wave" and meta["steps"] == 2


def test_sweeps_give_one_run_folder_per_setting(tmp_path):
    run_train(tmp_path, "-m", *FAST, "trainer.max_steps=2", "loss.style_weight=1.0,50.0")
    runs = sorted((tmp_path / "logs" / "multirun").glob("*/starry_night/*"))
    assert len(runs) == 2  # folder names carry the job number and the overrides
    assert runs[0].name.startswith("0_") and "loss.style_weight=1.0" in runs[0].name
    assert runs[1].name.startswith("1_") and "loss.style_weight=50.0" in runs[1].name
    assert all(list(r.glob("events.out.tfevents.*")) for r in runs)


def test_ddp_on_two_cpu_processes_survives_batches_of_unreadable_files(tmp_path):
    """One readable photo among seven unreadable files, batches of 2 on each of 2 processes: a batch with nothing
    readable on one process once skipped its step there, and DDP stopped the run."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted((Path(__file__).parents[1] / "data" / "samples").glob("*.jpg"))[0], photos)
    for i in range(7):
        (photos / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    run_train(
        tmp_path, *FAST, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"data.root={photos}",
        "data.batch_size=2", "trainer.precision=32-true", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "export.path=model.safetensors",
    )  # fmt: skip
    assert read_metadata(tmp_path / "model.safetensors")["steps"] == 3
    listed = (only_run(tmp_path / "logs") / "unreadable_files.txt").read_text().splitlines()  # from both processes
    assert listed and all("broken" in line for line in listed)
    assert len(list((tmp_path / "logs").rglob("events.out.tfevents.*"))) == 1  # rank zero logs alone


def test_unreadable_training_files_are_skipped_counted_and_logged(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    real = sorted((Path(__file__).parents[1] / "data" / "samples").glob("*.jpg"))[:4]
    for path in real:
        shutil.copy(path, photos)
    (photos / "truncated.jpg").write_bytes(real[0].read_bytes()[:4000])
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.jpg").write_text("not an image")
    latin1 = photos / os.fsdecode(b"caf\xe9.jpg")  # a file name that is not UTF-8 (an old camera, a zip)
    latin1.write_bytes(b"junk")
    result = run_train(
        tmp_path, *FAST, f"data.root={photos}", "data.batch_size=8", "trainer.max_steps=3",
        "trainer.log_every_n_steps=1", "export.path=model.safetensors",
    )  # fmt: skip
    assert read_metadata(tmp_path / "model.safetensors")["steps"] == 3
    counts = [e.value for e in events(only_run(tmp_path / "logs")).Scalars("data/unreadable_files")]
    assert counts == [4.0, 4.0, 4.0]
    output = result.stdout + result.stderr
    for name in ("truncated.jpg", "empty.png", "notes.jpg"):
        assert output.count(f"skipping an unreadable training file: {photos / name}") == 1  # once each
    listed = (only_run(tmp_path / "logs") / "unreadable_files.txt").read_bytes().splitlines()
    assert len(listed) == 4 and any(line.startswith(os.fsencode(latin1)) for line in listed)  # its own bytes


def test_an_export_failure_mid_run_keeps_every_checkpoint_and_the_final_network(tmp_path):
    """The folder of export.path vanishes after the start checks (a full or unmounted disk): training goes on,
    checkpoints are written, and the end is one line naming a checkpoint with the final weights."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from fast_style.checkpointing import AtomicCheckpointIO, ExportCallback
    from fast_style.errors import UserError
    from fast_style.model_file import load_lightning_checkpoint
    from fast_style.paths import CONFIG_DIR
    from fast_style.training import build_module

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(FAST))
    exports = tmp_path / "exports"

    class LoseTheExportFolder(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            shutil.rmtree(exports)
            exports.write_text("now a file: nothing can be written below it")

    pl.seed_everything(0)
    module, checkpoints = build_module(cfg), tmp_path / "checkpoints"
    callbacks = [
        ExportCallback(str(exports / "model.safetensors")),
        ModelCheckpoint(dirpath=checkpoints, filename="step{step:06d}", auto_insert_metric_name=False,
                        every_n_train_steps=2, save_top_k=-1, save_last=True),
        LoseTheExportFolder(),
    ]  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, callbacks=callbacks, logger=False, enable_progress_bar=False,
        limit_val_batches=0, num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(UserError, match=r"could not write the model file .*kept in the Lightning checkpoint .*final"):
        trainer.fit(module, datamodule=instantiate(cfg.data))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step000002.ckpt", "step000003-final.ckpt"]
    net, meta = load_lightning_checkpoint(checkpoints / "step000003-final.ckpt")
    assert meta["steps"] == 3
    for name, tensor in module.net.state_dict().items():
        assert torch.equal(net.state_dict()[name], tensor.cpu()), name


def test_resuming_mid_epoch_gives_exactly_the_weights_of_an_uninterrupted_run(tmp_path):
    """12 bundled photos in batches of 2: 6 steps an epoch. 8 steps straight against 4 steps, stop, resume to 8:
    the data order and the random crops are part of the checkpoint, so every weight is identical."""
    from safetensors.torch import load_file

    common = (
        *FAST,
        "data.batch_size=2",
        "trainer.val_check_interval=100",
        "callbacks.model_checkpoint.every_n_train_steps=4",
    )
    run_train(tmp_path / "straight", *common, "trainer.max_steps=8", "export.path=model.safetensors")
    run_train(tmp_path / "first", *common, "trainer.max_steps=4", "export.path=model.safetensors")
    (checkpoint,) = (tmp_path / "first" / "logs").rglob("step000004.ckpt")
    run_train(
        tmp_path / "first", *common, "trainer.max_steps=8", "export.path=model.safetensors", f"ckpt_path={checkpoint}"
    )
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "first" / "model.safetensors")
    assert read_metadata(tmp_path / "first" / "model.safetensors")["steps"] == 8
    different = [name for name in straight if not torch.equal(straight[name], resumed[name])]
    assert not different, f"{len(different)} of {len(straight)} tensors differ, e.g. {different[0]}"


@pytest.mark.skipif(
    not cpu_has_fast_bf16(),
    reason="this CPU has no native bf16 (AVX512-BF16 or AMX): PyTorch would emulate it, tens of times slower than fp32",
)
def test_bf16_mixed_precision_training_on_a_cpu_with_native_bf16(tmp_path):
    """What the CPU trainer picks on such CPUs (trainer=cpu, precision ${cpu_precision:}): two steps at 32 px, against
    the same two steps in fp32. The first step's loss (same weights, same batch: the difference is precision alone)
    is within 2% of fp32's (measured 0.22%; bf16 Grams are within 0.82% and the style term, most of the loss, is a
    squared error, which doubles that) and not identical to it; the master weights stay fp32."""
    tiny = (
        *FAST, "data.image_size=32", "data.val_size=32", "data.val_max_images=2", "trainer.max_steps=2",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=2", "export.path=model.safetensors",
    )  # fmt: skip
    first_loss = {}
    for precision in ("32-true", "bf16-mixed"):
        run_train(tmp_path / precision, *tiny, f"trainer.precision={precision}")
        losses = [e.value for e in events(only_run(tmp_path / precision / "logs")).Scalars("train/loss")]
        assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
        first_loss[precision] = losses[0]
    assert first_loss["bf16-mixed"] != first_loss["32-true"]  # bf16 was in force
    assert first_loss["bf16-mixed"] == pytest.approx(first_loss["32-true"], rel=0.02)
    bf16 = tmp_path / "bf16-mixed"
    assert read_metadata(bf16 / "model.safetensors")["config"]["trainer"]["precision"] == "bf16-mixed"
    state = torch.load(only_run(bf16 / "logs") / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    weights = [t for name, t in state.items() if name.startswith("net.") and t.is_floating_point()]
    assert weights and all(t.dtype == torch.float32 and t.isfinite().all() for t in weights)


def test_init_starts_from_another_models_weights_and_snapshots_are_kept(trained, tmp_path):
    # A learning rate of 1e-30 (0 is refused): the exported network must be the one it started from.
    run_train(
        tmp_path, *FAST, "trainer.max_steps=2", f"init={trained / 'model.safetensors'}", "optimizer.lr=1e-30",
        "export.path=warm.safetensors", "export.snapshot_minutes=[0.0001]",
    )  # fmt: skip
    source, _ = load_model(trained / "model.safetensors")
    warm, meta = load_model(tmp_path / "warm.safetensors")
    assert meta["config"]["init"] == "model.safetensors"  # recorded by name: it lies outside the checkout
    for name, value in source.state_dict().items():  # (a fresh network differs by ~1e-2)
        torch.testing.assert_close(warm.state_dict()[name], value, rtol=0, atol=1e-12, msg=name)
    snapshot = read_metadata(tmp_path / "warm_0.0001min.safetensors")  # after 0.006 s of training: the first step
    assert snapshot["steps"] == 1 and snapshot["train_seconds"] >= 0


def test_init_from_another_architecture_is_one_line(tmp_path):
    other = tmp_path / "light.safetensors"
    save_model(TransformerNet(width=0.25), other, {"style": {"name": "light"}})
    result = run_train(tmp_path, *FAST, "trainer.max_steps=1", f"init={other}", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: init={other} is a ") and "set the model.* keys to match it" in line


def test_the_progress_bar_counts_the_whole_run_not_each_epoch(tmp_path):
    # 12 photos in batches of 2 are 6 steps an epoch: a per-epoch bar would restart at 0/6.
    result = run_train(tmp_path, *FAST, "trainer.max_steps=9", "data.batch_size=2", "export.path=model.safetensors")
    output = result.stdout + result.stderr
    assert "9/9" in output and "/6 " not in output and "Training (epoch 1)" in output


def test_warmup_cosine_and_progressive_resolution_do_what_the_config_says(tmp_path):
    # 12 photos in batches of 2: 6 steps an epoch, so the switch to 96 px at step 6 falls in the second epoch.
    run_train(
        tmp_path, *FAST, "trainer.max_steps=8", "trainer.log_every_n_steps=1", "data.batch_size=2",
        "scheduler=warmup_cosine", "scheduler.warmup_steps=3", "optimizer.lr=1e-3", "data.size_schedule=[[6,96]]",
        "export.path=model.safetensors",
    )  # fmt: skip
    run = events(only_run(tmp_path / "logs"))
    assert {e.step: e.value for e in run.Scalars("train/image_size")} == {**dict.fromkeys(range(6), 64), 6: 96, 7: 96}
    # Linear warm-up to the peak over 3 steps, then a cosine from the peak to 0 at step 8.
    expected = [0.25, 0.5, 0.75] + [0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]
    learning_rates = {e.step: e.value for e in run.Scalars("lr-Adam")}
    assert [learning_rates[step] for step in range(8)] == pytest.approx([1e-3 * f for f in expected], rel=1e-5)
