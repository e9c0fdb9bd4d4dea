"""Flicker, style and speed of each ``video.stabilize`` mode, on clips whose true motion is known.

    python benchmarks/video.py --style checkpoints/wave.safetensors [--frames 8] [--size 320x180]
        [--speed-size 640x360] [--strip docs/video_strip.png]

Clips are made from real photos (``../shared/data/content`` beside the checkout, else ``data/samples``)
by moving a virtual camera over them: a slow pan (at 320×180: 1.4 px right, 0.5 px down per frame), a slow
zoom in (1% per frame), and a still shot with fresh Gaussian noise in every frame (σ = 3/255, like a sensor).
The camera is an affine map, so where every pixel of frame t+1 was in frame t is known exactly.

* warping error: mean |S(t+1) − S(t) moved by the known motion| over the pixels visible in both frames
  (in 1/255), averaged over frame pairs and clips; "input" is the same measure on the clips themselves
  (interpolation and noise), the floor that no stylization can go below;
* style / content: the loss terms (relative errors) of the stylized frames under the objective the model
  records (its style image and loss settings; ``--loss-style NAME`` takes configs/style/NAME.yaml instead),
  averaged over all frames: a mode that stabilizes by washing the style out shows here;
* frames/s at ``--speed-size`` on random pictures, batches of 4 (the network's speed does not depend on the
  content; the ``motion`` estimate's does: random frames are its worst case, it never converges),
  after one warm-up frame; ``clip`` also needs a first pass over ``video.clip_frames`` frames per clip,
  reported apart as seconds.

The last line is machine-readable: ``flicker_ratio=<default mode / none> style_change=<relative change of the
style term, default vs none> default=<mode> best=<lowest warping error> best_ratio=<its ratio>``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from fast_style.evaluate import Yardstick, config_objective, own_objective
from fast_style.images import load_rgb, to_tensor
from fast_style.inference import Stylizer
from fast_style.stabilize import MODES
from fast_style.video import Stabilizer, VideoSettings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = VideoSettings().stabilize


def camera(t: int, kind: str, aspect: float) -> torch.Tensor:
    """3×3 affine map from frame t's normalised coordinates ([-1, 1]², align_corners=False) to the photo's."""
    scale, dx, dy = 0.7, 0.0, 0.0  # frames see 70% of the photo's width
    if kind == "pan":
        dx, dy = 0.006 * t - 0.15, 0.003 * t - 0.05
    elif kind == "zoom":
        scale = 0.7 / 1.01**t
    return torch.tensor([[scale, 0.0, dx], [0.0, scale * aspect, dy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def make_clip(
    photo: torch.Tensor, kind: str, frames: int, size: tuple[int, int], noise: float
) -> tuple[torch.Tensor, float]:
    """(frames, 3, H, W) views of (1, 3, h, w) ``photo`` through ``camera`` (``still`` adds per-frame noise), and
    the aspect factor ``camera`` needs."""
    width, height = size
    # The view's height as a fraction of the photo's, for square pixels: (H / W) · (w / h).
    aspect = (height / width) * (photo.shape[-1] / photo.shape[-2])
    thetas = torch.stack([camera(t, kind, aspect)[:2] for t in range(frames)]).float()
    grid = F.affine_grid(thetas, [frames, 3, height, width], align_corners=False)
    clip = F.grid_sample(photo.expand(frames, -1, -1, -1), grid, mode="bicubic", align_corners=False).clamp(0, 1)
    if kind == "still":
        generator = torch.Generator().manual_seed(0)
        clip = (clip + noise * torch.randn(clip.shape, generator=generator)).clamp(0, 1)
    return clip, aspect


def warping_error(frames: torch.Tensor, kind: str, aspect: float) -> float:
    """Mean |frame t+1 − frame t moved to t+1| over pixels visible in both (1 px margin), in 1/255."""
    errors = []
    n, _, height, width = frames.shape
    for t in range(n - 1):
        # Frame t+1's pixel p shows photo point A(t+1)·p, which frame t shows at A(t)⁻¹·A(t+1)·p.
        theta = (torch.linalg.inv(camera(t, kind, aspect)) @ camera(t + 1, kind, aspect))[:2].float()
        grid = F.affine_grid(theta[None], [1, 3, height, width], align_corners=False)
        moved = F.grid_sample(frames[t : t + 1], grid, mode="bilinear", align_corners=False)
        inside = (grid.abs() <= torch.tensor([1 - 2 / width, 1 - 2 / height])).all(-1)[:, None]
        difference = (frames[t + 1 : t + 2] - moved).abs().mean(1, keepdim=True)
        errors.append(difference[inside].mean().item() * 255)
    return sum(errors) / len(errors)


def stylize_clip(stylizer: Stylizer, clip: torch.Tensor, mode: str, blend: float, batch: int = 4) -> torch.Tensor:
    """The clip stylized in ``mode`` as stylize.py does it (``clip`` statistics from every frame)."""
    stabilizer = Stabilizer(VideoSettings(stabilize=mode, blend=blend))
    stabilizer.prepare(stylizer, clip)
    return torch.cat([stabilizer(stylizer, clip[i : i + batch]) for i in range(0, len(clip), batch)])


def speed(stylizer: Stylizer, mode: str, size: tuple[int, int], frames: int) -> tuple[float, float | None]:
    """(frames/s, seconds of clip mode's first pass over VideoSettings.clip_frames frames) at ``size``."""
    width, height = size
    torch.manual_seed(0)
    clip = torch.rand(1 + frames, 3, height, width)
    stabilizer = Stabilizer(VideoSettings(stabilize=mode))
    gather = None
    if stabilizer.clip is not None:
        start = time.perf_counter()
        stabilizer.prepare(stylizer, clip[: VideoSettings().clip_frames])
        gather = time.perf_counter() - start
    stabilizer(stylizer, clip[:1])  # warm-up
    start = time.perf_counter()
    for i in range(1, len(clip), 4):
        stabilizer(stylizer, clip[i : i + 4])
    return frames / (time.perf_counter() - start), gather


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--style", default=str(ROOT / "checkpoints" / "wave.safetensors"))
    parser.add_argument("--loss-style", default=None, help="configs/style/ name to measure the style term with")
    parser.add_argument("--content", default=None, help="folder of photos (default ../shared/data/content)")
    parser.add_argument("--photos", type=int, default=2, help="photos used; each gives a pan, a zoom and a still")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="320x180", help="clip size for flicker and style")
    parser.add_argument("--noise", type=float, default=3 / 255)
    parser.add_argument("--speed-size", default="640x360")
    parser.add_argument("--speed-frames", type=int, default=8, help="0: no speed measurement")
    parser.add_argument("--blend", type=float, default=VideoSettings().blend, help="video.blend for blend/motion modes")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument(
        "--strip", default=None, help="save a PNG per mode: 4 frames of the first still shot and their differences ×4"
    )
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    speed_size = tuple(int(v) for v in args.speed_size.split("x"))

    shared = ROOT.parent / "shared" / "data" / "content"
    content = Path(args.content) if args.content else shared if shared.is_dir() else ROOT / "data" / "samples"
    photos = sorted(content.glob("*.jpg"))[: args.photos]
    stylizer = Stylizer.load(args.style)
    # The model's own recorded objective (style image, loss settings), or configs/style/<--loss-style>.yaml.
    if args.loss_style:
        style, loss = config_objective(args.loss_style, [])
    else:
        _, style, loss = own_objective(args.style, stylizer)
    yardstick = Yardstick(style, loss, stylizer.device)
    clips = []
    for path in photos:
        photo = to_tensor(load_rgb(path))
        clips += [(path.stem, kind, *make_clip(photo, kind, args.frames, size, args.noise)) for kind in KINDS]

    print(
        f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {stylizer.device}, "
        f"{stylizer.dtype}; model {args.style} ({stylizer.name}); {len(photos)} photos from {content} x "
        f"{'/'.join(KINDS)}, {args.frames} frames at {args.size}; speed at {args.speed_size}"
    )
    rows: dict[str, dict[str, float]] = {}
    rows["input"] = {"warp": mean(warping_error(c, k, a) for _, k, c, a in clips)}
    strips = []
    for mode in args.modes:
        warp, style, content_term = [], [], []
        for index, (_, kind, clip, aspect) in enumerate(clips):
            out = stylize_clip(stylizer, clip, mode, args.blend)
            warp.append(warping_error(out, kind, aspect))
            with torch.no_grad():
                terms = yardstick.loss(out.to(stylizer.device), clip.to(stylizer.device))
            style.append(float(terms["style"]))
            content_term.append(float(terms["content"]))
            if index == KINDS.index("still") and args.strip:
                strips.append(strip_row(out))
        fps, gather = speed(stylizer, mode, speed_size, args.speed_frames) if args.speed_frames else (math.nan, None)
        rows[mode] = {"warp": mean(warp), "style": mean(style), "content": mean(content_term), "fps": fps}
        if gather is not None:
            rows[mode]["gather"] = gather
        print(f"# {mode}: {rows[mode]}", flush=True)

    base = rows.get("none", rows[args.modes[0]])
    print(f"| mode | warping error (1/255) | vs none | style | content | frames/s at {args.speed_size} |")
    print("|---|---|---|---|---|---|")
    print(f"| input clip | {rows['input']['warp']:.2f} | | | | |")
    for mode in args.modes:
        row = rows[mode]
        first_pass = f" (+{row['gather']:.1f} s first pass)" if "gather" in row else ""
        print(
            f"| {mode}{' (default)' if mode == DEFAULT else ''} | {row['warp']:.2f} | {row['warp'] / base['warp']:.2f} "
            f"| {row['style']:.3f} | {row['content']:.3f} | {row['fps']:.2f}{first_pass} |"
        )
    if args.strip:
        name, kind, clip, _ = clips[KINDS.index("still")]
        grid = make_grid(torch.cat([strip_row(clip), *strips]), nrow=7, padding=2, pad_value=1.0)
        Path(args.strip).parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, args.strip)
        print(f"# strip {args.strip}: rows input, {', '.join(args.modes)}; 4 frames of {name} {kind}, 3 differences")
    default = DEFAULT if DEFAULT in rows else min(args.modes, key=lambda m: rows[m]["warp"])
    best = min(args.modes, key=lambda m: rows[m]["warp"])
    print(
        f"flicker_ratio={rows[default]['warp'] / base['warp']:.3f} "
        f"style_change={(rows[default]['style'] - base['style']) / base['style']:+.3f} default={default} "
        f"best={best} best_ratio={rows[best]['warp'] / base['warp']:.3f}"
    )


KINDS = ("pan", "zoom", "still")


def strip_row(frames: torch.Tensor) -> torch.Tensor:
    """Frames 0-3 and the differences between consecutive ones, ×4 (black: no change)."""
    return torch.cat([frames[:4], ((frames[1:4] - frames[:3]).abs() * 4).clamp(0, 1)])


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


if __name__ == "__main__":
    main()
