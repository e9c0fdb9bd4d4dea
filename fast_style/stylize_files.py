"""What ``python stylize.py`` runs (``method=feedforward``): every input photo and video found (a file, a folder or a
glob), every output planned and checked before the first image, each stylized with each model, and the photos
optionally recorded in FiftyOne. The input and output planning is shared with ``method=optimize``.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fast_style.devices import PRECISIONS
from fast_style.errors import UserError
from fast_style.fiftyone_results import record_stylizations
from fast_style.files import check_writable
from fast_style.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image, save_image
from fast_style.inference import BACKENDS, Stylizer
from fast_style.options import DEVICE, Rule, boolean, choice, integer, invalid, number, text
from fast_style.video import VideoSettings, stylize_video, video_suffix


def batch_size_value(key: str, value: Any) -> int | str:
    """``auto`` or a positive integer."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise invalid(key, value, "auto or a positive integer")


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
    "backend": choice(*BACKENDS),
    "batch_size": batch_size_value,
    "fiftyone.dataset": text(null=True),
}


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
    return video_suffix(source) if suffix in VIDEO_EXTENSIONS else suffix


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


def resolve_batch_size(batch_size: int | str, stylizers: list[Stylizer]) -> int:
    """``auto``: 8 photos a forward pass when a model runs on a GPU (one 512² photo leaves most of it idle), else 1:
    on a CPU a batch is no faster and needs that many times the memory."""
    if batch_size_value("batch_size", batch_size) == "auto":
        return 8 if any(s.device.type == "cuda" for s in stylizers) else 1
    return int(batch_size)


def read_ahead(paths: list[Path], depth: int) -> Iterator[tuple[Path, Image.Image | UserError]]:
    """Each image as :func:`read_image` reads it, or the UserError it raised, decoded in a background thread up to
    ``depth`` files ahead of the caller."""
    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader:
        pending: deque[tuple[Path, Future[Image.Image]]] = deque()
        for path in [*paths, None]:
            if path is not None:
                pending.append((path, reader.submit(read_image, path)))
            while pending and (len(pending) > depth or path is None):
                src, future = pending.popleft()
                try:
                    yield src, future.result()
                except UserError as e:
                    yield src, e


def timed_save(image: Image.Image, path: Path) -> float:
    """Save ``image`` to ``path`` (atomically); returns the seconds it took."""
    began = time.perf_counter()
    save_image(image, path)
    return time.perf_counter() - began


def stylize_files(
    styles: list[str],
    inputs: str,
    output: str,
    device: str = "auto",
    precision: str = "auto",
    max_size: int | None = None,
    preserve_color: bool = False,
    strength: float = 1.0,
    overwrite: bool = False,
    fiftyone_dataset: str | None = None,
    tile: int | str | None = "auto",
    torch_compile: bool = False,
    video: VideoSettings | None = None,
    backend: str = "auto",
    batch_size: int | str = "auto",
) -> int:
    """Stylize every input image and video with every style; returns the number of inputs that failed
    (unreadable, or videos that ended early and were written in part).

    Nothing is overwritten without ``overwrite``, and an input file never is. A bad file is reported
    and skipped, and the rest go on. With ``fiftyone_dataset``, the photos and their stylizations are
    recorded in that FiftyOne dataset, to compare in the FiftyOne App (videos are not recorded).
    ``batch_size`` photos go through the network together where they have one size (``auto``: 8 on a GPU, 1
    elsewhere).
    """
    if not 0 <= strength <= 1:
        raise UserError(f"strength must be between 0 and 1, got {strength}")
    batch_size_value("batch_size", batch_size)  # a bad value is an error before any model is loaded
    video = video or VideoSettings()
    sources = find_inputs(inputs)
    stylizers = [Stylizer.load(style, device, precision, tile, torch_compile, backend) for style in styles]
    names = unique_names([s.name for s in stylizers])  # two models of one style: wave, wave_2
    destinations = plan_outputs(sources, names, output, overwrite)
    plan = [(src, s, destinations[src, name]) for src in sources for s, name in zip(stylizers, names)]
    out = Path(output).expanduser()

    photos = [src for src in sources if src.suffix.lower() not in VIDEO_EXTENSIONS]
    batch = resolve_batch_size(batch_size, stylizers)
    failed: dict[Path, str] = {}
    took: dict[Path, float] = {}  # output file → seconds to stylize (its share of the batch) and write it
    videos: dict[Path, tuple[int, float]] = {}  # output file → (frames, seconds)
    partial: list[Path] = []  # outputs of videos that ended early
    notes: set[str] = set()
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, TextColumn("{task.fields[rate]}"), transient=True) as progress:
        task = progress.add_task("stylizing", total=len(plan), rate="")

        def advance(count: int) -> None:
            progress.advance(task, count)
            done = progress.tasks[0].completed
            progress.update(task, rate=f"{done / (time.perf_counter() - start):.2f} img/s")

        def skip(src: Path, error: UserError) -> None:
            failed[src] = str(error)
            progress.console.print(f"skipped: {error}", soft_wrap=True)

        # Photos: read ahead in one thread and written in another, so that decoding and encoding overlap the
        # network; ``batch`` of them at a time, those of equal size in one forward pass.
        with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
            saves: deque[tuple[Path, Path, float, Future[float]]] = deque()

            def collect(keep: int) -> None:
                """Wait for all but the newest ``keep`` writes, so that stylized images waiting for a slow disk
                (the network on a GPU outruns JPEG encoding) stay bounded in memory."""
                while len(saves) > keep:
                    src, dst, share, save = saves.popleft()
                    try:
                        took[dst] = share + save.result()
                    except UserError as e:
                        skip(src, e)

            chunk: list[tuple[Path, Image.Image]] = []
            for i, (src, image) in enumerate(read_ahead(photos, batch)):
                if isinstance(image, UserError):
                    skip(src, image)
                    advance(len(stylizers))
                else:
                    chunk.append((src, image))
                if chunk and (len(chunk) == batch or i == len(photos) - 1):
                    for stylizer, name in zip(stylizers, names):
                        began = time.perf_counter()
                        outputs = stylizer.stylize_images([im for _, im in chunk], strength, preserve_color, max_size)
                        share = (time.perf_counter() - began) / len(chunk)
                        for (photo, _), stylized in zip(chunk, outputs):
                            dst = destinations[photo, name]
                            saves.append((photo, dst, share, writer.submit(timed_save, stylized, dst)))
                        advance(len(chunk))
                    chunk = []
                    collect(2 * batch * len(stylizers))
            collect(0)
        for src, stylizer, dst in plan:
            if src.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            if src in failed:  # unreadable with an earlier style
                advance(1)
                continue
            try:
                result = stylize_video(src, stylizer, dst, video, max_size, preserve_color, strength, progress)
            except UserError as e:
                skip(src, e)
                advance(1)
                continue
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
            advance(1)
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
        record_stylizations(fiftyone_dataset, [(src, s, dst, took[dst]) for src, s, dst in plan if dst in took])
    return len(failed) + len(partial)
