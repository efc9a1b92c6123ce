"""Weights and checkpoints are data, never code: sha256 checks, finite tensors, bounded headers, no
pickle loaded anywhere (issue 23, bugs 6 and 7)."""
from __future__ import annotations

import builtins
import json
import pickle
import re
import resource
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rawrestore.cli import app
from rawrestore.train import fresh_bundle, load_init, load_optimizer, read_checkpoint, write_checkpoint
from rawrestore.weights import WeightsError, bundled_weights_path, load_weights, manifest, weights_source

SHIPPED = bundled_weights_path(manifest())


def shipped_copy(path: Path, change_config=None, change_tensors=None) -> Path:
    """The shipped weights rewritten, with their header config or tensors changed."""
    with safe_open(str(SHIPPED), "pt") as fh:
        header = dict(fh.metadata())
    tensors = load_file(str(SHIPPED))
    if change_config:
        header["config"] = json.dumps(change_config(json.loads(header["config"])))
    if change_tensors:
        change_tensors(tensors)
    save_file(tensors, str(path), metadata=header)
    return path


class SideEffect:
    """Unpickled, it writes ``marker``: what a crafted checkpoint could do with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def crafted_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"ema": SideEffect(marker), "config": None}))
    return path


def enhance(folder: Path, *args: str):
    from conftest import make_dng

    make_dng(folder / "photo.dng")
    return CliRunner().invoke(app, ["enhance", str(folder / "photo.dng"), "--out-dir", str(folder / "out"), *args])


def test_weights_that_weights_toml_does_not_list_load_with_a_warning(tmp_path):
    def flip(tensors):  # one bit of one weight: the lowest of its mantissa, still finite
        name = sorted(tensors)[0]
        flat = tensors[name].view(-1).view(torch.int32)
        flat[0] ^= 1

    flipped = shipped_copy(tmp_path / "flipped.safetensors", change_tensors=flip)
    assert weights_source(str(SHIPPED)).verified and not weights_source(str(flipped)).verified
    result = enhance(tmp_path, "--weights", str(flipped))
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip().splitlines()[0]
    assert re.fullmatch(rf"warning: {re.escape(str(flipped))}: not a weights file weights.toml lists "
                        r"\(sha256 [0-9a-f]{12}…\); loaded unverified", warning)
    assert (tmp_path / "out" / "photo.jpg").exists()


def test_non_finite_weights_are_refused_in_one_line(tmp_path):
    def poison(tensors):
        tensors["rvae.decoder.head.weight"][:] = float("nan")

    path = shipped_copy(tmp_path / "nan.safetensors", change_tensors=poison)
    with pytest.raises(WeightsError, match="tensor rvae.decoder.head.weight holds NaN or infinite values"):
        load_weights(str(path))
    result = enhance(tmp_path, "--weights", str(path))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[1:] == [  # after the warning that they are unverified
        f"error: {path}: tensor rvae.decoder.head.weight holds NaN or infinite values (damaged weights)"]
    assert not (tmp_path / "out" / "photo.jpg").exists()


@pytest.mark.parametrize("key, value", [("latent_channels", 10 ** 6), ("rvae_hidden", -1), ("rvae_hidden", True),
                                        ("denoiser_widths", [32, 64]), ("denoiser_hidden", [16, 32, 10 ** 9])])
def test_a_crafted_header_is_refused_before_anything_is_allocated(tmp_path, key, value):
    path = shipped_copy(tmp_path / "crafted.safetensors", change_config=lambda c: {**c, key: value})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match=rf"weights config {key} = .* is out of bounds"):
        load_weights(str(path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: no gigabytes


def test_weights_whose_tensors_do_not_fit_their_config_are_one_line(tmp_path):
    path = shipped_copy(tmp_path / "other.safetensors", change_config=lambda c: {**c, "rvae_hidden": 48})
    with pytest.raises(WeightsError, match="its tensors do not fit the networks its config describes"):
        load_weights(str(path))


def test_a_pickle_is_never_loaded_as_weights(tmp_path):
    marker = tmp_path / "ran"
    for name in ("model.pt", "model.safetensors"):
        path = crafted_pickle(tmp_path / name, marker)
        result = enhance(tmp_path, "--weights", str(path))
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
        expected = "PyTorch pickle" if name.endswith(".pt") else "not a rawrestore weights file"
        assert expected in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("case", ["init .pt", "init .safetensors", "resume checkpoint.pt"])
def test_train_never_unpickles_init_files_or_checkpoints(tmp_path, case):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    if case == "init .safetensors":  # through the loader itself: a pickle under another name
        with pytest.raises(WeightsError, match="not a rawrestore weights file"):
            load_init(str(crafted_pickle(tmp_path / "evil.safetensors", marker)))
        assert not marker.exists()
        return
    args = ["train", "--out", str(run), "--data", str(tmp_path / "no photos")]
    if case == "init .pt":
        args += ["--init", str(crafted_pickle(tmp_path / "evil.pt", marker))]
    else:
        crafted_pickle(run / "checkpoint.pt", marker)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert line.startswith("error: ") and "pickle" in line
    assert not marker.exists()


def test_a_checkpoint_brings_back_the_networks_and_the_optimiser_exactly(tmp_path):
    torch.manual_seed(0)
    bundle, ema = fresh_bundle(), fresh_bundle()
    opt = torch.optim.AdamW([{"params": list(bundle.parameters()), "lr_scale": 1.0}], lr=1e-3)
    for p in bundle.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    path = tmp_path / "checkpoint.safetensors"
    write_checkpoint(path, bundle, ema, opt, step=7, elapsed=12.5)
    config, parts, run = read_checkpoint(path)
    assert config == bundle.config() and run["step"] == 7 and run["elapsed"] == 12.5
    again = fresh_bundle(config)
    again.load_state_dict(parts["model"])
    opt_again = torch.optim.AdamW([{"params": list(again.parameters()), "lr_scale": 1.0}], lr=5.0)
    load_optimizer(opt_again, parts["opt"], run)
    before, after = opt.state_dict(), opt_again.state_dict()
    assert after["param_groups"][0]["lr"] == 1e-3 and after["param_groups"][0]["lr_scale"] == 1.0
    for index, state in before["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(after["state"][index][key], value)
    # --init from a checkpoint takes its EMA.
    initialised, _ = load_init(str(path))
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(initialised.state_dict()[key], value)


def test_no_code_in_the_package_unpickles():
    calls = re.compile(r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True")
    found = [f"{path.relative_to(REPO)}:{number}" for path in (REPO / "rawrestore").rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1) if calls.search(line)]
    assert found == []
