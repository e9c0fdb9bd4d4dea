"""Training-step throughput: a straightforward fp32 loop (as in the reference implementations) vs ours.

    python benchmarks/train_step.py [--rounds 5] [--size 256] [--batch 4]

Both loops train the same TransformerNet against the same loss network and layers (VGG16, johnson
preset: content relu2_2, style relu1_2/2_2/3_3/4_3), so the ratio measures the engineering, not a
lighter loss. VGG16 weights are random here (timing does not depend on them and tests must not
download); the last table row times our default loss network (offline caffe VGG19) as well.

The straightforward loop: fp32, NCHW, the full VGG forward on both the output and the input batch.
Ours: what training does by default on this machine: bf16 autocast where the CPU has native bf16
(fp32 elsewhere), channels_last, content targets under no_grad from a VGG stopped at the content layer.
The last line is machine-readable: ratio=<ours/straightforward>.
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
from fast_style.config import cpu_precision
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
    net = TransformerNet()
    vgg = torchvision.models.vgg16(weights=None).features[:23].eval().requires_grad_(False)
    taps = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

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
    batch: torch.Tensor, style: torch.Tensor, network: str, precision: str, channels_last: bool = True
) -> Callable[[], None]:
    """The body of StyleTransferModule.training_step plus the optimiser step, as Lightning runs it."""
    loss = PerceptualLoss(network, preset="johnson")
    loss.set_style([style])
    module = StyleTransferModule(
        TransformerNet(), loss, optimizer=lambda params: torch.optim.Adam(params, 1e-3), channels_last=channels_last
    )
    module.on_fit_start()  # channels_last
    optimizer = module.configure_optimizers()
    x = module._layout(batch)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16-mixed" else contextlib.nullcontext
    )

    def step() -> None:
        with autocast():
            terms = module.loss(module.net(x), x)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()

    return step


def median_seconds(steps: list[Callable[[], None]], rounds: int) -> list[float]:
    """Median time of one step of each loop, timed round-robin so machine noise hits all loops alike."""
    for step in steps:
        step()  # warm-up: allocator, oneDNN kernel selection
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for i, step in enumerate(steps):
            start = time.perf_counter()
            step()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = torch.rand(args.batch, 3, args.size, args.size)
    style = torch.rand(1, 3, 256, 256)
    precision = cpu_precision()
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
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads;"
        f" batch {args.batch} x {args.size}x{args.size}; median of {args.rounds} round-robin steps after 1 warm-up"
    )
    print("| loop | loss network | precision, layout | s/step | images/s |")
    print("|---|---|---|---|---|")
    times = median_seconds([step for *_, step in rows], args.rounds)
    for (name, network, mode, _), seconds in zip(rows, times):
        print(f"| {name} | {network} | {mode} | {seconds:.2f} | {args.batch / seconds:.2f} |")
    print(f"ratio={times[0] / times[1]:.2f}")


if __name__ == "__main__":
    main()
