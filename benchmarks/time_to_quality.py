"""Time to quality: how good a style network gets after N minutes of training, per recipe.

    python benchmarks/time_to_quality.py --style starry_night --budgets 5 10 20 30 \\
        --recipe scratch="data.image_size=128" --recipe warm="data.image_size=128 init=wave"

Each recipe is a list of ``train.py`` overrides. The benchmark trains it once (on ../shared/data/train_photos by
default) with snapshots of the model after each budget of training time (``export.snapshot_minutes``; start-up,
validation and this script's evaluation do not count), then measures every snapshot with ``fast_style.evaluate``
on photos it never trained on (../shared/data/content, 256 px), under its own training objective:

* equivalent L-BFGS iterations (how many iterations of per-image optimization reach the network's loss), on a
  curve fine enough to resolve small counts (``--iterations``, default 5 10 25 50), cached per objective;
* the style term relative to the unchanged photo's (1.0: no style at all; a convincing Starry Night is ~0.2);
* SSIM of the luminance with the photo.

Several ``--style`` names train every recipe on each style; ``--parallel`` runs all those trainings at once (on one
GPU, where a single small-batch training leaves most of it idle: each run's minutes then count while sharing it).
A recipe that sets ``trainer.max_steps`` may end before the largest budget: later budgets then measure its final
model. Without one it trains for the whole budget at a constant rate after any warm-up (the cosine schedule's
length is ``trainer.max_steps``).

``--from-run NAME=RUN_DIR`` measures a run that was trained already (``train.py``'s run folder) instead: at each
budget its last Lightning checkpoint within that much training time. A recipe whose folder under ``--work`` holds
its snapshots already is measured again without retraining.

The last line is machine-readable, for the best recipe at the largest budget:
``best=<recipe> minutes_to_25=<first budget with >= 25 equivalent iterations, or none> equiv_at_<B>=<n, or a
bound like <5> style_ratio=<r>``. For ``--from-run``, a budget with no new checkpoint since the previous one is
left out of the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def parse_named(values: list[str], what: str) -> dict[str, str]:
    named = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            sys.exit(f"error: {what} must look like NAME=..., got {value!r}")
        named[name] = rest
    return named


def training_command(style: str, overrides: str, args: argparse.Namespace, folder: Path) -> list[str]:
    """``train.py`` for one recipe on one style, with snapshots at every budget, stopped after the largest."""
    recipe = shlex.split(overrides)
    steps = [] if sets_max_steps(style, recipe) else ["trainer.max_steps=1000000"]
    return [
        sys.executable,
        str(ROOT / "train.py"),
        f"style={style}",
        f"data.root={args.data}",
        f"export.path={folder / 'model.safetensors'}",
        "export.overwrite=true",
        f"export.snapshot_minutes=[{','.join(f'{b:g}' for b in args.budgets)}]",
        f"+trainer.max_time='{max_time(max(args.budgets) + 0.5)}'",
        *steps,
        "trainer.val_check_interval=1000000",  # no validation passes inside the budget
        f"hydra.run.dir={folder / 'run'}",
        *recipe,
    ]


def sets_max_steps(style: str, recipe: list[str]) -> bool:
    """Whether the recipe chooses its own step count, on the command line or through a config it selects
    (``experiment=cpu``): its warm-up + cosine schedule then decays over those steps, as a user's run would."""
    from fast_style.config import compose_train_config

    if any(o.startswith("trainer.max_steps=") for o in recipe):
        return True
    default = compose_train_config([f"style={style}"]).trainer.max_steps
    return compose_train_config([f"style={style}", *recipe]).trainer.max_steps != default


