"""Optimization-based style transfer (Gatys et al. 2016): the image itself is optimized against the perceptual loss.

No trained network: every photo costs hundreds of VGG forward and backward passes, so this is the slow
reference that a feed-forward network is measured against (fast_style.evaluate), and a way to try a new
style image before training a network for it. It uses the same loss, layer presets and weights as training.

Iterates are kept valid images: after every step the pixels are clamped to [0, 1]. Without that the
optimizer reaches lower losses with out-of-range pixels that no saved image can have.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fast_style.config import compose_train_config
from fast_style.devices import pick_device
from fast_style.errors import UserError
from fast_style.files import safe_name
from fast_style.images import read_image, save_image, to_image, to_tensor
from fast_style.loss import PerceptualLoss
from fast_style.objective import build_loss
from fast_style.stylize_files import find_inputs, plan_outputs, unique_names

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "mix")
# Step sizes on [0, 1] pixels: L-BFGS scales its steps by its curvature estimate, Adam moves each pixel by ~lr.
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
LBFGS_HISTORY = 20  # curvature pairs kept (2 images each)
MAX_BACKTRACKS = 5  # step halvings tried before L-BFGS gives up on its memory and restarts
ARMIJO = 1e-4  # sufficient decrease: the loss must fall by at least this fraction of the predicted decrease
# Command-line keys that configure the style and the loss (as for train.py); with method=optimize they are
# handed to the composed training config through optimize.overrides.
STYLE_OVERRIDE = re.compile(r"^\+{0,2}(style\.[\w.]+|loss|loss\.[\w.]+)=")


@dataclass
class Step:
    """What an ``on_step`` callback sees after each iteration."""

    iteration: int  # iterations done so far
    image: torch.Tensor  # the current iterate, (1, 3, H, W) in [0, 1]; do not modify
    terms: dict[str, float]  # the latest loss evaluation (L-BFGS: of this iterate; Adam: of the one before)
    seconds: float  # optimizer time so far, callbacks excluded
    evaluations: int  # loss evaluations (forward + backward) so far


@dataclass
class OptimizationResult:
    image: torch.Tensor  # the final iterate, (1, 3, H, W) in [0, 1]
    history: list[dict[str, float]]  # history[k]: loss terms of the iterate after k iterations, k = 0 … iterations
    seconds: float  # optimizer time, callbacks excluded
    evaluations: int  # loss evaluations, the final measurement of Adam's last iterate included


def initial_image(content: torch.Tensor, init: str, noise_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``content``: the photo; ``noise``: uniform noise; ``mix``: (1 − noise_ratio)·photo + noise_ratio·noise."""
    if init == "content":
        return content.clone(memory_format=torch.contiguous_format)
    noise = torch.rand(content.shape, generator=generator).to(content)
    return noise if init == "noise" else (1 - noise_ratio) * content + noise_ratio * noise


def check_iterations(iterations: object, key: str = "optimize.iterations") -> int:
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise UserError(f"{key} must be a positive integer, got {iterations!r}")
    return iterations


