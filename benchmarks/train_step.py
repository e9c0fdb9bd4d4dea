"""Training-step throughput: a straightforward fp32 loop (as in the reference implementations) vs ours.

    python benchmarks/train_step.py [--rounds 5] [--size 256] [--batch 4] [--device cuda] [--compile]

Both loops train the same TransformerNet against the same loss network and layers (VGG16, johnson
preset: content relu2_2, style relu1_2/2_2/3_3/4_3), so the ratio measures the engineering, not a
lighter loss. VGG16 weights are random here (timing does not depend on them and tests must not
download); the last table row times our default loss network (offline caffe VGG19) as well.

The straightforward loop: fp32, NCHW, the full VGG forward on both the output and the input batch.
Ours: what training does by default on this machine: bf16 autocast where the CPU has native bf16
(fp32 elsewhere; on a GPU, what trainer=gpu uses), channels_last, content targets under no_grad from a VGG
stopped at the content layer. ``--compile`` adds a row with the loss and network under ``torch.compile``
(compilation is not timed). The last line is machine-readable: ratio=<straightforward/ours>.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

import fast_style.vgg
from fast_style.config import cpu_precision, gpu_amp_precision
from fast_style.loss import PerceptualLoss, gram_matrix
from fast_style.module import StyleTransferModule
from fast_style.network import TransformerNet


def random_vgg16_weights(network: str) -> dict:
    model = getattr(torchvision.models, network)(weights=None)
    convs = [n for n in fast_style.vgg.layer_names(network) if n.startswith("conv")]
    modules = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    return {name: (m.weight.detach(), m.bias.detach()) for name, m in zip(convs, modules)}


def straightforward_step(batch: torch.Tensor, style: torch.Tensor) -> Callable[[], None]:
    """The reference recipe: one VGG16 up to relu4_3, run in full on both the output and the input."""
    device = batch.device
    net = TransformerNet().to(device)
    vgg = torchvision.models.vgg16(weights=None).features[:23].eval().requires_grad_(False).to(device)
    taps = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def features(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, h = {}, (x - mean) / std
        for i, layer in enumerate(vgg):
            h = layer(h)
            if i in taps:
                out[taps[i]] = h
        return out

    style_grams = {k: gram_matrix(v) for k, v in features(style).items()}
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)

    def step() -> None:
        y = net(batch)
        fy, fx = features(y), features(batch)
        loss = F.mse_loss(fy["relu2_2"], fx["relu2_2"])
        for layer, target in style_grams.items():
            loss = loss + 10.0 * F.mse_loss(gram_matrix(fy[layer]), target.expand(len(batch), -1, -1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def our_step(
    batch: torch.Tensor,
    style: torch.Tensor,
    network: str,
    precision: str,
    channels_last: bool = True,
    compiled: bool = False,
) -> Callable[[], None]:
    """The body of StyleTransferModule.training_step plus the optimiser step, as Lightning runs it."""
    loss = PerceptualLoss(network, preset="johnson").to(batch.device)
    loss.set_style([style.to(batch.device)])
    module = StyleTransferModule(
        TransformerNet(), loss, optimizer=lambda params: torch.optim.Adam(params, 1e-3), channels_last=channels_last
    ).to(batch.device)
    module.on_fit_start()  # channels_last
    optimizer = module.configure_optimizers()
    x = module._layout(batch)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(batch.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)  # what Lightning's 16-mixed does

    def terms_of(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return module.loss(module.net(x), x)

    if compiled:
        terms_of = torch.compile(terms_of)

    def step() -> None:
        with autocast():
            terms = terms_of(x)
        optimizer.zero_grad()
        scaler.scale(terms["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def median_seconds(steps: list[Callable[[], None]], rounds: int, device: torch.device, repeat: int) -> list[float]:
    """Median time of one step of each loop, timed round-robin so machine noise hits all loops alike; on a GPU
    each timing spans ``repeat`` steps (a step takes milliseconds there) and waits for the GPU to finish."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for step in steps:
        step()  # warm-up: allocator, oneDNN/cuDNN kernel selection, compilation
        step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for i, step in enumerate(steps):
            sync()
            start = time.perf_counter()
            for _ in range(repeat):
                step()
            sync()
            times[i].append((time.perf_counter() - start) / repeat)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="also time our step under torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainer=gpu sets it
    torch.manual_seed(0)
    batch = torch.rand(args.batch, 3, args.size, args.size, device=device)
    style = torch.rand(1, 3, 256, 256)
    precision = gpu_amp_precision() if device.type == "cuda" else cpu_precision()
    fast_style.vgg.load_torchvision_vgg = random_vgg16_weights  # no download; speed does not depend on weights

    rows = [
        ("straightforward", "vgg16 johnson", "fp32, NCHW", straightforward_step(batch, style)),
        ("fast-style", "vgg16 johnson", f"{precision}, channels_last", our_step(batch, style, "vgg16", precision)),
        ("fast-style", "vgg16 johnson", f"{precision}, NCHW", our_step(batch, style, "vgg16", precision, False)),
        (
            "fast-style",
            "vgg19 johnson (default)",
            f"{precision}, channels_last",
            our_step(batch, style, "vgg19", precision),
        ),
    ]
    if args.compile:
        compiled = our_step(batch, style, "vgg19", precision, compiled=True)
        rows.append(("fast-style, torch.compile", "vgg19 johnson (default)", f"{precision}, channels_last", compiled))
    machine = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    repeat = 10 if device.type == "cuda" else 1
    print(
        f"# {machine}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} x"
        f" {args.size}x{args.size}; median of {args.rounds} round-robin timings of {repeat} step(s) after 2 warm-ups"
    )
    print("| loop | loss network | precision, layout | s/step | images/s |")
    print("|---|---|---|---|---|")
    times = median_seconds([step for *_, step in rows], args.rounds, device, repeat)
    for (name, network, mode, _), seconds in zip(rows, times):
        print(f"| {name} | {network} | {mode} | {seconds:.4g} | {args.batch / seconds:.4g} |")
    print(f"ratio={times[0] / times[1]:.2f}")


if __name__ == "__main__":
    main()
