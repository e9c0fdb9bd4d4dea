"""How good is a style network? Its perceptual loss on photos, next to what per-image optimization reaches.

``python -m fast_style.evaluate style=starry_night content=photos/``

After Johnson et al. (2016, Sec. 4, Fig. 5): on every photo, the network's content, style and TV loss
are compared with those of the photo itself and of Gatys-style L-BFGS optimization (initialised from the
photo) after 50, 100, 200 and 300 iterations, all with one loss: the style's own training config. From
these comes the network's *equivalent L-BFGS iterations*: how many the optimizer needs to reach the
network's total loss (interpolated between measured iterations; outside them only a bound is known).

Every loss is measured on the image a user would save (clamped to [0, 1], 8 bits per channel); the
optimizer's iterates are clamped after every step, so it cannot win with pixels no image can have.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torchvision.transforms import v2
from torchvision.utils import make_grid

from fast_style.config import compose_train_config, style_names
from fast_style.devices import pick_device
from fast_style.errors import UserError, exit_on_user_error
from fast_style.files import atomic_path
from fast_style.images import list_images, load_rgb, save_image, to_image, to_tensor
from fast_style.inference import Stylizer
from fast_style.loss import PerceptualLoss
from fast_style.objective import as_list, build_loss, file_sha256
from fast_style.optimize import STYLE_OVERRIDE, Step, optimize_image
from fast_style.options import DEVICE, check_values, text
from fast_style.paths import CONFIG_DIR, PROJECT_ROOT

TERMS = ("content", "style", "tv", "total")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as in inference.RGB_TO_YCBCR


def as_saved(image: torch.Tensor) -> torch.Tensor:
    """The image as it is written to a file: clamped, rounded to 8 bits (like images.to_image)."""
    return torch.floor(image.float().clamp(0, 1) * 255 + 0.5) / 255


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """SSIM (Wang et al. 2004) of the luminance of two RGB images (1, 3, H, W) in [0, 1]: Gaussian window,
    K1 = 0.01, K2 = 0.03, averaged over the positions where the whole window fits."""
    luma = torch.tensor(LUMA, device=a.device).view(1, 3, 1, 1)
    x, y = (a.float() * luma).sum(1, keepdim=True), (b.float() * luma).sum(1, keepdim=True)
    g = torch.exp(-((torch.arange(window, device=a.device) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).view(1, 1, window, window)
    mu_x, mu_y = F.conv2d(x, kernel), F.conv2d(y, kernel)
    var_x = F.conv2d(x * x, kernel) - mu_x**2
    var_y = F.conv2d(y * y, kernel) - mu_y**2
    cov = F.conv2d(x * y, kernel) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def equivalent_iterations(network_total: float, curve: dict[int, float]) -> dict[str, float | None]:
    """How many optimizer iterations reach ``network_total``, from losses measured at a few iterations.

    Uses the best loss reached so far at each measured iteration and interpolates linearly between two of
    them. Outside the measured range only a bound is known and ``estimate`` is None: a network better
    than the last measurement needs more (``lower`` = last, ``upper`` None); one worse than the first
    needs fewer (``lower`` 0, ``upper`` = first).
    """
    points = sorted(curve.items())
    best: list[tuple[int, float]] = []
    for iteration, loss in points:
        best.append((iteration, min(loss, best[-1][1]) if best else loss))
    first, last = best[0], best[-1]
    if network_total > first[1]:
        return {"estimate": None, "lower": 0.0, "upper": float(first[0])}
    if network_total < last[1]:
        return {"estimate": None, "lower": float(last[0]), "upper": None}
    reached = next(k for k, (_, loss) in enumerate(best) if loss <= network_total)
    if reached == 0:  # exactly the first measurement
        return {"estimate": float(first[0]), "lower": float(first[0]), "upper": float(first[0])}
    (i0, l0), (i1, l1) = best[reached - 1], best[reached]
    estimate = i0 + (l0 - network_total) / (l0 - l1) * (i1 - i0)
    return {"estimate": estimate, "lower": float(i0), "upper": float(i1)}


def format_equivalent(value: dict[str, float | None]) -> str:
    if value["estimate"] is not None:
        return f"{value['estimate']:.0f}"
    return f">{value['lower']:.0f}" if value["upper"] is None else f"<{value['upper']:.0f}"


def load_content(path: Path, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [0, 1]: shorter side resized to ``size``, centre-cropped, 8-bit values."""
    image = v2.functional.to_image(load_rgb(path))
    image = v2.functional.center_crop(v2.functional.resize(image, size, antialias=True), size)
    return v2.functional.to_dtype(image, torch.float32, scale=True).unsqueeze(0)


