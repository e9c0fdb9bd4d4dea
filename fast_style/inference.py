"""Stylizing photos with a trained per-style model: one forward pass per image.

from fast_style import Stylizer
stylized = Stylizer.load("starry_night")(Image.open("photo.jpg"))
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fast_style.config import PROJECT_ROOT, cpu_has_fast_bf16
from fast_style.errors import UserError
from fast_style.export import atomic_path, build_network, check_writable, load_model
from fast_style.images import IMAGE_EXTENSIONS, SRGB_ICC, VIDEO_EXTENSIONS, read_image
from fast_style.network import TransformerNet
from fast_style.options import DEVICE, Rule, boolean, choice, integer, number, text
from fast_style.stabilize import norm_statistics
from fast_style.tiling import NormStats, stylize_tiled

if TYPE_CHECKING:
    from fast_style.video import VideoSettings

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# stylize.py's keys and what their values must be (both methods; optimize.* are checked by fast_style.optimize).
STYLIZE_RULES: dict[str, Rule] = {
    "input": text(),
    "output": text(),
    "device": DEVICE,
    "precision": choice("auto", *PRECISIONS),
    "max_size": integer(1, null=True),
    "preserve_color": boolean,
    "strength": number(0, 1),
    "overwrite": boolean,
    "compile": boolean,
    "fiftyone.dataset": text(null=True),
}
# ITU-R BT.601 full-range RGB → YCbCr (the JPEG convention), on [0, 1] values.
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device={device} but no CUDA GPU is visible; use device=auto or device=cpu")
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """``auto``: the fastest precision that is safe on the device (bf16 only where it is native)."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise UserError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
        return PRECISIONS[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def find_model(style: str | Path) -> Path:
    """A model path as given, or a style name looked up as ``checkpoints/<name>.safetensors``
    in the current folder, then in the fast-style checkout."""
    text = str(style)
    if text.endswith((".safetensors", ".ckpt")) or "/" in text:
        return Path(text).expanduser()
    candidates = [Path("checkpoints") / f"{text}.safetensors", PROJECT_ROOT / "checkpoints" / f"{text}.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"no model for style {text!r} ({candidates[0]} does not exist); train one with "
        f"python train.py style={text} data.root=PHOTOS, or pass style=path/to/model.safetensors"
    )


def load_lightning_checkpoint(path: Path, what: str = "checkpoint") -> tuple[TransformerNet, dict[str, Any]]:
    """The transformer from a training checkpoint, read with ``weights_only=True`` (no arbitrary unpickling);
    one line naming ``what`` (``ckpt_path``, ``style``) for a missing, empty or foreign file."""
    if not path.is_file():
        raise UserError(f"{what}={path} does not exist; give a .ckpt from a run's checkpoints/ folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds on a file it cannot read (empty, truncated, a pickle)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a loadable Lightning checkpoint of plain tensors ({first_line})") from e
    if not isinstance(checkpoint, dict) or "fast_style_model" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a fast-style training checkpoint (no 'fast_style_model' entry)")
    config = checkpoint["fast_style_model"]
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    return build_network(config, state, path), {"model": config, "steps": checkpoint.get("global_step")}


def load_network(style: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """The network and metadata of a style name, a ``.safetensors`` model file or a Lightning ``.ckpt``;
    ``metadata["path"]`` says which file it came from."""
    path = find_model(style)
    if path.suffix == ".ckpt":
        net, metadata = load_lightning_checkpoint(path, "style")
        metadata["style"] = {"name": path.stem}
    else:
        net, metadata = load_model(path)
    metadata["path"] = str(path)
    return net, metadata


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB(A) PIL image → (1, 3, H, W) float in [0, 1] (alpha dropped)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].float().clamp(0, 1).mul_(255).add_(0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def preserve_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Keep the content's colours: the stylized luminance (Y) with the content's chroma (Cb, Cr)."""
    matrix = RGB_TO_YCBCR.to(stylized)
    y = torch.einsum("ij,njhw->nihw", matrix[:1], stylized)
    cbcr = torch.einsum("ij,njhw->nihw", matrix[1:], content)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(matrix), torch.cat([y, cbcr], 1)).clamp(0, 1)


def finish(content: torch.Tensor, stylized: torch.Tensor, strength: float, keep_color: bool) -> torch.Tensor:
    """The ``keep_color`` and ``strength`` controls applied to a batch of stylizations of ``content``."""
    if keep_color:
        stylized = preserve_color(stylized, content)
    return torch.lerp(content, stylized, strength) if strength < 1 else stylized


def memory_budget(device: torch.device) -> int:
    """Bytes the forward pass may use: half the free GPU memory, or on a CPU half the available memory
    but at most 1 GiB, so that stylizing a 4K photo stays within ~2 GiB in all."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return min(psutil.virtual_memory().available // 2, 1 << 30)


def pick_tile(tile: int | str | None, height: int, width: int, bytes_per_pixel: float, budget: int) -> int | None:
    """The tile side for an image, or None to run it whole. ``auto`` tiles only what does not fit ``budget``."""
    if tile in (None, 0, "none", False):
        return None
    if tile == "auto":
        if height * width * bytes_per_pixel <= budget:
            return None
        # Tiled, the quarter-resolution features stay whole (~1/8 of the untiled need); tiles get the rest.
        rest = max(budget - height * width * bytes_per_pixel / 8, budget / 4)
        return max(256, int((rest / bytes_per_pixel) ** 0.5) // 64 * 64)
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 64:
        raise UserError(f"tile must be auto, null, or a size in pixels >= 64, got {tile!r}")
    return tile if max(height, width) > tile else None


class Stylizer:
    """A loaded per-style model on a device, ready to stylize images of any size."""

    # Peak activation memory of an untiled fp32 forward pass per pixel and unit of model width (measured
    # with benchmarks/stylize.py: 500–650 bytes per pixel for the standard model).
    BYTES_PER_PIXEL = 600

    def __init__(
        self,
        net: TransformerNet,
        metadata: dict[str, Any],
        device: str = "auto",
        precision: str = "auto",
        tile: int | str | None = "auto",
        compile: bool = False,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_precision(self.device, precision)
        self.tile = tile
        pick_tile(tile, 0, 0, 0, 0)  # reject a bad value now, not at the first image
        # channels_last suits the bf16/fp16 kernels (oneDNN, tensor cores); for fp32 on a CPU it measured
        # slower (1024², AVX2-only EPYC: 6.9 s vs 5.6 s per image), so it is used only with reduced precision.
        self.memory_format = torch.contiguous_format
        if self.dtype != torch.float32 or self.device.type == "cuda":
            self.memory_format = torch.channels_last
        self.net = net.eval().to(self.device, memory_format=self.memory_format)
        # dynamic=True: one compiled graph for every image size (photos in a folder differ in size).
        self.forward = torch.compile(self.net, dynamic=True) if compile else self.net
        self.metadata = metadata
        style = metadata.get("style")
        self.name = safe_name(style.get("name", "style") if isinstance(style, dict) else "style")

    @classmethod
    def load(
        cls,
        style: str | Path,
        device: str = "auto",
        precision: str = "auto",
        tile: int | str | None = "auto",
        compile: bool = False,
    ) -> Stylizer:
        """From a style name (``checkpoints/<name>.safetensors``), a ``.safetensors`` model file,
        or a Lightning ``.ckpt`` training checkpoint."""
        net, metadata = load_network(style)
        return cls(net, metadata, device, precision, tile, compile)

    @torch.inference_mode()
    def stylize_tensor(self, images: torch.Tensor, norm_stats: NormStats | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] → stylized (N, 3, H, W) in [0, 1], float32, on the input's device.

        Images too large for memory (see ``tile``) go through the network in tiles, with the same result.
        ``norm_stats`` replaces each instance norm's per-image statistics (video stabilization; runs eagerly)."""
        x = images.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        height, width = x.shape[-2:]
        per_pixel = self.BYTES_PER_PIXEL * self.net.width * x.shape[0] * (1 if self.dtype == torch.float32 else 0.5)
        tile = pick_tile(self.tile, height, width, per_pixel, memory_budget(self.device) if self.tile == "auto" else 0)
        with autocast:
            if tile is None and norm_stats is not None:
                with norm_statistics(self.net, norm_stats):
                    out = self.net(x)
            elif tile is None:
                out = self.forward(x)
            else:
                tiled = [stylize_tiled(self.net, image[None], tile, norm_stats) for image in x]
                out = tiled[0] if len(tiled) == 1 else torch.cat(tiled)
        return out.float().to(images.device)

    def __call__(
        self, image: Image.Image, strength: float = 1.0, keep_color: bool = False, max_size: int | None = None
    ) -> Image.Image:
        """Stylize one PIL image; the result has the same size (after ``max_size``) and alpha channel.

        ``strength`` blends with the original (0 = the photo, 1 = fully stylized); ``keep_color``
        keeps the photo's colours and takes only the luminance of the stylization.
        """
        if not 0 <= strength <= 1:
            raise UserError(f"strength must be between 0 and 1, got {strength}")
        if max_size is not None and max(image.size) > max_size:
            image = image.copy()
            image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
        content = to_tensor(image)
        result = to_image(finish(content, self.stylize_tensor(content), strength, keep_color))
        if image.mode in ("RGBA", "LA"):
            result.putalpha(image.getchannel("A"))
        return result


def find_inputs(spec: str) -> list[Path]:
    """A file, a folder (its images and videos, recursively), or a glob pattern."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        wanted = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
    else:
        anchor = Path(path.anchor) if path.is_absolute() else Path()
        found = sorted(p for p in anchor.glob(str(path.relative_to(anchor))) if p.is_file())
    if not found:
        raise UserError(
            f"input={spec} matches no image or video file; give a file, a folder of images, or a glob like "
            "'photos/*.jpg'"
        )
    return found


def output_suffix(source: Path) -> str:
    """An output's file suffix: the input's for images; for a video that of a container that holds H.264 (its own
    for .mp4/.mov/.mkv, else .mp4)."""
    suffix = source.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        from fast_style.video import video_suffix  # here: fast_style.video imports this module

        return video_suffix(source)
    return suffix


def safe_name(name: object) -> str:
    """``name`` as one piece of a file name: letters, digits, ``_ - .`` only, no leading dot, never a path.

    Style names come from model metadata, which anyone can write: ``../../x`` must not leave the output folder."""
    cleaned = re.sub(r"[^\w.-]+", "_", str(name)).strip("._")
    return cleaned or "style"


def unique_names(names: list[str]) -> list[str]:
    """The second and later uses of a name get ``_2``, ``_3``, … (two checkpoints of one style in one call)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def names_a_file(output: str, single: bool) -> bool:
    """Whether ``output`` is one output file: one image and one style, an image suffix Pillow can write, not an
    existing folder and no trailing slash (``out/run_v1.2/`` and ``out/run_v1.2`` are folders)."""
    path = Path(output).expanduser()
    return (
        single
        and not output.endswith(("/", os.sep))
        and (path.suffix.lower() in Image.registered_extensions() or path.suffix.lower() in VIDEO_EXTENSIONS)
        and not path.is_dir()
    )


def plan_outputs(sources: list[Path], names: list[str], output: str, overwrite: bool) -> dict[tuple[Path, str], Path]:
    """Where each (source, style name) goes, checked as a whole before any work, so that nothing is lost.

    A folder output keeps the inputs' folder structure below it (``2023/IMG_1.jpg`` and ``2024/IMG_1.jpg`` stay two
    files), as ``<stem>_<style><ext>``. Names that would still collide, also on a case-insensitive file system
    (``a.JPG`` and ``a.jpg``), are numbered (``a_<style>.jpg``, ``a_2_<style>.jpg``) and said. An input, an existing
    output (without ``overwrite``) or a folder in an output's place is an error, as is an output location that cannot
    be written (probed here, before the first image).
    """
    out = Path(output).expanduser()
    if names_a_file(output, len(sources) == 1 and len(names) == 1):
        plan = {(sources[0], names[0]): out}
    else:
        base = Path(os.path.commonpath([src.parent.absolute() for src in sources]))
        stems, seen = {}, Counter[str]()
        for src in sources:  # sorted: the first of a.JPG / a.jpg keeps its stem, the next is a_2
            key = str(src.parent.absolute() / f"{src.stem}{src.suffix}").lower()
            seen[key] += 1
            stems[src] = src.stem if seen[key] == 1 else f"{src.stem}_{seen[key]}"
            if seen[key] > 1:
                print(f"note: {src} is written as {stems[src]}_<style>: another input has the same name")
        plan = {
            (src, name): out / src.parent.absolute().relative_to(base) / f"{stems[src]}_{name}{output_suffix(src)}"
            for src in sources
            for name in names
        }
        taken = Counter(str(dst).lower() for dst in plan.values())
        if clash := next((dst for dst in plan.values() if taken[str(dst).lower()] > 1), None):
            raise UserError(f"two outputs would be written to {clash}; rename one of their inputs")
    inputs = {src.resolve() for src in sources}
    if clash := next((dst for dst in plan.values() if dst.resolve() in inputs), None):
        raise UserError(f"output {clash} would overwrite an input image; choose another output=")
    if folder := next((dst for dst in plan.values() if dst.is_dir()), None):
        raise UserError(f"output {folder} is an existing folder; choose another output=")
    if not overwrite and (existing := [dst for dst in plan.values() if dst.exists()]):
        raise UserError(
            f"{len(existing)} output file(s) exist already, e.g. {existing[0]}; pass overwrite=true to replace"
        )
    for folder in sorted({dst.parent for dst in plan.values()}):
        check_writable(folder, "output")
    return plan


def save_image(image: Image.Image, path: Path) -> None:
    """Save atomically in the format of ``path``'s suffix (JPEG quality 95; alpha dropped where unsupported), tagged
    as sRGB."""
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    options: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["icc_profile"] = SRGB_ICC  # the pixels are sRGB (inputs with other profiles were converted)
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **options)


def stylize_files(
    styles: list[str],
    input: str,
    output: str,
    device: str = "auto",
    precision: str = "auto",
    max_size: int | None = None,
    preserve_color: bool = False,
    strength: float = 1.0,
    overwrite: bool = False,
    fiftyone_dataset: str | None = None,
    tile: int | str | None = "auto",
    compile: bool = False,
    video: VideoSettings | None = None,
) -> int:
    """Stylize every input image and video with every style; returns the number of inputs that failed
    (unreadable, or videos that ended early and were written in part).

    Nothing is overwritten without ``overwrite``, and an input file never is. A bad file is reported
    and skipped, and the rest go on. With ``fiftyone_dataset``, the photos and their stylizations are
    recorded in that FiftyOne dataset, to compare in the FiftyOne App (videos are not recorded).
    """
    if not 0 <= strength <= 1:
        raise UserError(f"strength must be between 0 and 1, got {strength}")
    from fast_style.video import VideoSettings, stylize_video  # here: fast_style.video imports this module

    video = video or VideoSettings()
    sources = find_inputs(input)
    stylizers = [Stylizer.load(style, device, precision, tile, compile) for style in styles]
    names = unique_names([s.name for s in stylizers])  # two models of one style: wave, wave_2
    destinations = plan_outputs(sources, names, output, overwrite)
    plan = [(src, s, destinations[src, name]) for src in sources for s, name in zip(stylizers, names)]
    out = Path(output).expanduser()

    failed: dict[Path, str] = {}
    took: dict[Path, float] = {}  # output file → seconds to read, stylize and write it (images)
    videos: dict[Path, tuple[int, float]] = {}  # output file → (frames, seconds)
    partial: list[Path] = []  # outputs of videos that ended early
    notes: set[str] = set()
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, TextColumn("{task.fields[rate]}"), transient=True) as progress:
        task = progress.add_task("stylizing", total=len(plan), rate="")
        for src, stylizer, dst in plan:
            try:
                if src not in failed and src.suffix.lower() in VIDEO_EXTENSIONS:
                    result = stylize_video(src, stylizer, dst, video, max_size, preserve_color, strength, progress)
                    videos[dst] = (result.frames, result.seconds)
                    for note in set(result.notes) - notes:
                        progress.console.print(f"note: {src}: {note}", soft_wrap=True)
                    notes.update(result.notes)
                    if result.error:
                        partial.append(dst)
                        progress.console.print(
                            f"ended early: {src}: {result.frames} of {result.expected} frames decoded "
                            f"({result.error}); {dst} holds those {result.frames} frames",
                            soft_wrap=True,
                        )
                elif src not in failed:
                    began = time.perf_counter()
                    save_image(stylizer(read_image(src), strength, preserve_color, max_size), dst)
                    took[dst] = time.perf_counter() - began
            except UserError as e:
                failed[src] = str(e)
                progress.console.print(f"skipped: {e}", soft_wrap=True)
            progress.advance(task)
            done = progress.tasks[0].completed
            progress.update(task, rate=f"{done / (time.perf_counter() - start):.2f} img/s")
    seconds = time.perf_counter() - start
    done = [f"{len(took)} image(s)"] if took or not videos else []
    if videos:
        frames, video_seconds = (sum(v) for v in zip(*videos.values()))
        done.append(f"{len(videos)} video(s) ({frames} frames, {frames / video_seconds:.2f} frames/s)")
    print(
        f"stylized {' and '.join(done)} with {', '.join(s.name for s in stylizers)} in {seconds:.1f} s"
        + (f" ({len(took) / seconds:.2f} img/s)" if took and not videos else "")
        + f" → {out}"
        + (f"; {len(failed)} unreadable input(s) skipped" if failed else "")
        + (f"; {len(partial)} video(s) ended early and were written in part (above)" if partial else "")
    )
    if fiftyone_dataset:
        from fast_style.fiftyone_io import record_stylizations  # here: fiftyone takes seconds to import

        record_stylizations(fiftyone_dataset, [(src, s, dst, took[dst]) for src, s, dst in plan if dst in took])
    return len(failed) + len(partial)
