"""Video: stylize.py on real generated clips (frames, rate, size, audio, bad files, overwrite) and the
stabilization modes' contracts."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import Progress

from fast_style import Stylizer
from fast_style.errors import UserError
from fast_style.model_file import save_model
from fast_style.network import TransformerNet
from fast_style.stabilize import Blender, ClipStatistics, MovingAverage, estimate_motion, move, parse_mode
from fast_style.video import VideoSettings, stylize_video

from .conftest import SAMPLES
from .test_stylize import run_stylize

RATE = Fraction(24000, 1001)  # NTSC film rate: a non-integer rate must survive exactly
pytestmark = pytest.mark.usefixtures("one_thread")


def pan(width: int, height: int, frames: int) -> np.ndarray:
    """(frames, H, W, 3) uint8: a real photo panned 3 px right and 2 px down per frame."""
    photo = np.asarray(Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB"))
    return np.stack([photo[2 * i : 2 * i + height, 3 * i : 3 * i + width] for i in range(frames)])


def write_clip(path: Path, frames: np.ndarray, audio: bool = True) -> None:
    """An H.264 clip at RATE (with a stereo AAC tone as long as the video), index at the front (faststart) so
    that a truncated copy is still partly readable, as a phone's or a camera's recording would be."""
    height, width = frames.shape[1:3]
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        video = container.add_stream("libx264", rate=RATE)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        sound = container.add_stream("aac", rate=44100, layout="stereo") if audio else None  # all streams first
        for array in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            t = np.arange(int(44100 * len(frames) / RATE)) / 44100
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = tone[start : start + 1024]
                frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 44100, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))


def read_clip(path: Path) -> tuple[np.ndarray, dict]:
    """Every decoded frame (RGB uint8) and the facts that must survive stylization."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "rate": stream.average_rate,
            "size": (stream.width, stream.height),
            "pix_fmt": stream.codec_context.pix_fmt,
            "codec": stream.codec_context.name,
            "audio": [(a.codec_context.name, a.rate, a.channels) for a in container.streams.audio],
        }
        frames, stamps = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            stamps.append(frame.pts)
        info["pts"] = stamps
    return np.stack(frames), info


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def expected_stylization(stylizer: Stylizer, frames: np.ndarray) -> np.ndarray:
    batch = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return (stylizer.stylize_tensor(batch).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_frames_rate_size_and_audio_survive_and_frames_are_the_stylization(model_file, stylizer, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, pan(160, 120, 12))
    result = run_stylize(
        tmp_path,
        *(f"style={model_file}", f"input={clip}", "output=out"),
        *("video.stabilize=none", "video.batch_size=5"),
        "video.crf=0",  # lossless luma, so that frames compare closely with the network's own output
    )
    assert result.returncode == 0, result.stderr
    assert "1 video(s) (12 frames" in result.stdout
    source_frames, source = read_clip(clip)
    frames, written = read_clip(tmp_path / "out" / "clip_tiny.mp4")
    assert len(frames) == 12  # 5 + 5 + 2: the short last batch is kept
    assert written["rate"] == RATE and written["size"] == (160, 120) and written["pts"] == source["pts"]
    assert (written["codec"], written["pix_fmt"]) == ("h264", "yuv420p")
    assert written["audio"] == source["audio"] == [("aac", 44100, 2)]
    assert audio_packets(tmp_path / "out" / "clip_tiny.mp4") == audio_packets(clip)  # copied, not re-encoded
    # Each frame is the network's stylization of that input frame: compared in luma, as 4:2:0 video halves
    # the chroma resolution (and this random network's colours vary from pixel to pixel).
    expected = luma(expected_stylization(stylizer, source_frames))
    error = np.abs(luma(frames) - expected).mean(axis=(1, 2))
    assert error.max() < 2.5, error
    assert np.abs(luma(frames[1:]) - expected[:-1]).mean() > 4 * error.max()  # not the neighbouring frame's
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left


@pytest.mark.slow
def test_a_folder_of_photos_and_videos_with_two_styles(model_file, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_clip(inputs / "clip.mkv", pan(64, 48, 4), audio=False)
    write_clip(inputs / "clip2.avi", pan(64, 48, 3), audio=False)
    Image.fromarray(pan(64, 48, 1)[0]).save(inputs / "photo.jpg")
    second = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_model(TransformerNet(width=0.25), second, {"style": {"name": "other"}})
    result = run_stylize(tmp_path, f"style=[{model_file},{second}]", f"input={inputs}", "output=out")
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {f"{stem}_{style}{ext}" for stem, ext in [("clip", ".mkv"), ("clip2", ".mp4"), ("photo", ".jpg")]
                     for style in ("other", "tiny")}  # fmt: skip
    assert len(read_clip(tmp_path / "out" / "clip2_other.mp4")[0]) == 3
    assert "2 image(s) and 4 video(s) (14 frames" in result.stdout


@pytest.mark.slow
def test_odd_sized_clip_keeps_its_size(model_file, tmp_path):
    clip = tmp_path / "odd.mp4"
    write_clip(clip, pan(321, 241, 3))
    result = run_stylize(tmp_path, f"style={model_file}", f"input={clip}", "output=odd_out.mp4")
    assert result.returncode == 0, result.stderr
    frames, info = read_clip(tmp_path / "odd_out.mp4")
    assert frames.shape == (3, 241, 321, 3) and info["pix_fmt"] == "yuv444p"
    assert "odd side" in result.stdout
    scaled = run_stylize(tmp_path, f"style={model_file}", f"input={clip}", "output=small.mp4", "max_size=200")
    assert scaled.returncode == 0, scaled.stderr
    assert read_clip(tmp_path / "small.mp4")[1]["size"] == (200, 150)


@pytest.mark.slow
def test_truncated_non_video_and_empty_files(model_file, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, pan(160, 120, 12))
    bad = tmp_path / "bad"
    bad.mkdir()
    data = clip.read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])
    (bad / "notes.mp4").write_text("not a video, just text\n")
    (bad / "empty.mp4").write_bytes(b"")
    decodable = 0  # what FFmpeg itself gets out of the truncated file
    with av.open(str(bad / "truncated.mp4")) as container, pytest.raises(av.FFmpegError):
        for _ in container.decode(video=0):
            decodable += 1
    assert 0 < decodable < 12

    result = run_stylize(tmp_path, f"style={model_file}", f"input={bad}", "output=out")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert sum("notes.mp4 is not a readable video" in line for line in lines) == 1
    assert sum("empty.mp4 is not a readable video (the file is empty)" in line for line in lines) == 1
    assert any(f"truncated.mp4: {decodable} of 12 frames decoded" in line for line in lines)
    assert "2 unreadable input(s) skipped; 1 video(s) ended early" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["truncated_tiny.mp4"]
    assert len(read_clip(tmp_path / "out" / "truncated_tiny.mp4")[0]) == decodable