def train_recipes(jobs: dict[str, tuple[str, str]], args: argparse.Namespace) -> dict[tuple[str, float], Path]:
    """Train each job (name: style, overrides) for the largest budget, one after another or (``--parallel``) all at
    once; the model file at each budget. A job whose snapshots are all there already is not trained again."""
    running = []
    for name, (style, overrides) in jobs.items():
        folder = args.work / name
        folder.mkdir(parents=True, exist_ok=True)
        if all((folder / f"model_{b:g}min.safetensors").is_file() for b in args.budgets):
            print(f"{name}: snapshots found in {folder}, not retraining", flush=True)
            continue
        command = training_command(style, overrides, args, folder)
        print(f"{name}: training {max(args.budgets):g} minutes: {shlex.join(command[1:])}", flush=True)
        log = open(folder / "train.log", "w")  # noqa: SIM115 (closed when the process ends, below)
        running.append((name, subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT), log))
        if not args.parallel:
            wait(running, time.monotonic())
    wait(running, time.monotonic())
    models = {}
    for name in jobs:
        folder = args.work / name
        final = folder / "model.safetensors"
        for budget in args.budgets:
            snapshot = folder / f"model_{budget:g}min.safetensors"
            if snapshot.is_file() or final.is_file():  # no snapshot: training ended (max_steps) before this budget
                models[name, budget] = snapshot if snapshot.is_file() else final
            else:
                sys.exit(f"error: training {name} wrote no {snapshot.name}; see {folder / 'train.log'}")
    return models


def wait(running: list[tuple[str, subprocess.Popen, IO[str]]], start: float) -> None:
    """Wait for every running training, emptying the list. If one fails, stop the others (they would go on
    training for nothing) and exit."""
    while running:
        for job in list(running):
            name, process, log = job
            if process.poll() is None:
                continue
            running.remove(job)
            log.close()
            if process.returncode != 0:
                for _, other, _ in running:
                    other.terminate()
                sys.exit(f"error: training {name} failed; see {log.name}")
            print(f"{name}: trained, {(time.monotonic() - start) / 60:.1f} min of wall time", flush=True)
        time.sleep(1)


