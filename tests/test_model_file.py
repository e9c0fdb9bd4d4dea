"""Per-style model files: round trip, metadata, atomic writes, clear errors for bad files."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from fast_style.errors import UserError
from fast_style.files import atomic_path
from fast_style.model_file import load_model, read_metadata, save_model
from fast_style.network import TransformerNet

from .conftest import ROOT, photo


def test_round_trip_gives_identical_outputs(tmp_path):
    net = TransformerNet(upsample="nearest", width=0.5).eval()
    path = tmp_path / "style.safetensors"
    save_model(net, path, {"style": {"name": "wave"}, "steps": 7})
    loaded, meta = load_model(path)
    x = photo(size=64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert meta["model"] == net.config() and meta["style"]["name"] == "wave" and meta["steps"] == 7


def test_float16_files_are_half_the_size_and_nearly_identical(tmp_path):
    net = TransformerNet().eval()
    save_model(net, tmp_path / "a.safetensors")
    save_model(net, tmp_path / "b.safetensors", dtype="float16")
    assert (tmp_path / "b.safetensors").stat().st_size < 0.55 * (tmp_path / "a.safetensors").stat().st_size
    half, _ = load_model(tmp_path / "b.safetensors")
    x = photo(size=64)
    with torch.no_grad():
        assert (net(x) - half(x)).abs().max() < 2 / 255


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_missing_corrupt_truncated_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not a readable"):
        load_model(tmp_path / "junk.safetensors")
    good = tmp_path / "good.safetensors"
    save_model(TransformerNet(width=0.25), good)
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable"):
        load_model(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"), metadata={"x": "1"})
    with pytest.raises(UserError, match="not a fast-style model"):
        read_metadata(tmp_path / "foreign.safetensors")


def test_weights_that_do_not_match_the_recorded_architecture_are_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(TransformerNet(width=0.5), path)
    # Rewrite the metadata to claim a full-width network.
    meta = read_metadata(path)
    meta["model"]["width"] = 1.0
    raw = {k: v if k == "format" else json.dumps(v) for k, v in meta.items()}
    save_file(load_file(str(path)), str(path), metadata=raw)
    with pytest.raises(UserError, match="does not match its recorded architecture"):
        load_model(path)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"format": "fast-style/1", "model": "{not json"}, "malformed metadata"),
        ({"format": "fast-style/1", "style": '{"name": "x"}'}, "does not record its architecture"),
        ({"format": "fast-style/1", "model": '"instance"'}, "does not record its architecture"),
    ],
)
def test_model_files_with_malformed_metadata_are_one_clear_line(tmp_path, metadata, message):
    from fast_style import Stylizer

    path = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in TransformerNet(width=0.25).state_dict().items()}, str(path), metadata)
    with pytest.raises(UserError, match=message):
        Stylizer.load(path)


def test_a_model_with_nan_weights_is_refused_not_turned_into_black_images(tmp_path):
    net = TransformerNet(width=0.25)
    with torch.no_grad():
        net.decoder[-1][1].weight[0, 0, 0, 0] = float("nan")  # a diverged training run
    save_model(net, tmp_path / "diverged.safetensors")
    with pytest.raises(UserError, match="has NaN or infinite weights .*training diverged"):
        load_model(tmp_path / "diverged.safetensors")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_written_atomically_get_the_mode_the_umask_gives(tmp_path, umask):
    import os
    import stat

    previous = os.umask(umask)
    try:
        save_model(TransformerNet(width=0.25), tmp_path / "m.safetensors")
        plain = tmp_path / "plain"
        plain.write_bytes(b"")  # what open() gives under this umask
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_stale_temporaries_of_killed_writes_are_removed_and_fresh_ones_kept(tmp_path):
    import os
    import time

    from fast_style.files import remove_stale_temporaries

    old, fresh = tmp_path / ".last.ckpt.ab12cd34.tmp", tmp_path / ".model.safetensors.zz99yy88.tmp"
    for path in (old, fresh, tmp_path / "notes.tmp", tmp_path / "last.ckpt"):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(tmp_path / "notes.tmp", (time.time() - 7200, time.time() - 7200))  # not one of ours
    assert remove_stale_temporaries(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, "notes.tmp", "last.ckpt"])


def test_model_files_record_paths_outside_the_checkout_by_name_only(tmp_path, monkeypatch):
    from fast_style.training import portable

    monkeypatch.chdir(tmp_path)
    recorded = portable(
        {"root": "../shared/photos", "val": "./photos", "exclude": [str(ROOT / "data" / "samples"), "~/painting.jpg"]}
    )
    assert recorded == {"root": "photos", "val": "photos", "exclude": ["data/samples", "painting.jpg"]}
    inside = os.path.relpath(ROOT / "data" / "styles" / "wave.jpg", tmp_path)  # '../..' up to the checkout, then in
    assert portable(inside) == "data/styles/wave.jpg"
    settings = {"model": "wave", "precision": "auto", "size": 256}  # not paths: kept as they are
    assert portable(settings) == settings