@pytest.mark.slow
def test_no_overwrite_without_overwrite_true(model_file, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, pan(64, 48, 3))
    (tmp_path / "out").mkdir()
    existing = tmp_path / "out" / "clip_tiny.mp4"
    existing.write_bytes(b"an earlier result")
    refused = run_stylize(tmp_path, f"style={model_file}", f"input={clip}", "output=out")
    assert refused.returncode == 2 and "1 output file(s) exist already" in refused.stderr
    assert existing.read_bytes() == b"an earlier result"
    replaced = run_stylize(tmp_path, f"style={model_file}", f"input={clip}", "output=out", "overwrite=true")
    assert replaced.returncode == 0, replaced.stderr
    assert len(read_clip(existing)[0]) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [("video.stabilize=magic", "video.stabilize must be one of"), ("video.crf=99", "video.crf must be an integer")],
)
def test_bad_video_settings_are_one_line(model_file, tmp_path, override, message):
    result = run_stylize(tmp_path, f"style={model_file}", f"input={SAMPLES}", override)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"error: {message}")


def test_an_interrupted_run_leaves_no_file(stylizer, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, pan(64, 48, 6))

    class Interrupting(Progress):  # the user presses Ctrl-C after the first batch
        def update(self, *args, **kwargs) -> None:
            if kwargs.get("advance"):
                raise KeyboardInterrupt
            super().update(*args, **kwargs)

    destination = tmp_path / "out" / "clip_tiny.mp4"
    with Interrupting(disable=True) as progress, pytest.raises(KeyboardInterrupt):
        stylize_video(clip, stylizer, destination, VideoSettings(batch_size=2), progress=progress)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_video_output_name_must_be_a_video_container(stylizer, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, pan(64, 48, 2), audio=False)
    with pytest.raises(UserError, match=r"a video output must end in \.mp4"):
        stylize_video(clip, stylizer, tmp_path / "clip.gif", VideoSettings())