def check_options(iterations: object, optimizer: str, lr: float | None, init: str, noise_ratio: float) -> float:
    """One clear line for a bad optimization setting, before any work is done; returns the step size."""
    check_iterations(iterations)
    if optimizer not in OPTIMIZERS:
        raise UserError(f"optimize.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if init not in INITS:
        raise UserError(f"optimize.init must be one of {', '.join(INITS)}, got {init!r}")
    if not isinstance(noise_ratio, (int, float)) or not 0 <= noise_ratio <= 1:
        raise UserError(f"optimize.noise_ratio must be between 0 and 1, got {noise_ratio!r}")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise UserError(f"optimize.lr must be a number > 0 or null, got {lr!r}")
    return float(lr)


def optimize_image(
    loss: PerceptualLoss,
    content: torch.Tensor,
    iterations: int,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    init: str = "content",
    noise_ratio: float = 0.5,
    seed: int = 0,
    on_step: Callable[[Step], None] | None = None,
) -> OptimizationResult:
    """Optimize an image of ``content``'s size (1, 3, H, W, in [0, 1], on ``loss``'s device) for ``iterations``
    iterations of L-BFGS or Adam; every iterate has its pixels in [0, 1]."""
    lr = check_options(iterations, optimizer, lr, init, noise_ratio)
    content = content.float().contiguous()
    content_features = loss.content_targets(content)
    image = initial_image(content, init, noise_ratio, torch.Generator().manual_seed(seed)).clamp(0, 1)
    evaluations = 0

    def evaluate(x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """Loss terms at ``x`` and the gradient of the total."""
        nonlocal evaluations
        evaluations += 1
        x = x.detach().requires_grad_(True)
        terms = loss(x, content, content_features)
        (grad,) = torch.autograd.grad(terms["loss"], x)
        return {name: float(value.detach()) for name, value in terms.items()}, grad

    run = projected_lbfgs if optimizer == "lbfgs" else clamped_adam
    history: list[dict[str, float]] = []
    seconds = 0.0
    steps = run(evaluate, image, iterations, lr, history)
    for iteration in range(1, iterations + 1):
        start = time.perf_counter()
        image = next(steps)
        seconds += time.perf_counter() - start
        if on_step is not None:
            on_step(Step(iteration, image, history[-1], seconds, evaluations))
    if optimizer == "adam":  # Adam evaluates each iterate before moving on: measure the last one too
        history.append(evaluate(image)[0])
    return OptimizationResult(image, history, seconds, evaluations)


Evaluate = Callable[[torch.Tensor], tuple[dict[str, float], torch.Tensor]]


def projected_lbfgs(
    evaluate: Evaluate, x: torch.Tensor, iterations: int, lr: float, history: list[dict[str, float]]
) -> Iterator[torch.Tensor]:
    """L-BFGS kept inside [0, 1] by projection; yields each iterate, appending its loss terms to ``history``.

    Pixels held at a bound by their gradient are left out of the quasi-Newton step; each step is clamped, and
    the curvature pair is the step actually taken. A backtracking (Armijo) search along the clamped path keeps
    the loss from jumping up: usually the first trial is accepted (one evaluation per iteration).
    """
    terms, grad = evaluate(x)
    history.append(terms)
    pairs: deque[tuple[torch.Tensor, torch.Tensor, float]] = deque(maxlen=LBFGS_HISTORY)
    for _ in range(iterations):
        free = ~(((x <= 0) & (grad > 0)) | ((x >= 1) & (grad < 0)))
        direction = -two_loop(grad * free, pairs) * free
        # The first step is scaled to a small total change; later ones trust the curvature estimate.
        t = lr if pairs else lr * min(1.0, 1.0 / float((grad * free).abs().sum().clamp_min(1e-12)))
        for _trial in range(MAX_BACKTRACKS + 1):
            new_x = (x + t * direction).clamp(0, 1)
            new_terms, new_grad = evaluate(new_x)
            if new_terms["loss"] <= terms["loss"] + ARMIJO * float((grad * (new_x - x)).sum()):
                break
            t /= 2
        else:
            pairs.clear()  # no sufficient decrease even with a tiny step: the curvature memory misleads
        s, y = new_x - x, new_grad - grad
        sy = float((s * y).sum())
        if sy > 1e-10:
            pairs.append((s, y, 1.0 / sy))
        x, terms, grad = new_x, new_terms, new_grad
        history.append(terms)
        yield x


def two_loop(grad: torch.Tensor, pairs: deque[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """The L-BFGS two-loop recursion: the inverse-Hessian estimate times ``grad``."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float((s * q).sum())
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q *= float((s * y).sum()) / float((y * y).sum())
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        beta = rho * float((y * q).sum())
        q += (alpha - beta) * s
    return q


def clamped_adam(
    evaluate: Evaluate, x: torch.Tensor, iterations: int, lr: float, history: list[dict[str, float]]
) -> Iterator[torch.Tensor]:
    """Adam on the pixels, clamped to [0, 1] after every step; yields each iterate (``history`` gets the loss
    terms of the iterate each step started from)."""
    x = x.clone().requires_grad_(True)
    adam = torch.optim.Adam([x], lr=lr)
    for _ in range(iterations):
        terms, x.grad = evaluate(x)
        history.append(terms)
        adam.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        yield x.detach()


def optimize_argv(argv: list[str]) -> list[str]:
    """Let stylize.py take the style and loss options of train.py (``style.image=``, ``style.blend=``,
    ``loss=gatys``, ``loss.pooling=avg``, ...): they move into ``optimize.overrides``, since ``style``
    there is a name, not a config group. ``style.image=`` without ``style=`` names the style after the image.
    """
    moved = [arg.lstrip("+") for arg in argv[1:] if STYLE_OVERRIDE.match(arg)]
    if not moved:
        return argv
    out = [arg for arg in argv if not STYLE_OVERRIDE.match(arg)]
    image = next((arg.removeprefix("style.image=") for arg in moved if arg.startswith("style.image=")), None)
    if image and not any(arg.startswith("style=") for arg in argv[1:]):
        out.append(f"style={Path(image.strip('[]').split(',')[0].strip()).stem or 'custom'}")
    quoted = ",".join("'" + arg.replace("'", "\\'") + "'" for arg in moved)
    return [*out, f"optimize.overrides=[{quoted}]"]


def check_method(cfg: DictConfig) -> str:
    """``feedforward`` or ``optimize``; style and loss options only mean something to the latter."""
    method = cfg.get("method", "feedforward")
    if method not in ("feedforward", "optimize"):
        raise UserError(f"method must be feedforward or optimize, got {method!r}")
    overrides = list(cfg.get("optimize", {}).get("overrides") or [])
    if method == "feedforward" and overrides:
        raise UserError(
            f"{overrides[0]} sets up a loss, which only method=optimize uses; a trained model has its style "
            "built in (add method=optimize, or drop it)"
        )
    return method


def style_config(style: str, overrides: list[str]) -> DictConfig:
    """The training config of style ``style`` (a name in configs/style/, or any name with style.image=)."""
    if style.endswith((".safetensors", ".ckpt")) or "/" in style:
        raise UserError(
            f"method=optimize needs a style name from configs/style/ or style.image=PATH, not the model file {style}"
        )
    return compose_train_config([f"style={style}", *overrides])


def load_photo(path: Path, max_size: int | None) -> tuple[Image.Image, torch.Tensor]:
    """The photo as read (for its alpha channel) after downscaling to ``max_size``, and as a tensor."""
    image = read_image(path)
    if max_size is not None and max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    return image, to_tensor(image)


def optimize_files(cfg: DictConfig) -> int:
    """stylize.py method=optimize: every input photo with every style; returns the number of unreadable inputs."""
    opts = cfg.optimize
    check_options(opts.iterations, opts.optimizer, opts.lr, opts.init, opts.noise_ratio)
    iterations = opts.iterations
    save_every = opts.get("save_every")
    if save_every is not None:
        check_iterations(save_every, "optimize.save_every")
    max_size = cfg.max_size if cfg.max_size is not None else opts.max_size
    device = pick_device(cfg.device)
    sources = find_inputs(str(cfg.input))
    styles = list(cfg.style) if isinstance(cfg.style, ListConfig) else [str(cfg.style)]
    configs = [style_config(str(style), list(opts.overrides or [])) for style in styles]
    names = unique_names([safe_name(c.style.name) for c in configs])
    destinations = plan_outputs(sources, names, str(cfg.output), cfg.overwrite)
    plan = [(c, src, destinations[src, name]) for c, name in zip(configs, names) for src in sources]

    failed: set[Path] = set()
    loss, loss_cfg = None, None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, TextColumn("{task.fields[losses]}"), transient=True) as progress:
        for style_cfg, src, dst in plan:
            if src in failed:
                continue
            try:
                photo, content = load_photo(src, max_size)
            except UserError as e:
                failed.add(src)
                progress.console.print(f"skipped: {e}", soft_wrap=True)  # a path is not broken across lines
                continue
            if style_cfg is not loss_cfg:
                loss, loss_cfg = build_loss(style_cfg).to(device), style_cfg
            if min(photo.size) < loss.vgg.min_side:  # the loss network's poolings need this much
                failed.add(src)
                progress.console.print(
                    f"skipped: {src} is {photo.width}x{photo.height} after max_size; the loss network needs at least"
                    f" {loss.vgg.min_side} px on each side",
                    soft_wrap=True,
                )
                continue
            task = progress.add_task(f"{src.name} → {style_cfg.style.name}", total=iterations, losses="")

            def on_step(step: Step, task: int = task, dst: Path = dst) -> None:
                t = step.terms
                losses = f"loss {t['loss']:.4f} content {t['content']:.4f} style {t['style']:.4f} tv {t['tv']:.5f}"
                progress.update(task, completed=step.iteration, losses=losses)
                if save_every and step.iteration % save_every == 0 and step.iteration < iterations:
                    save_image(to_image(step.image), dst.with_name(f"{dst.stem}_{step.iteration:04d}{dst.suffix}"))

            result = optimize_image(
                loss, content.to(device), iterations, opts.optimizer, opts.lr, opts.init, opts.noise_ratio, opts.seed,
                on_step,
            )  # fmt: skip
            progress.remove_task(task)
            image = to_image(result.image)
            if photo.mode in ("RGBA", "LA"):
                image.putalpha(photo.getchannel("A"))
            save_image(image, dst)
            progress.console.print(
                f"{dst}: loss {result.history[0]['loss']:.4f} → {result.history[-1]['loss']:.4f} "
                f"after {iterations} {opts.optimizer} iterations ({result.seconds:.1f} s)"
            )
    return len(failed)
