"""Stylizing video files: decode, stylize in batches, encode H.264, copy the audio, all in one pass.

PyAV is the video library: its wheels ship FFmpeg's libraries (libx264 included), so
``pip install`` is all a user needs; TorchCodec and OpenCV's writer rely on a system FFmpeg (and
OpenCV cannot copy audio). Decoding runs in one thread and encoding/muxing in another, so both overlap
the network, which runs in the calling thread (PyAV releases the GIL while FFmpeg works).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from rich.progress import Progress

from fast_style.errors import UserError
from fast_style.files import atomic_path
from fast_style.images import VIDEO_EXTENSIONS, to_arrays, to_batch
from fast_style.inference import Stylizer, finish
from fast_style.stabilize import Blender, ClipStatistics, MovingAverage, parse_mode
from fast_style.tiling import NormStats

# Output containers that hold H.264 and nearly any audio; other inputs are written as .mp4.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Audio codecs the MP4 muxer accepts as they are; any other audio is re-encoded to AAC for .mp4/.m4v outputs.
MP4_AUDIO = {"aac", "mp3", "mp2", "alac", "ac3", "eac3", "opus", "flac"}
_END = object()  # queue sentinel


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def video_suffix(source: Path) -> str:
    """The output file's suffix: the input's when that container takes H.264, else ``.mp4``."""
    suffix = source.suffix.lower()
    return suffix if suffix in CONTAINERS else ".mp4"


@dataclass
class VideoSettings:
    """The ``video.*`` keys of stylize.py (see configs/stylize/stylize.yaml)."""

    crf: int = 18
    preset: str = "medium"
    batch_size: int = 4
    stabilize: str = "motion"  # by measurement: benchmarks/video.py, README
    momentum: float = 0.9
    blend: float = 0.7
    clip_frames: int = 8

    def __post_init__(self) -> None:
        parse_mode(self.stabilize)
        if not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise UserError(f"video.crf must be an integer from 0 (lossless) to 51, got {self.crf!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"video.batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.clip_frames, int) or self.clip_frames < 1:
            raise UserError(f"video.clip_frames must be a positive integer, got {self.clip_frames!r}")
        MovingAverage(self.momentum), Blender(self.blend)  # range checks with one clear line each


@dataclass
class VideoResult:
    """What happened to one video: frames written, frames the container announced, and any early end."""

    frames: int
    expected: int
    seconds: float
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def open_video(path: Path) -> tuple[Any, Any]:
    """The opened container and its first video stream; one clear line for anything that is not a video."""
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is not a readable video (the file is empty)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable video ({e})") from e
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} has no video stream")
    return container, container.streams.video[0]


def output_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """The frame size after ``max_size`` (long side at most that, aspect ratio kept)."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def expected_frames(stream: Any, container: Any) -> int:
    """The frame count the container announces, or one estimated from its duration (0 if unknown)."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if container.duration and rate:
        return round(container.duration / av.time_base * rate)
    return 0


def decode_frames(
    container: Any, stream: Any, size: tuple[int, int], on_audio: Any = None, stop: threading.Event | None = None
) -> Any:
    """Yield (RGB uint8 (H, W, 3) array, pts) per frame; audio packets go to ``on_audio``. A decoding error
    ends the iteration by raising it (after the frames before it)."""
    width, height = size
    resize = {} if (width, height) == (stream.width, stream.height) else {"width": width, "height": height}
    audio = list(container.streams.audio) if on_audio else []
    for packet in container.demux(stream, *audio):
        if stop is not None and stop.is_set():
            return
        if packet.stream.type == "audio":
            if packet.dts is not None:
                on_audio(packet)
            continue
        for frame in packet.decode():
            yield frame.to_ndarray(format="rgb24", interpolation="AREA", **resize), frame.pts


class Stabilizer:
    """One video's stabilization state (``video.stabilize``), applied batch after batch in frame order."""

    def __init__(self, settings: VideoSettings) -> None:
        stats, blend = parse_mode(settings.stabilize)
        self.norm_stats: NormStats | None = None
        self.clip: ClipStatistics | None = None
        if stats == "ema":
            self.norm_stats = MovingAverage(settings.momentum)
        elif stats == "clip":
            self.norm_stats = self.clip = ClipStatistics()
        self.blender = Blender(settings.blend, motion=blend == "motion") if blend else None

    def prepare(self, stylizer: Stylizer, sample: torch.Tensor) -> None:
        """``clip`` mode's first pass: the statistics of ``sample`` frames (spread over the clip) stylized as one."""
        if self.clip is not None:
            clip = self.clip
            clip.gather(lambda frames: stylizer.stylize_tensor(frames, clip), sample)

    def __call__(self, stylizer: Stylizer, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frames in [0, 1], the next ones of the clip → their stylizations."""
        out = stylizer.stylize_tensor(frames, self.norm_stats)
        return self.blender(frames, out) if self.blender else out


def sample_frames(path: Path, size: tuple[int, int], count: int) -> torch.Tensor:
    """``count`` frames spread evenly over the clip (all of them if it has fewer), for ``clip`` statistics."""
    container, stream = open_video(path)
    total = expected_frames(stream, container)
    picks: list[np.ndarray] = []
    with container:
        try:
            if total <= count:
                picks = [array for array, _ in decode_frames(container, stream, size)]
            else:
                wanted = {math.floor((i + 0.5) * total / count) for i in range(count)}
                picks = [a for i, (a, _) in enumerate(decode_frames(container, stream, size)) if i in wanted]
        except av.FFmpegError:
            pass  # a damaged clip: the frames before the damage still count
    if not picks:
        raise UserError(f"{path} is not a readable video (no frame could be decoded)")
    return to_batch(np.stack(picks[:count]))


def add_audio(output: Any, source: Any, suffix: str) -> tuple[Any, bool]:
    """An output stream for ``source`` audio: copied as it is, or (what an MP4 cannot hold) AAC. Returns
    (stream, copied)."""
    if suffix in (".mp4", ".m4v") and source.codec_context.name not in MP4_AUDIO:
        stream = output.add_stream("aac", rate=source.codec_context.sample_rate or 48000)
        stream.layout = source.codec_context.layout
        return stream, False
    return output.add_stream_from_template(source), True


def stylize_video(
    source: Path,
    stylizer: Stylizer,
    destination: Path,
    settings: VideoSettings,
    max_size: int | None = None,
    preserve_color: bool = False,
    strength: float = 1.0,
    progress: Progress | None = None,
) -> VideoResult:
    """Stylize every frame of ``source`` into ``destination`` (written atomically): same frame rate, frame
    timestamps and size (after ``max_size``), H.264 at ``settings.crf``, audio streams copied.

    A clip that ends early (truncated, damaged) keeps the frames decoded before the damage; the result
    says so. A file with no decodable frame is a UserError and leaves nothing behind.
    """
    if destination.suffix.lower() not in CONTAINERS:
        raise UserError(f"output {destination}: a video output must end in {', '.join(CONTAINERS)}")
    container, stream = open_video(source)
    with container:
        stream.thread_type = "AUTO"
        width, height = output_size(stream.width, stream.height, max_size)
        expected = expected_frames(stream, container)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        stabilizer = Stabilizer(settings)
        notes = []
        if stabilizer.clip is not None:
            stabilizer.prepare(stylizer, sample_frames(source, (width, height), settings.clip_frames))
        # 4:2:0 chroma needs even sides; odd-sized frames keep their size in 4:4:4 instead.
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        if pix_fmt == "yuv444p":
            notes.append(
                f"{width}x{height} has an odd side, which 4:2:0 video cannot hold: written as yuv444p "
                "(H.264 High 4:4:4; some players, e.g. browsers and QuickTime, cannot play it)"
            )
        task = None
        if progress is not None:
            task = progress.add_task(f"{source.name} → {stylizer.name}", total=expected or None, rate="")
        start = time.perf_counter()
        with atomic_path(destination) as tmp:
            suffix = destination.suffix.lower()
            output = av.open(str(tmp), "w", format=CONTAINERS.get(suffix, "mp4"))
            try:
                video = output.add_stream("libx264", rate=rate)
                video.width, video.height, video.pix_fmt = width, height, pix_fmt
                video.time_base = stream.time_base or Fraction(1, rate)
                video.codec_context.time_base = video.time_base
                video.options = {"crf": str(settings.crf), "preset": settings.preset}
                audio_out = {}
                for audio in container.streams.audio:
                    audio_out[audio.index] = add_audio(output, audio, suffix)
                    if not audio_out[audio.index][1]:
                        notes.append(f"{audio.codec_context.name} audio cannot go into {suffix}: re-encoded as AAC")
                frames, error = _pipeline(
                    container, stream, stylizer, stabilizer, output, video, audio_out, (width, height), settings,
                    lambda batch: finish(batch[0], batch[1], strength, preserve_color), progress, task,
                )  # fmt: skip
            finally:
                output.close()
            if frames == 0:
                raise UserError(f"{source} is not a readable video ({error or 'no frame could be decoded'})")
        if progress is not None and task is not None:
            progress.remove_task(task)
    if error is None and expected and frames < expected and stream.frames:
        error = "the file ends early"
    return VideoResult(frames, expected, time.perf_counter() - start, error, notes)


def _pipeline(
    container: Any,
    stream: Any,
    stylizer: Stylizer,
    stabilizer: Stabilizer,
    output: Any,
    video: Any,
    audio_out: dict[int, tuple[Any, bool]],
    size: tuple[int, int],
    settings: VideoSettings,
    finishing: Any,
    progress: Progress | None,
    task: Any,
) -> tuple[int, str | None]:
    """Decoder thread → network (this thread) → encoder thread. Returns (frames written, decoding error)."""
    batches: queue.Queue = queue.Queue(maxsize=2)  # decoded batches waiting for the network
    to_mux: queue.Queue = queue.Queue()  # stylized batches and audio packets, for the writer thread
    stop = threading.Event()
    failure: dict[str, BaseException | str] = {}
    step = 1 / (stream.time_base * stream.average_rate) if stream.time_base and stream.average_rate else 1
    increment = max(1, round(step))
    previous = -increment  # the last timestamp sent to the encoder, which needs them strictly increasing

    def read() -> None:
        batch: list[tuple[np.ndarray, Any]] = []
        try:
            for item in decode_frames(container, stream, size, lambda p: to_mux.put(("audio", p)), stop):
                batch.append(item)
                if len(batch) == settings.batch_size:
                    batches.put(batch)
                    batch = []
        except av.FFmpegError as e:
            failure["decode"] = str(e)
        except BaseException as e:  # reported by the main thread
            failure["reader"] = e
        finally:
            if batch:
                batches.put(batch)
            batches.put(_END)

    def write() -> None:
        ended = False
        try:
            while (item := to_mux.get()) is not _END:
                kind, payload = item
                if kind == "audio":
                    out, copied = audio_out[payload.stream.index]
                    if copied:
                        payload.stream = out
                        output.mux(payload)
                    else:
                        for samples in payload.decode():
                            output.mux(out.encode(samples))
                    continue
                for array, pts in payload:
                    frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                    frame.pts, frame.time_base = pts, video.codec_context.time_base
                    output.mux(video.encode(frame))
            ended = True
            output.mux(video.encode(None))
            for out, copied in audio_out.values():
                if not copied:
                    output.mux(out.encode(None))
        except BaseException as e:
            failure["writer"] = e
            stop.set()
            while not ended and to_mux.get() is not _END:  # drain so that producers never block
                pass

    reader, writer = threading.Thread(target=read, daemon=True), threading.Thread(target=write, daemon=True)
    reader.start(), writer.start()
    frames, start = 0, time.perf_counter()
    try:
        while (batch := batches.get()) is not _END and not stop.is_set():
            arrays, stamps = zip(*batch)
            content = to_batch(np.stack(arrays), stylizer.device)
            styled = to_arrays(finishing((content, stabilizer(stylizer, content))))
            timestamps = []
            for pts in stamps:  # the source's timestamps; missing or out-of-order ones (AVI) continue at the rate
                previous = pts if pts is not None and pts > previous else previous + increment
                timestamps.append(previous)
            to_mux.put(("video", list(zip(styled, timestamps))))
            frames += len(batch)
            if progress is not None:
                rate = f"{frames / (time.perf_counter() - start):.2f} frames/s"
                progress.update(task, advance=len(batch), rate=rate)
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                batches.get(timeout=0.1)
        to_mux.put(_END)
        writer.join()
    if isinstance(failure.get("writer"), av.FFmpegError):
        raise UserError(f"could not encode the stylized video ({failure['writer']})") from failure["writer"]  # type: ignore[misc]
    for key in ("reader", "writer"):
        if isinstance(failure.get(key), BaseException):
            raise failure[key]  # type: ignore[misc]
    return frames, failure.get("decode")  # type: ignore[return-value]