def parse_args(argv: Sequence[str]) -> tuple[DictConfig, list[str]]:
    """``key=value`` pairs over configs/evaluate/evaluate.yaml, and the style/loss overrides for the yardstick."""
    overrides = [arg.lstrip("+") for arg in argv if STYLE_OVERRIDE.match(arg)]
    settings = [arg for arg in argv if not STYLE_OVERRIDE.match(arg)]
    if bad := next((arg for arg in settings if "=" not in arg), None):
        raise UserError(f"could not read {bad!r}: arguments are key=value pairs, e.g. content=photos/ size=256")
    cfg = OmegaConf.load(CONFIG_DIR / "evaluate" / "evaluate.yaml")
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(settings))
    except OmegaConfBaseException as e:
        known = ", ".join(str(k) for k in OmegaConf.load(CONFIG_DIR / "evaluate" / "evaluate.yaml"))
        raise UserError(f"{str(e).strip().splitlines()[0]}; the options are {known}, plus style.* and loss.*") from e
    assert isinstance(cfg, DictConfig)
    check_settings(cfg)
    return cfg, overrides


def check_settings(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "content"):
        raise UserError("content is not set; add content=FOLDER (the photos to evaluate on)")
    check_values(
        cfg, {"device": DEVICE, "output": text(), "tensorboard": text(null=True), "loss_style": text(null=True)}
    )
    iterations = cfg.iterations
    if (
        not isinstance(iterations, ListConfig)
        or not len(iterations)
        or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in iterations)
        or list(iterations) != sorted(set(iterations))
    ):
        raise UserError(f"iterations must be increasing positive integers like [50,100,200,300], got {iterations}")
    if not isinstance(cfg.size, int) or isinstance(cfg.size, bool) or cfg.size < 32:
        raise UserError(f"size must be an integer of at least 32 (pixels), got {cfg.size!r}")
    if cfg.max_images is not None and (not isinstance(cfg.max_images, int) or cfg.max_images < 1):
        raise UserError(f"max_images must be a positive integer or null, got {cfg.max_images!r}")
    if not isinstance(cfg.seed, int):
        raise UserError(f"seed must be an integer, got {cfg.seed!r}")


def recorded_style_image(image: dict[str, str]) -> str:
    """A style image a model file records (path + sha256): at its path, else a file with the same bytes in the
    project's data/styles (a model trained on another machine)."""
    path, sha = Path(image["path"]), image.get("sha256")
    for candidate in (path, PROJECT_ROOT / path):  # model files record paths inside the checkout relative to it
        if candidate.is_file() and (sha is None or file_sha256(candidate) == sha):
            return str(candidate)
    for candidate in sorted((PROJECT_ROOT / "data" / "styles").glob("*")):
        if candidate.name == path.name and (sha is None or file_sha256(candidate) == sha):
            return str(candidate)
    raise UserError(f"the style image this model was trained with ({path}) is not here; pass loss_style=NAME")


def run_config(entry: str, checkpoint: Path) -> tuple[Path, DictConfig]:
    """The resolved Hydra config of the run that wrote a Lightning checkpoint (``<run>/checkpoints/x.ckpt``)."""
    path = checkpoint.parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"cannot tell what {entry} was trained for (no {path}); pass loss_style=NAME")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return path, cfg


def trained_style_name(entry: str, stylizer: Stylizer) -> str:
    """The name of the style a model was trained for (from a Lightning checkpoint's run config if need be)."""
    path = Path(stylizer.metadata["path"])
    if path.suffix == ".ckpt":
        return str(run_config(entry, path)[1].style.name)
    return str(stylizer.metadata.get("style", {}).get("name", ""))


def own_objective(entry: str, stylizer: Stylizer) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """What a model was trained to minimise: (where it is recorded, style settings, loss settings), from its model
    file's metadata or, for a Lightning checkpoint, its run folder's Hydra config."""
    metadata, path = stylizer.metadata, Path(stylizer.metadata["path"])
    if path.suffix == ".ckpt":
        config_path, cfg = run_config(entry, path)
        style = OmegaConf.to_container(cfg.style, resolve=True)
        loss = OmegaConf.to_container(cfg.loss, resolve=True)
        assert isinstance(style, dict) and isinstance(loss, dict)
        return str(config_path), style, loss
    if "loss" not in metadata or "images" not in metadata.get("style", {}):
        name = str(metadata.get("style", {}).get("name", ""))
        return f"configs/style/{name}.yaml", *config_objective(name, [])
    recorded = metadata["style"]
    style = {
        "name": recorded["name"],
        "image": [recorded_style_image(image) for image in recorded["images"]],
        "size": recorded["size"],
        "blend": recorded.get("blend"),
    }
    return str(path), style, metadata["loss"]


