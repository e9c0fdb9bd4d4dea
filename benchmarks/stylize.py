"""Stylizing speed and memory: a straightforward fp32 forward (as in the reference implementations) vs ours.

    python benchmarks/stylize.py [--sizes 512x512 1024x1024 2048x2048 3840x2160] [--repeats 2]

Each (loop, size) runs in its own process so that its peak memory (resident set size) is its own.
Loops: `straightforward`: TransformerNet in fp32 eager under no_grad, NCHW; `ours`: Stylizer with its
defaults (auto precision: bf16 where the CPU or GPU has it natively, else fp32; channels_last with reduced precision;
inference mode; tile=auto, which tiles what does not fit its memory budget); `ours, light`: the same with
model.width=0.5; `onnx`: the exported ONNX file in onnxruntime (CUDA provider when there is a GPU). Weights are
random: speed does not depend on them. The last line is machine-readable: ratio_1024=<straightforward ms / ours ms>
light_1024_ms=<ms>.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from fast_style.export import export_onnx
from fast_style.inference import Stylizer
from fast_style.model_file import save_model
from fast_style.network import TransformerNet

LOOPS = ("straightforward", "ours", "ours, light", "onnx")


def measure(loop: str, width: int, height: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per image and peak RSS for one loop at one size (run in a fresh process)."""
    torch.manual_seed(0)
    net = TransformerNet(width=0.5 if loop == "ours, light" else 1.0)
    image = torch.rand(1, 3, height, width)
    if loop == "straightforward":
        net.eval()

        def run() -> None:
            with torch.no_grad():
                net(image)

    elif loop == "onnx":
        import onnxruntime

        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(net, f"{tmp}/m.onnx")
            providers = ["CUDAExecutionProvider"] if torch.cuda.is_available() else []
            session = onnxruntime.InferenceSession(f"{tmp}/m.onnx", providers=[*providers, "CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: image.numpy()}

        def run() -> None:
            session.run(None, feed)

    else:
        with tempfile.TemporaryDirectory() as tmp:
            save_model(net, f"{tmp}/m.safetensors")
            stylizer = Stylizer.load(f"{tmp}/m.safetensors")

        def run() -> None:
            stylizer.stylize_tensor(image)

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return {"ms": 1000 * statistics.median(times), "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x1024", "2048x2048", "3840x2160"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("LOOP", "WIDTH", "HEIGHT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        loop, width, height = args.one
        print(json.dumps(measure(loop, int(width), int(height), args.repeats)))
        return

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    memory = "peak GPU memory" if torch.cuda.is_available() else "peak RSS of the process"
    print(f"# {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"| size | loop | ms / image | {memory} (MB) |")
    print("|---|---|---|---|")
    results: dict[tuple[str, str], float] = {}
    for size in args.sizes:
        width, height = size.split("x")
        for loop in LOOPS:
            cmd = [sys.executable, __file__, "--one", loop, width, height, "--repeats", str(args.repeats)]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            results[size, loop] = out["ms"]
            print(f"| {size} | {loop} | {out['ms']:.0f} | {out['peak_mb']:.0f} |", flush=True)
    if ("1024x1024", "ours") in results:
        ratio = results["1024x1024", "straightforward"] / results["1024x1024", "ours"]
        print(f"ratio_1024={ratio:.2f} light_1024_ms={results['1024x1024', 'ours, light']:.0f}")


if __name__ == "__main__":
    main()