def max_time(minutes: float) -> str:
    """Lightning's ``max_time`` as DD:HH:MM:SS."""
    seconds = round(60 * minutes)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_checkpoints(name: str, run_dir: Path, budgets: list[float]) -> dict[float, Path]:
    """The last Lightning checkpoint of a finished run within each budget of training time."""
    timed = []
    for path in sorted((run_dir / "checkpoints").glob("step*.ckpt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        seconds = next(
            (s["train_seconds"] for k, s in checkpoint.get("callbacks", {}).items() if "ExportCallback" in k), None
        )
        if seconds is not None:
            timed.append((seconds, path))
    if not timed:
        sys.exit(f"error: {run_dir}/checkpoints has no step*.ckpt with a training time; is it a train.py run folder?")
    chosen = {}
    for budget in budgets:
        within = [path for seconds, path in sorted(timed) if seconds <= 60 * budget]
        if within and within[-1] in chosen.values():
            continue  # no checkpoint between this budget and the last: the same model again
        if within:
            chosen[budget] = within[-1]
        else:
            print(f"{name}: no checkpoint within {budget:g} minutes", flush=True)
    return chosen


def measure(models: dict[tuple[str, float], Path], args: argparse.Namespace) -> dict[tuple[str, float], dict]:
    """fast_style.evaluate on every snapshot at once: one L-BFGS curve per objective (cached in --work)."""
    from fast_style.evaluate import main as evaluate

    keys = list(models)
    argv = [
        f"style=[{','.join(str(models[k]) for k in keys)}]",
        f"content={args.photos}",
        f"size={args.size}",
        f"iterations=[{','.join(map(str, args.iterations))}]",
        f"cache={args.work / 'cache'}",
        f"output={args.work / 'evaluation'}",
        *([f"max_images={args.max_images}"] if args.max_images else []),
    ]
    start = time.monotonic()
    report = evaluate(argv)
    print(f"evaluation took {(time.monotonic() - start) / 60:.1f} min (not counted in any budget)", flush=True)
    return dict(zip(keys, report["models"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--style", nargs="+", default=["starry_night"], help="styles to train (train.py style=)")
    parser.add_argument("--parallel", action="store_true", help="run all trainings at once (one GPU)")
    parser.add_argument("--recipe", action="append", default=[], help='NAME="train.py overrides" (repeatable)')
    parser.add_argument("--from-run", action="append", default=[], help="NAME=RUN_DIR of a finished train.py run")
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20, 30], help="minutes of training")
    parser.add_argument("--data", type=Path, default=SHARED / "train_photos", help="training photos")
    parser.add_argument("--photos", type=Path, default=SHARED / "content", help="photos to measure on")
    parser.add_argument("--max-images", type=int, default=None, help="measure on the first N photos only")
    parser.add_argument("--size", type=int, default=256, help="measuring size (px)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[5, 10, 25, 50], help="L-BFGS curve")
    parser.add_argument("--work", type=Path, default=Path("time_to_quality"), help="runs, cache and evaluation")
    args = parser.parse_args()
    args.budgets = sorted(args.budgets)
    recipes, runs = parse_named(args.recipe, "--recipe"), parse_named(args.from_run, "--from-run")
    if not recipes and not runs:
        recipes = {"default": ""}
    for path, what in ((args.photos, "--photos"), *([(args.data, "--data")] if recipes else [])):
        if not path.is_dir():
            sys.exit(f"skipped: {what} {path} is not here (../shared/data is laid beside the checkout in CI)")
    args.work, args.data = args.work.resolve(), args.data.resolve()

    several = len(args.style) > 1
    jobs = {f"{style}_{name}" if several else name: (style, o) for style in args.style for name, o in recipes.items()}
    models = train_recipes(jobs, args) if jobs else {}
    for name, run_dir in runs.items():
        models.update({(name, b): p for b, p in run_checkpoints(name, Path(run_dir), args.budgets).items()})
    results = measure(models, args)

    flags = " ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in cpu_flags())
    print(
        f"\n# {torch.cuda.get_device_name() + ', CPU ' if torch.cuda.is_available() else ''}"
        f"{platform.processor() or platform.machine()} ({flags}), torch {torch.__version__},"
        f" OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {' '.join(args.style)};"
        f" measured at {args.size} px on {args.photos}"
    )
    print("| recipe | minutes | steps | equiv. L-BFGS iterations | style / photo's | SSIM |")
    print("|---|---|---|---|---|---|")
    summary: dict[str, list[tuple[float, float | None, float]]] = {}
    shown_at: dict[tuple[str, float], str] = {}
    for (name, budget), result in results.items():
        mean = result["mean"]
        equivalent = mean["equivalent_iterations"]
        ratio = mean["network"]["style"] / mean["photo"]["style"]
        shown = f"{equivalent['estimate']:.1f}" if equivalent["estimate"] is not None else bound(equivalent)
        print(f"| {name} | {budget:g} | {result['steps']} | {shown} | {ratio:.3f} | {mean['network']['ssim']:.3f} |")
        shown_at[(name, budget)] = shown
        value = equivalent["estimate"] if equivalent["estimate"] is not None else equivalent["lower"]
        summary.setdefault(name, []).append((budget, value, ratio))

    def final(name: str) -> tuple[float, float]:
        budget, value, _ = max(summary[name])
        return budget, value or 0.0

    best = max(summary, key=lambda name: final(name)[::-1])
    to_25 = next((b for b, v, _ in sorted(summary[best]) if v is not None and v >= 25), None)
    budget, value = final(best)
    ratio = max(summary[best])[2]
    shown = shown_at[(best, budget)]
    print(f"best={best} minutes_to_25={'none' if to_25 is None else f'{to_25:g}'} "
          f"equiv_at_{budget:g}={shown} style_ratio={ratio:.3f}")  # fmt: skip


def bound(equivalent: dict) -> str:
    return f">{equivalent['lower']:.0f}" if equivalent["upper"] is None else f"<{equivalent['upper']:.0f}"


def cpu_flags() -> list[str]:
    from fast_style.devices import cpu_info

    return cpu_info().split()


if __name__ == "__main__":
    main()