def config_objective(name: str, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Style and loss settings of ``configs/style/<name>.yaml`` with ``overrides``, as train.py would compose them."""
    if name not in style_names() and not any(o.startswith("style.image=") for o in overrides):
        raise UserError(
            f"style {name!r} has no config in configs/style/ ({', '.join(style_names())}); pass its image "
            "with style.image=PATH, or loss_style=NAME to measure with another style"
        )
    cfg = compose_train_config([f"style={name}", *overrides])
    style, loss = OmegaConf.to_container(cfg.style, resolve=True), OmegaConf.to_container(cfg.loss, resolve=True)
    assert isinstance(style, dict) and isinstance(loss, dict)
    return style, loss


def describe_objective(source: str, style: dict[str, Any], loss: dict[str, Any]) -> dict[str, Any]:
    """An objective as the report gives it: style settings, images (path and sha256), loss settings, and where it
    was read from."""
    images = [{"path": str(p), "sha256": file_sha256(p)} for p in as_list(style["image"])]
    loss = {k: v for k, v in loss.items() if k != "_target_"}
    return {**style, "images": images, "loss": loss, "objective": source}


def objective_identity(style: dict[str, Any], loss: dict[str, Any]) -> dict[str, Any]:
    """What the optimizer's results depend on, so that every model trained for one objective shares them: not where
    the objective was read from, nor how its style image's path was written (absolute in a config, relative in a
    model file), nor the style's name (wave_light is wave's objective)."""
    identity = {k: v for k, v in describe_objective("", style, loss).items() if k not in ("objective", "image", "name")}
    identity["images"] = [image["sha256"] for image in identity["images"]]
    # The temporal weight is a training term between two views of a crop; one image's objective has none.
    identity["loss"] = {k: v for k, v in identity["loss"].items() if k != "temporal_weight"}
    return identity


class Yardstick:
    """One objective (style image + loss settings), the photos' content features, and the optimizer's results
    per photo, computed once and shared by every model measured against it."""

    def __init__(
        self, style: dict[str, Any], loss: dict[str, Any], device: torch.device, cache: Path | None = None
    ) -> None:
        self.identity, self.cache = objective_identity(style, loss), cache
        self.loss: PerceptualLoss = build_loss(OmegaConf.create({"style": style, "loss": loss})).to(device).eval()
        self.device = device
        self.optimized: dict[Path, tuple[dict[int, dict[str, float]], torch.Tensor]] = {}

    @torch.no_grad()
    def measure(self, image: torch.Tensor, content: torch.Tensor, features: dict[str, torch.Tensor]) -> dict:
        """Loss terms and luminance SSIM of ``image`` as saved, against ``content``."""
        saved = as_saved(image.to(self.device))
        terms = self.loss(saved, content, features)
        values = {name: float(terms["loss" if name == "total" else name]) for name in TERMS}
        return {**values, "ssim": ssim(saved, content)}

    def optimize(
        self, path: Path, content: torch.Tensor, iterations: list[int], seed: int, progress: Progress
    ) -> tuple[dict[int, dict[str, float]], torch.Tensor]:
        """Measurements at each of ``iterations`` (with the optimizer's seconds and loss evaluations so far)
        and the last image."""
        cached = None if path in self.optimized else self.cache_path(path, content, iterations, seed)
        if cached and cached.with_suffix(".json").is_file():
            results = {int(k): v for k, v in json.loads(cached.with_suffix(".json").read_text()).items()}
            self.optimized[path] = (results, to_tensor(load_rgb(cached.with_suffix(".png"))))
        if path not in self.optimized:
            features = self.loss.content_targets(content)
            results: dict[int, dict[str, float]] = {}
            task = progress.add_task(f"L-BFGS on {path.name}", total=iterations[-1])

            def on_step(step: Step) -> None:
                progress.update(task, completed=step.iteration)
                if step.iteration in iterations:
                    measured = self.measure(step.image, content, features)
                    results[step.iteration] = {**measured, "seconds": step.seconds, "evaluations": step.evaluations}

            final = optimize_image(self.loss, content, iterations[-1], "lbfgs", seed=seed, on_step=on_step)
            progress.remove_task(task)
            self.optimized[path] = (results, as_saved(final.image.cpu()))
            if cached:
                save_image(to_image(self.optimized[path][1]), cached.with_suffix(".png"))
                with atomic_path(cached.with_suffix(".json")) as tmp:
                    tmp.write_text(json.dumps(results))
        return self.optimized[path]

    def cache_path(self, path: Path, content: torch.Tensor, iterations: list[int], seed: int) -> Path | None:
        """Where the optimizer's results for this objective, photo and settings are kept (no suffix), if caching:
        the name is a hash of everything they depend on, so a changed setting never reads stale numbers."""
        if self.cache is None:
            return None
        key = json.dumps(
            [self.identity, file_sha256(path), list(content.shape), iterations, seed, str(self.device)],
            sort_keys=True,
            default=str,
        )
        return self.cache / f"lbfgs_{path.stem}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def mean_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-by-field mean of nested dicts of numbers."""
    first = records[0]
    if isinstance(first, dict):
        return {key: mean_of([r[key] for r in records]) for key in first}
    return sum(records) / len(records)


def evaluate_model(
    entry: str,
    stylizer: Stylizer,
    objective: dict[str, Any],
    yardstick: Yardstick,
    photos: list[Path],
    cfg: DictConfig,
    progress: Progress,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Every measurement of one model on every photo, and its image grid (content | network | optimizer);
    ``objective`` is the model's own (:func:`describe_objective`), ``yardstick`` measures it and may be shared."""
    iterations = list(cfg.iterations)
    rows, tiles = [], []
    task = progress.add_task(f"{entry}: photos", total=len(photos))
    for index, path in enumerate(photos):
        content = load_content(path, cfg.size).to(yardstick.device)
        features = yardstick.loss.content_targets(content)
        if index == 0:
            stylizer.stylize_tensor(content)  # warm-up, so the first photo is not charged for lazy initialisation
        start = time.perf_counter()
        output = stylizer.stylize_tensor(content)
        if output.device.type == "cuda":
            torch.cuda.synchronize(output.device)
        seconds = time.perf_counter() - start
        network = {**yardstick.measure(output, content, features), "seconds": seconds}
        optimized, last_image = yardstick.optimize(path, content, iterations, cfg.seed, progress)
        curve = {i: optimized[i]["total"] for i in iterations}
        rows.append(
            {
                "image": str(path),
                "network": network,
                "photo": yardstick.measure(content, content, features),
                "optimizer": {str(i): optimized[i] for i in iterations},
                "equivalent_iterations": equivalent_iterations(network["total"], curve),
            }
        )
        tiles += [content.cpu(), as_saved(output).cpu(), as_saved(last_image)]
        progress.advance(task)
    progress.remove_task(task)
    mean = mean_of([{k: v for k, v in row.items() if k in ("network", "photo", "optimizer")} for row in rows])
    mean_curve = {i: mean["optimizer"][str(i)]["total"] for i in iterations}
    mean["equivalent_iterations"] = equivalent_iterations(mean["network"]["total"], mean_curve)
    result = {
        "model": entry,
        "path": stylizer.metadata["path"],
        "steps": stylizer.metadata.get("steps"),
        "yardstick": objective,
        "images": rows,
        "mean": mean,
    }
    grid = make_grid(torch.cat(tiles), nrow=3, padding=4, pad_value=1.0)
    return result, grid


def markdown_table(result: dict[str, Any], iterations: list[int]) -> str:
    """One row per photo and one for the mean: the numbers of ``result`` that matter most."""
    last = str(iterations[-1])
    header = ["image", "net content", "net style", "net tv", "net total", "photo total"]
    header += [f"L-BFGS {i}" for i in iterations]
    header += ["equiv. iterations", "SSIM net", f"SSIM L-BFGS {last}", "net s", f"L-BFGS {last} s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in [*((Path(r["image"]).name, r) for r in result["images"]), ("mean", result["mean"])]:
        net, opt = row["network"], row["optimizer"]
        cells = [name, *(f"{net[t]:.4g}" for t in TERMS), f"{row['photo']['total']:.4g}"]
        cells += [f"{opt[str(i)]['total']:.4g}" for i in iterations]
        cells += [format_equivalent(row["equivalent_iterations"]), f"{net['ssim']:.3f}", f"{opt[last]['ssim']:.3f}"]
        cells += [f"{net['seconds']:.3f}", f"{opt[last]['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Measure every model of ``cfg.style`` on the photos of ``cfg.content``; writes evaluation.json and grids."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    content = Path(str(cfg.content)).expanduser()
    photos = ([content] if content.is_file() else list_images(content, "content"))[: cfg.max_images]
    entries = [str(s) for s in cfg.style] if isinstance(cfg.style, ListConfig) else [str(cfg.style)]
    stylizers = [Stylizer.load(entry, device=str(device), precision="fp32", backend="torch") for entry in entries]
    if cfg.loss_style or overrides:  # a chosen yardstick: a style config (each model's own name by default)
        names = [str(cfg.loss_style or trained_style_name(entry, s)) for entry, s in zip(entries, stylizers)]
        objectives = [(f"configs/style/{name}.yaml", *config_objective(name, overrides)) for name in names]
    else:  # what each model was trained to minimise
        objectives = [own_objective(entry, s) for entry, s in zip(entries, stylizers)]
    # Models with one objective share one yardstick (the optimizer runs once), whatever their styles are called.
    keys = [json.dumps(objective_identity(style, loss), sort_keys=True, default=str) for _, style, loss in objectives]
    cache = Path(str(cfg.cache)).expanduser() if cfg.cache else None
    yardsticks: dict[str, Yardstick] = {}
    for key, (_, style, loss) in zip(keys, objectives):
        if key not in yardsticks:
            yardsticks[key] = Yardstick(style, loss, device, cache)
    output = Path(str(cfg.output)).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    iterations = list(cfg.iterations)

    models = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        for index, (entry, stylizer, key, objective) in enumerate(zip(entries, stylizers, keys, objectives)):
            described = describe_objective(*objective)  # this model's own, though its yardstick may be a twin's
            result, grid = evaluate_model(entry, stylizer, described, yardsticks[key], photos, cfg, progress)
            grid_path = output / f"grid_{index}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', stylizer.name)}.jpg"
            save_image(to_image(grid.unsqueeze(0)), grid_path)
            result["grid"] = str(grid_path)
            models.append((result, grid))

    report = {
        "settings": {
            "content": str(cfg.content),
            "images": len(photos),
            "size": cfg.size,
            "iterations": iterations,
            "optimizer": "projected L-BFGS (pixels kept in [0, 1]), initialised from the photo",
            "seed": cfg.seed,
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "models": [result for result, _ in models],
    }
    (output / "evaluation.json").write_text(json.dumps(report, indent=2))
    for result, _ in models:
        yardstick = result["yardstick"]
        print(f"\n{result['model']} ({result['steps']} steps), measured with {yardstick['objective']}:")
        print(markdown_table(result, iterations))
    print(f"\nwrote {output / 'evaluation.json'} and the grids (photo | network | L-BFGS {iterations[-1]})")
    if cfg.tensorboard:
        log_tensorboard(Path(str(cfg.tensorboard)), models, iterations)
    return report


def log_tensorboard(log_dir: Path, models: list[tuple[dict[str, Any], torch.Tensor]], iterations: list[int]) -> None:
    """Per model: the mean optimizer curve with the network's total as a flat line beside it, SSIM, the
    equivalent iterations, the grid and the table."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for index, (result, grid) in enumerate(models):
            tag = f"{index}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', result['model'])}"
            mean = result["mean"]
            curve = {0: mean["photo"]["total"], **{i: mean["optimizer"][str(i)]["total"] for i in iterations}}
            for iteration, total in curve.items():
                writer.add_scalar(f"{tag}/optimizer_total", total, iteration)
                writer.add_scalar(f"{tag}/network_total", mean["network"]["total"], iteration)
            writer.add_scalar(f"{tag}/ssim_network", mean["network"]["ssim"])
            if (estimate := mean["equivalent_iterations"]["estimate"]) is not None:
                writer.add_scalar(f"{tag}/equivalent_iterations", estimate)
            writer.add_image(f"{tag}/grid", grid)
            writer.add_text(f"{tag}/table", markdown_table(result, iterations))


def main(argv: Sequence[str]) -> dict[str, Any]:
    cfg, overrides = parse_args(argv)
    return evaluate(cfg, overrides)


if __name__ == "__main__":
    with exit_on_user_error():
        main(sys.argv[1:])
