"""Hydra configs: every style composes, groups build their objects, user mistakes get one clear line."""

import itertools
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fast_style.config import check_config, resolve_style_argument, style_names
from fast_style.errors import UserError
from fast_style.network import TransformerNet
from fast_style.paths import CONFIG_DIR

from .conftest import STYLES

BUNDLED = ["composition_vii", "starry_night", "the_scream", "udnie", "wave"]


def compose_train(*overrides: str, data_root: str | None = "/photos"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"data.root={data_root}"] * bool(data_root) + list(overrides))


def test_the_seven_styles_have_configs_and_every_bundled_painting_is_one():
    assert style_names() == sorted([*BUNDLED, "candy", "mosaic"])
    assert {p.stem for p in STYLES.glob("*.jpg")} <= set(style_names())  # (candy and mosaic, where users add them)


def how_weights_were_chosen(text: str) -> str:
    """A style file's comment on how its loss weights were chosen: the block that starts "Weights chosen by looking",
    or, for a painting that is not bundled and so could not be looked at, the note on its style_weight line."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# Weights chosen by looking"):
            return " ".join(itertools.takewhile(lambda line: line.startswith("#"), lines[i:]))
        if line.strip().startswith("style_weight:") and "# not previewed" in line:
            return line.split("#", 1)[1]
    return ""


@pytest.mark.parametrize("name", style_names())
def test_every_style_config_names_its_painting_and_says_how_its_weights_were_chosen(name):
    """Content and style terms are relative errors (1 = an error as large as the target), so sensible weights are
    near 1: previews and trained networks found a style weight of 0.3 only a colour filter and 5 too strong (the
    photo's shapes lost). Weights from other implementations (Johnson's 1e5) are a mistake here. Total variation
    (a mean squared pixel difference) is 0.003-0.014 for the bundled photos, so up to 10 it stays a smoothing term."""
    cfg = compose_train(f"style={name}")
    check_config(cfg)
    assert cfg.style.name == name  # outputs, run folders and model files are named after it
    assert Path(cfg.style.image) == STYLES / f"{name}.jpg"
    assert cfg.export.path == f"checkpoints/{name}.safetensors"
    text = (CONFIG_DIR / "style" / f"{name}.yaml").read_text()
    assert ("bundled in data/styles" in text) == (name in BUNDLED)
    if name in BUNDLED:
        assert Path(cfg.style.image).is_file()

    content, style, tv = cfg.loss.content_weight, cfg.loss.style_weight, cfg.loss.tv_weight
    assert content > 0 and 0.3 < style / content < 5 and 0 <= tv / content <= 10
    comment = how_weights_were_chosen(text)
    assert comment, f"{name}.yaml does not say how its weights were chosen"
    if "not previewed" in comment:
        assert name not in BUNDLED  # a bundled painting can be looked at
    else:
        weight = f"{style:g}"
        assert re.search(rf"\b{re.escape(weight)}\b", comment), f"style weight {weight} is not one looked at: {comment}"


def test_command_line_overrides_beat_the_style_files_weights():
    cfg = compose_train("style=wave", "loss.style_weight=123.0")
    assert cfg.loss.style_weight == 123.0


def test_model_group_builds_the_network_with_its_options():
    net = instantiate(compose_train("model.upsample=nearest", "model.width=0.5").model)
    assert isinstance(net, TransformerNet) and net.config()["upsample"] == "nearest" and net.width == 0.5
    assert instantiate(compose_train("model=light").model).width == 0.25


def test_the_cpu_recipe_warms_up_for_30_steps_then_decays_along_a_cosine_to_zero():
    cfg = compose_train("experiment=cpu", "style=wave")
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.optimizer.lr)
    scheduler = instantiate(cfg.scheduler)(optimizer)
    rates = []
    for _ in range(cfg.trainer.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = cfg.optimizer.lr
    assert rates[0] == pytest.approx(peak / 31) and rates[14] == pytest.approx(peak * 15 / 31)  # linear warm-up
    assert max(rates) == pytest.approx(peak) and rates.index(max(rates)) == 30
    middle = 30 + (cfg.trainer.max_steps - 30) // 2
    assert rates[middle] == pytest.approx(peak / 2, rel=0.02)  # half-way through the decay: half the rate
    assert rates[-1] < 0.001 * peak and all(a >= b for a, b in itertools.pairwise(rates[30:]))


def test_quickstart_trains_on_the_bundled_photos():
    cfg = compose_train("experiment=quickstart", data_root=None)
    assert Path(cfg.data.root).is_dir() and cfg.trainer.max_steps <= 500


@pytest.mark.parametrize(
    ("override", "targets"),
    [
        ("logger=tensorboard", {"TensorBoardLogger"}),
        ("logger=csv", {"CSVLogger"}),
        ("logger=many", {"TensorBoardLogger", "CSVLogger"}),
        ("~logger", set()),
    ],
)
def test_logger_group_selects_the_loggers(override, targets):
    loggers = compose_train(override).get("logger") or {}
    assert {node._target_.rpartition(".")[2] for node in loggers.values()} == targets


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_configs_compose(trainer):
    cfg = compose_train(f"trainer={trainer}")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    assert cfg.trainer.precision in {"bf16-mixed", "16-mixed", "32-true"}


def test_a_new_style_name_with_an_image_becomes_the_custom_style():
    argv = resolve_style_argument(["train.py", "style=my_style", "style.image=/x.jpg"])
    assert argv == ["train.py", "style=custom", "style.name=my_style", "style.image=/x.jpg"]
    cfg = compose_train(*argv[1:])
    assert cfg.style.name == "my_style" and cfg.style.image == "/x.jpg"


def test_known_styles_and_sweeps_pass_through_unchanged():
    argv = ["train.py", "-m", "style=starry_night,wave", "loss.style_weight=1e5,3e5"]
    assert resolve_style_argument(argv) == argv


def test_an_unknown_style_without_an_image_lists_the_choices():
    with pytest.raises(UserError, match="unknown style 'nope'.*starry_night.*style.image=PATH"):
        resolve_style_argument(["train.py", "style=nope"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=four", "data.batch_size='four' is not an integer"),
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5 is not an integer"),
        ("loss.style_weight=lots", "loss.style_weight='lots' is not a number from 0"),
        ("export.overwrite=maybe", "export.overwrite='maybe' is not true or false"),
        ("model.width=true", "model.width=True is not"),
        ("optimizer.lr=-1", "optimizer.lr=-1 is not a number > 0"),
        ("optimizer.lr=fast", "optimizer.lr='fast' is not a number > 0"),
        ("trainer.precision=bf17", "trainer.precision='bf17' is not one of 32-true"),
        ("trainer.max_steps=0", "trainer.max_steps=0 is not an integer from 1"),
    ],
)
def test_values_of_the_wrong_type_are_one_clear_line(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_config(compose_train(override))


@pytest.mark.parametrize(("spelling", "value"), [("no", False), ("False", False), ("off", False), ("yes", True)])
def test_boolean_keys_take_the_usual_spellings_as_real_booleans(spelling, value):
    """A string is "truthy" in Python: export.overwrite=no must mean False, not a non-empty string."""
    cfg = compose_train(f"export.overwrite={spelling}", f"channels_last={spelling}")
    check_config(cfg)
    assert cfg.export.overwrite is value and cfg.channels_last is value


def test_ddp_does_not_resend_the_frozen_loss_networks_buffers_every_step():
    strategy = instantiate(compose_train("trainer=ddp").trainer.strategy)
    assert strategy._ddp_kwargs["broadcast_buffers"] is False


def test_missing_data_root_says_which_key_to_set():
    cfg = compose_train(data_root=None)
    assert OmegaConf.is_missing(cfg.data, "root")
    with pytest.raises(UserError, match="data.root is not set"):
        check_config(cfg)