# Stabilization.


def noisy_still(frames: int = 6, size: tuple[int, int] = (64, 48), sigma: float = 4 / 255) -> torch.Tensor:
    """A still shot with sensor-like noise: the same photo plus fresh Gaussian noise in every frame."""
    torch.manual_seed(0)
    still = torch.from_numpy(pan(*size, 1)).permute(0, 3, 1, 2).float() / 255
    return (still + sigma * torch.randn(frames, *still.shape[1:])).clamp(0, 1)


def test_modes_parse_and_bad_ones_are_refused():
    assert parse_mode("none") == ("none", None) and parse_mode("blend") == ("none", "blend")
    assert parse_mode("ema+motion") == ("ema", "motion") and parse_mode("clip") == ("clip", None)
    for bad in ("fast", "blend+ema", "none+blend"):
        with pytest.raises(UserError, match="video.stabilize must be one of"):
            parse_mode(bad)
    with pytest.raises(UserError, match="video.momentum"):
        MovingAverage(1.0)


def test_ema_with_zero_momentum_is_per_frame_and_carries_its_average_across_batches(stylizer):
    frames = noisy_still()
    alone = torch.cat([stylizer.stylize_tensor(f[None]) for f in frames])
    # (Up to float rounding: the shared-statistics path computes the moments itself.)
    assert torch.allclose(stylizer.stylize_tensor(frames, MovingAverage(0.0)), alone, atol=5e-4)
    # Batches of 4 then 2 with the state carried over give the same as one frame at a time.
    ema = MovingAverage(0.9)
    batched = torch.cat([stylizer.stylize_tensor(frames[:4], ema), stylizer.stylize_tensor(frames[4:], ema)])
    one_by_one = MovingAverage(0.9)
    assert torch.allclose(batched, torch.cat([stylizer.stylize_tensor(f[None], one_by_one) for f in frames]), atol=5e-4)
    assert torch.allclose(batched[0], alone[0], atol=5e-4)  # starts from the first frame's own statistics
    assert (batched[1:] - alone[1:]).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # then the average is in use


def test_clip_statistics_of_identical_frames_are_each_frames_own(stylizer):
    frame = noisy_still(1)
    clip = ClipStatistics()
    with pytest.raises(RuntimeError, match="before gather"):
        stylizer.stylize_tensor(frame, clip)
    clip.gather(lambda f: stylizer.stylize_tensor(f, clip), frame.expand(3, -1, -1, -1).clone())
    assert torch.allclose(stylizer.stylize_tensor(frame, clip), stylizer.stylize_tensor(frame), atol=5e-4)
    # Gathered over different frames, all frames then share one normalisation: the output differs.
    clip.gather(lambda f: stylizer.stylize_tensor(f, clip), noisy_still(4, sigma=0.2))
    assert (stylizer.stylize_tensor(frame, clip) - stylizer.stylize_tensor(frame)).abs().mean() > 1e-3


def test_shared_statistics_also_reach_tiled_frames(model_file):
    whole = Stylizer.load(model_file, device="cpu", precision="fp32", tile=None, backend="torch")
    tiled = Stylizer.load(model_file, device="cpu", precision="fp32", tile=64, backend="torch")
    frames = noisy_still(3, size=(160, 120))
    expected = whole.stylize_tensor(frames, MovingAverage(0.8))
    assert (expected - whole.stylize_tensor(frames)).abs().max() > 1e-3  # the statistics matter here
    assert torch.allclose(tiled.stylize_tensor(frames, MovingAverage(0.8)), expected, atol=5e-4)


