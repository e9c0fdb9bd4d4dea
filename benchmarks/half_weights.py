"""Does storing a model's weights in fp16 change its pictures? Prints the largest pixel change, in 8-bit levels.

    python benchmarks/half_weights.py MODEL.safetensors [--photos ../shared/data/content] [--sizes 256 1024]
        [--write OUT.safetensors]

The model runs in fp32 twice: with its weights as stored, and with them rounded to fp16 and back (what loading
an fp16 file does). Both outputs are rounded to 8 bits as saved images are. With ``--write``, an fp16 copy
(same metadata, half the size) is written only if no pixel moved by more than one level.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from fast_style.images import read_image, to_tensor
from fast_style.model_file import load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_CONTENT = ROOT.parent / "shared" / "data" / "content"  # beside the checkout; else the bundled samples


def as_pixels(net: torch.nn.Module, image: Image.Image) -> torch.Tensor:
    with torch.inference_mode():
        return torch.round(net(to_tensor(image)).float() * 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    default = SHARED_CONTENT if SHARED_CONTENT.is_dir() else ROOT / "data" / "samples"
    parser.add_argument("--photos", type=Path, default=default)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--write", type=Path, help="write an fp16 copy here if no pixel moves by more than 1 level")
    args = parser.parse_args()

    net, metadata = load_model(args.model)
    half, _ = load_model(args.model)
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in net.state_dict().items()})
    print(f"# {args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 compute")
    print("| size | photo | max change (levels) | mean change (levels) |\n|---|---|---|---|")
    worst = 0.0
    for size in args.sizes:
        for path in sorted(args.photos.glob("*.jpg")):
            image = read_image(path)
            image.thumbnail((size, size))
            change = (as_pixels(net, image) - as_pixels(half, image)).abs()
            worst = max(worst, change.max().item())
            print(f"| {size} | {path.name} | {change.max().item():.0f} | {change.mean().item():.4f} |")
    print(f"max_change_levels={worst:.0f}")
    if args.write:
        if worst > 1:
            raise SystemExit(f"not written: fp16 weights move a pixel by {worst:.0f} levels")
        save_model(net, args.write, {k: v for k, v in metadata.items() if k not in ("format", "model")}, "float16")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
