"""Training: the relative L1, the classical share's calibration to per-sample PSNR, pruning, widening,
interrupting and resuming."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rawrestore.models import RVAE, LatentDenoiser
from rawrestore.models.blocks import ResBlock
from rawrestore.conditioning import upsample_condition
from rawrestore.models.rvae import ClassicalShare, coarse_band
from rawrestore.pipeline import develop_latent
from rawrestore.schedulers import IRSDEScheduler
from rawrestore.train import (calibrate_share, fresh_bundle, joint_loss, latent_headroom, load_init, prune_inner,
                              read_checkpoint, relative_l1, share_psnr, train_step, training_state)
from rawrestore.weights import ModelBundle, load_bundle, save_bundle, with_current_bands


def _two_regimes(count: int = 32, size: int = 32) -> dict[str, torch.Tensor]:
    """Half the samples nearly clean (the classical render is 10x closer to the truth than the
    network's), half very noisy (the network 3x closer): no single share suits both."""
    gen = torch.Generator().manual_seed(0)
    target = 0.2 + 0.6 * torch.rand(count, 3, size, size, generator=gen)
    quiet = torch.arange(count) % 2 == 0
    classical_err = torch.where(quiet, 0.002, 0.15).view(-1, 1, 1, 1)
    network_err = torch.where(quiet, 0.02, 0.05).view(-1, 1, 1, 1)
    noise_std = torch.where(quiet, 1e-3, 0.1).view(-1, 1, 1, 1).expand(count, 1, size // 2, size // 2)
    return {
        "network": target + network_err * torch.randn(target.shape, generator=gen),
        "classical": target + classical_err * torch.randn(target.shape, generator=gen),
        "x": torch.full((count, 4, size // 2, size // 2), 0.4),
        "noise_std": noise_std.contiguous(),
        "target": target,
    }


def test_calibrated_share_beats_every_constant_share():
    cache = _two_regimes()
    everything = torch.arange(len(cache["target"]))

    class Constant(torch.nn.Module):
        def __init__(self, value: float):
            super().__init__()
            self.value = value

        def forward(self, network, classical, *_):
            return torch.lerp(network, classical, self.value)

    best_constant = max(float(share_psnr(Constant(v), cache, everything).mean()) for v in torch.linspace(0, 1, 11))
    share = calibrate_share(ClassicalShare(), cache, iters=200, batch=16)
    with torch.no_grad():
        fitted = share_psnr(share, cache, everything)
        weights = share.shares(cache["classical"] - cache["network"], cache["x"], cache["noise_std"])
    assert float(fitted.mean()) > best_constant + 1.0
    # Mostly the classical render where it is nearly clean, mostly the network where it is noisy.
    assert weights[0::2].mean() > 0.8 and weights[1::2].mean() < 0.2


def test_older_shares_load_as_the_blends_they_were_fitted_as():
    # Weights from before v8 have one share for the whole difference, from v8 to v13 one for its
    # fine band and one for the rest; loaded, the missing bands get the share of the band above,
    # which must reproduce the old blends exactly.
    cache = _two_regimes(count=4)
    torch.manual_seed(0)
    args = cache["network"], cache["classical"], cache["x"], cache["noise_std"]
    difference = cache["classical"] - cache["network"]

    def loaded(weight: torch.Tensor, bias: torch.Tensor) -> ClassicalShare:
        share = ClassicalShare()
        state = with_current_bands({"rvae.decoder.classical_share.logit.weight": weight,
                                    "rvae.decoder.classical_share.logit.bias": bias})
        share.load_state_dict({k.removeprefix("rvae.decoder.classical_share."): v for k, v in state.items()})
        return share

    with torch.no_grad():
        one_band = loaded(torch.randn(3, 3, 1, 1), torch.randn(3))
        fine, coarse, low = one_band.shares(difference, *args[2:]).chunk(3, dim=1)
        assert torch.equal(fine, coarse) and torch.equal(coarse, low)
        torch.testing.assert_close(one_band(*args), torch.lerp(cache["network"], cache["classical"], fine))

        two_bands = loaded(torch.randn(6, 3, 1, 1), torch.randn(6))
        fine, coarse, _ = two_bands.shares(difference, *args[2:]).chunk(3, dim=1)
        smooth = coarse_band(difference)
        two_band_blend = cache["network"] + fine * (difference - smooth) + coarse * smooth
        torch.testing.assert_close(two_bands(*args), two_band_blend)
        # A share of its own for the low band changes the output: the comparison above can fail.
        two_bands.logit.bias[6:] += 2
        assert (two_bands(*args) - two_band_blend).abs().mean() > 1e-3


def test_relative_l1_weighs_each_sample_by_its_own_error():
    target = torch.zeros(2, 3, 8, 8)
    out = torch.stack([torch.full((3, 8, 8), 0.01), torch.full((3, 8, 8), 0.1)]).requires_grad_()
    loss = relative_l1(out, target)
    assert torch.isclose(loss, F.l1_loss(out, target))  # the value is the batch L1
    loss.backward()
    # A plain L1 gives both samples the same gradient, so the noisy one dominates the update in
    # relative terms; here each sample's gradient is inversely proportional to its error.
    quiet, noisy = out.grad[0].abs().mean(), out.grad[1].abs().mean()
    assert torch.isclose(quiet / noisy, torch.tensor(10.0))


def _batch(size: int = 16, count: int = 2) -> dict[str, torch.Tensor]:
    """Random inputs in the shapes training_state reads (packed RAW at ``size``)."""
    gen = torch.Generator().manual_seed(1)
    rand = lambda *shape: torch.rand(count, *shape, generator=gen)  # noqa: E731
    return {"input": rand(4, size, size), "clean_input": rand(4, size, size),
            "noise_std": 0.05 * rand(1, size, size), "clean_std": 0.01 * rand(1, size, size),
            "color": rand(3, size // 2, size // 2), "detail": 0.1 * rand(3, 2 * size, 2 * size),
            "clean_detail": 0.1 * rand(3, 2 * size, 2 * size), "target": rand(3, 2 * size, 2 * size)}


def test_pruning_removes_the_channels_that_do_not_matter(tmp_path):
    torch.manual_seed(0)
    bundle = ModelBundle(RVAE(), LatentDenoiser(), IRSDEScheduler()).eval()
    with torch.no_grad():
        for module in bundle.modules():
            if isinstance(module, ResBlock):
                # Trained-like second convolutions (they start at zero), reading only the even
                # inner channels: the odd ones cannot change the output.
                weight = 0.05 * torch.randn_like(module.conv2.weight)
                weight[:, 1::2] = 0
                module.conv2.weight.copy_(weight)
        bundle.denoiser.head.weight.normal_(0, 0.05)
    batch = _batch()
    pruned = prune_inner(bundle, 0.5, [batch])
    config = pruned.config()
    assert (config["rvae_hidden"], config["rvae_half_hidden"], config["denoiser_hidden"]) == (32, 8, [16, 32, 64])
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in bundle.parameters())

    def develop(b):
        with torch.no_grad():
            return develop_latent(b, batch["input"], batch["noise_std"], batch["color"], batch["detail"], 1)

    before = develop(bundle)
    assert torch.allclose(develop(pruned), before, atol=1e-5)
    # The inner widths travel in the weights file: the pruned networks load in their own shape.
    reloaded = load_bundle(save_bundle(pruned, tmp_path / "pruned.safetensors"))
    assert torch.allclose(develop(reloaded), before, atol=1e-5)
    # Pruning the channels that do matter changes the output: the test above can fail.
    assert not torch.allclose(develop(prune_inner(bundle, 0.25, [batch])), before, atol=1e-3)


@pytest.mark.parametrize("grow", [{"wide_hidden": 24}, {"half_hidden": 24}])
def test_widening_starts_from_the_same_output_and_the_new_channels_are_used(tmp_path, grow):
    torch.manual_seed(0)
    bundle = fresh_bundle().eval()
    with torch.no_grad():  # trained-like: a decoder whose render depends on its inputs
        for module in bundle.modules():
            if isinstance(module, ResBlock):
                module.conv2.weight.normal_(0, 0.05)
        bundle.rvae.decoder.head.weight.normal_(0, 0.05)
    path = save_bundle(bundle, tmp_path / "narrow.safetensors")
    widened, new = load_init(str(path), **grow)
    if "wide_hidden" in grow:
        assert widened.config()["rvae_wide_hidden"] == 24 and new and all(
            ".decoder.raw_wide." in k or ".decoder.block_wide." in k for k in new)
        grown = [widened.rvae.decoder.block_wide]
    else:
        assert widened.config()["rvae_half_hidden"] == 24 and not new
        grown = [widened.rvae.decoder.block_half, widened.rvae.decoder.block_half2]
    batch = _batch()

    def develop(b):
        with torch.no_grad():
            return develop_latent(b.eval(), batch["input"], batch["noise_std"], batch["color"], batch["detail"], 1)

    before = develop(bundle)
    torch.testing.assert_close(develop(widened), before)
    # Trained, the new channels change the output (the comparison above can fail), and the
    # widths travel in the weights file.
    with torch.no_grad():
        if "wide_hidden" in grow:
            widened.rvae.decoder.raw_wide.weight.normal_(0, 0.05)
        for block in grown:
            block.conv2.weight[:, -4:].normal_(0, 0.05)
    after = develop(widened)
    assert (after - before).abs().mean() > 1e-3
    reloaded = load_bundle(save_bundle(widened, tmp_path / "wide.safetensors"))
    torch.testing.assert_close(develop(reloaded), after)


def test_training_steps_lower_the_joint_loss():
    """Gradients reach every trained part through the decoder and its share (an in-place
    operation on a tensor autograd keeps would fail here), and the steps descend."""
    torch.manual_seed(0)
    bundle, batch = fresh_bundle(), _batch()
    # A target the networks can reach: the colour condition, brought up, in another tone.
    batch["target"] = 0.3 + 0.5 * upsample_condition(batch["color"])

    def loss() -> float:
        with torch.no_grad():
            return float(joint_loss(training_state(bundle, batch, torch.Generator().manual_seed(0), "relative")))

    before = loss()
    opt = torch.optim.AdamW(bundle.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        train_step(bundle, opt, batch, gen, "relative")
    assert bundle.rvae.decoder.classical_share.logit.weight.abs().sum() > 0
    assert loss() < 0.8 * before


def test_the_network_loss_reaches_the_render_the_share_hides():
    """Where the share takes all of the classical render, the output's loss gives the network's own
    render no gradient; ``--network-loss`` is what still trains it there."""
    torch.manual_seed(0)
    bundle, batch = fresh_bundle(), _batch()
    bundle.rvae.decoder.classical_share.logit.bias.data.fill_(30.0)  # shares of exactly 1
    losses = training_state(bundle, batch, torch.Generator().manual_seed(0), "relative")
    head = bundle.rvae.decoder.head.weight
    through_output, = torch.autograd.grad(losses["image"], head, retain_graph=True)
    through_network, = torch.autograd.grad(losses["network"], head, retain_graph=True)
    assert through_output.abs().max() == 0
    assert through_network.abs().max() > 1e-4
    torch.testing.assert_close(joint_loss(losses, 0.5) - joint_loss(losses), 0.5 * losses["network"])


def test_latent_headroom_decodes_the_encoders_the_denoised_and_the_clean_latent():
    torch.manual_seed(0)
    bundle, batch = fresh_bundle().eval(), _batch(count=4)
    val = [{k: v[i] for k, v in batch.items()} for i in range(4)]
    headroom = latent_headroom(bundle, val)
    # An untrained denoiser returns its input (zero-initialised head): one step changes nothing.
    assert headroom["1 step"] == headroom["no step"]
    assert headroom["clean latent"] != headroom["no step"]
    # Told that the noisy RAW is the clean one, the clean latent is the encoder's own.
    as_clean = [{**item, "clean_input": item["input"], "clean_std": item["noise_std"]} for item in val]
    assert latent_headroom(bundle, as_clean)["clean latent"] == headroom["no step"]


def test_one_band_detail_gate_weights_give_the_one_band_decoder():
    # Weights from before v10 gate the classical detail once; loaded, both bands get that gate,
    # which must reproduce the old decoder: base + gate x detail + head, then the share.
    torch.manual_seed(0)
    decoder = RVAE().decoder.eval()
    state = {k: v.clone() for k, v in decoder.state_dict().items()}
    state["detail_gate.weight"] = 0.1 * torch.randn(12, *state["detail_gate.weight"].shape[1:])
    state["detail_gate.bias"] = torch.randn(12)
    state["head.weight"].normal_(0, 0.05)
    converted = with_current_bands({f"rvae.decoder.{k}": v for k, v in state.items()})
    decoder.load_state_dict({k.removeprefix("rvae.decoder."): v for k, v in converted.items()})
    batch = _batch(size=16)
    latent = torch.randn(2, 16, 8, 8)
    args = latent, batch["color"], batch["input"], batch["noise_std"], batch["detail"]

    def one_band(latent, color, packed, noise_std, detail):
        h = decoder.block_latent(F.silu(decoder.stem(torch.cat([latent, color], dim=1))))
        h = F.silu(F.pixel_shuffle(decoder.up(h), 2))
        h = h + decoder.raw_skip(torch.cat([packed.clamp_min(0).sqrt(), noise_std.sqrt()], dim=1))
        h = decoder.block_half2(decoder.block_half(h))
        gate = torch.sigmoid(F.pixel_shuffle(
            F.conv2d(h, state["detail_gate.weight"], state["detail_gate.bias"], padding=1), 2))
        base = upsample_condition(color)
        network = base + gate * detail + F.pixel_shuffle(decoder.head(h), 2)
        return decoder.classical_share(network, base + detail, packed, noise_std)

    with torch.no_grad():
        torch.testing.assert_close(decoder(*args), one_band(*args))
        # A coarse gate of its own changes the output: the comparison above can fail.
        decoder.detail_gate.bias[12:] += 2
        assert (decoder(*args) - one_band(*args)).abs().mean() > 1e-3


def test_an_interrupted_run_keeps_its_steps_and_the_same_command_resumes(tmp_path, monkeypatch):
    """Ctrl-C (or ``timeout -s INT``) saves a checkpoint at the step reached; the same command
    then continues from there."""
    import imageio.v3 as iio
    from skimage import data

    from rawrestore import train as train_module
    from rawrestore.dataset import split_of

    photos, run = tmp_path / "photos", tmp_path / "run"
    photos.mkdir()
    names = [f"photo{i}.png" for i in range(60)]
    chosen = ([n for n in names if split_of(Path(n)) == "train"][:2]
              + [n for n in names if split_of(Path(n)) == "val"][:1])
    for k, name in enumerate(chosen):
        iio.imwrite(photos / name, data.astronaut()[k * 96:k * 96 + 96, :96])
    command = ["--data", str(photos), "--out", str(run), "--crop", "64", "--batch", "2", "--val-size", "1",
               "--darktable-profiles", "", "--minutes", "30"]
    real_step = train_module.train_step

    def interrupt_after(steps: int):
        done = []

        def step(*args, **kwargs):
            if len(done) == steps:
                raise KeyboardInterrupt
            done.append(1)
            return real_step(*args, **kwargs)
        return step

    monkeypatch.setattr(train_module, "train_step", interrupt_after(2))
    with pytest.raises(SystemExit) as stopped:
        train_module.main(command)
    assert stopped.value.code == 130
    assert read_checkpoint(run / "checkpoint.safetensors")[2]["step"] == 2

    monkeypatch.setattr(train_module, "train_step", interrupt_after(1))
    with pytest.raises(SystemExit):
        train_module.main(command)
    assert read_checkpoint(run / "checkpoint.safetensors")[2]["step"] == 3
    assert "resumed at step 2" in (run / "train.log").read_text()


def test_training_and_sampling_keep_to_the_networks_device():
    """Every tensor the training step and the sampler make is on the networks' device. Run on the
    'meta' device (shapes, no data): a tensor left on the CPU fails here as it does on a GPU (two
    did, on an H100)."""
    bundle = fresh_bundle().to("meta")
    batch = {k: v.to("meta") for k, v in _batch().items()}
    losses = training_state(bundle, batch, torch.Generator().manual_seed(0), "relative")
    joint_loss(losses, 0.1).backward()
    assert all(p.grad.device.type == "meta" for p in bundle.parameters() if p.grad is not None)
    noises = [torch.randn(2, bundle.rvae.latent_channels, 8, 8).to("meta") for _ in range(2)]
    out = develop_latent(bundle, batch["input"], batch["noise_std"], batch["color"], batch["detail"], 2, noises)
    assert out.device.type == "meta" and out.shape == batch["target"].shape