def test_blend_mixes_in_the_previous_output_only_where_the_input_is_unchanged():
    blender = Blender(0.5)
    frames = torch.zeros(3, 3, 32, 32)
    frames[2, :, :, 16:] = 1.0  # the right half changes in the third frame
    stylized = torch.stack([torch.full((3, 32, 32), v) for v in (0.2, 0.6, 1.0)])
    out = blender(frames, stylized)
    assert torch.equal(out[0], stylized[0])
    assert torch.allclose(out[1], torch.full_like(out[1], 0.4))  # unchanged input: halfway to the previous output
    assert torch.allclose(out[2, :, :, :8], torch.full((3, 32, 8), 0.7))  # unchanged left: blended
    assert torch.allclose(out[2, :, :, 19:], stylized[2, :, :, 19:])  # changed right: the new stylization


def test_camera_motion_is_estimated_to_a_tenth_of_a_pixel_and_compensated():
    """A real photo under a known affine camera motion (pan + zoom + a little rotation)."""
    photo = torch.from_numpy(np.array(Image.open(sorted(SAMPLES.glob("*.jpg"))[1]).convert("RGB")))
    photo = photo.permute(2, 0, 1)[None].float() / 255
    angle = 0.01
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    true = torch.tensor([[1.02 * cos, -sin, 0.03], [sin, 1.02 * cos, -0.02]])
    view = torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 1.0]])
    previous = move(photo, view[:2])[0]  # frames see the middle of the photo, so no border enters
    current = move(photo, (view @ torch.cat([true, torch.tensor([[0.0, 0.0, 1.0]])]))[:2])[0]
    previous, current = (
        F.interpolate(previous, (96, 128), antialias=True, mode="bilinear"),
        F.interpolate(current, (96, 128), antialias=True, mode="bilinear"),
    )
    theta = estimate_motion(current, previous)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]).T
    pixels = ((theta - true) @ corners).abs() * torch.tensor([[64.0], [48.0]])  # normalised → pixels
    assert pixels.max() < 0.1
    assert torch.allclose(estimate_motion(current, current), torch.eye(2, 3), atol=1e-4)
    # Moved by the estimate, the previous frame matches the current one far better than unmoved.
    moved, inside = move(previous, theta)
    mask = inside.bool().expand_as(moved)
    assert (moved - current).abs()[mask].mean() < 0.2 * (previous - current).abs()[mask].mean()


def test_motion_blend_follows_the_camera():
    """A pan: plain blend would smear the previous output; motion blend moves it along first."""
    torch.manual_seed(0)
    photo = torch.from_numpy(pan(64, 48, 4)).permute(0, 3, 1, 2).float() / 255
    stylized = 1 - photo  # any stylization that moves with the picture
    out = Blender(0.5, motion=True)(photo, stylized)
    plain = Blender(0.5)(photo, stylized)
    inner = (..., slice(8, -8), slice(8, -8))  # away from the borders that the pan reveals
    assert (out - stylized)[inner].abs().mean() < 0.01
    assert (plain - stylized)[inner].abs().mean() > 3 * (out - stylized)[inner].abs().mean()


@pytest.mark.parametrize("mode", ["clip+motion", "ema+blend"])
def test_stabilized_modes_run_end_to_end(stylizer, tmp_path, mode):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, pan(64, 48, 5), audio=False)
    plain = stylize_video(clip, stylizer, tmp_path / "none.mp4", VideoSettings(stabilize="none", crf=0))
    result = stylize_video(clip, stylizer, tmp_path / "out.mp4", VideoSettings(stabilize=mode, crf=0, batch_size=2))
    assert (plain.frames, result.frames, result.expected, result.error) == (5, 5, 5, None)
    stabilized, reference = read_clip(tmp_path / "out.mp4")[0], read_clip(tmp_path / "none.mp4")[0]
    assert np.abs(luma(stabilized[1:]) - luma(reference[1:])).mean() > 1  # the mode changed the frames
