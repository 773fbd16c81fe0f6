"""A denoiser told the degradation: the noise estimator, the vector, zero-initialised layers, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sciffusion.plugins.mri import cli
from sciffusion.plugins.mri.blind import BlindFamily
from sciffusion.plugins.mri.conditioning import (
    DEGRADATION_DIM,
    Conditioning,
    degradation_vector,
    estimate_noise_sigma,
    parse_noise_sigma,
    parse_slice_profile,
    profile_text,
)
from sciffusion.plugins.mri.data import BlindPatchDataset
from sciffusion.plugins.mri.degrade import (
    SliceProfile,
    add_noise,
    degrade_profile,
    signal_level,
)
from sciffusion.plugins.mri.model import (
    SRConfig,
    SRDenoiser,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from tests.plugins.mri.helpers import phantom, tiny_config


def conditioned(cfg: SRConfig) -> SRConfig:
    return SRConfig(**{**cfg.to_dict(), "conditioned": True})


@pytest.fixture(scope="module")
def brain_lr() -> np.ndarray:
    """A 96^3 block of the 1 mm MNI152 template (nilearn's wheel) seen at 2 mm through a box profile."""
    from sciffusion.plugins.mri.data import mni_volume

    hr = mni_volume(1).data[40:136, 60:156, 40:136]
    return degrade_profile(hr, (2, 2, 2), SliceProfile("box"))


# ----- the noise estimator --------------------------------------------------------------------------
@pytest.mark.parametrize("snr", [20.0, 8.0])
@pytest.mark.parametrize("kind", ["gaussian", "rician"])
def test_noise_estimate_matches_the_drawn_sigma(brain_lr, snr, kind):
    """Known sigma = S / snr on a real anatomy: within 12 % (the anatomy's own detail adds a little)."""
    sigma = signal_level(brain_lr) / snr
    est = estimate_noise_sigma(add_noise(brain_lr, snr, kind, 3))
    assert est == pytest.approx(sigma, rel=0.12)


def test_noise_estimate_of_a_clean_brain_is_a_small_floor(brain_lr):
    """Without noise the anatomy alone reads as noise of under 1.5 % of the signal (SNR above 65)."""
    assert 0 < estimate_noise_sigma(brain_lr) < 0.015 * signal_level(brain_lr)


@pytest.mark.parametrize("snr", [5.0, 3.0])
def test_noise_estimate_holds_for_rician_noise_at_low_snr(snr):
    """Rician at SNR 3-5 in tissue, Rayleigh in the background: the tissue rule keeps the estimate within 5 %,
    where the MAD of every voxel would be pulled down by the narrower Rayleigh background."""
    from scipy import ndimage as ndi

    from sciffusion.plugins.mri.conditioning import HIGH_PASS, MAD_TO_SIGMA

    vol = phantom((48, 48, 48), seed=2)
    sigma = signal_level(vol) / snr
    noisy = add_noise(vol, snr, "rician", 5)
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.05)
    h = noisy.astype(np.float64)
    for axis in range(3):
        h = ndi.correlate1d(h, HIGH_PASS, axis=axis, mode="nearest")
    assert MAD_TO_SIGMA * np.median(np.abs(h)) < 0.85 * sigma  # the naive rule is biased


def test_noise_estimate_ignores_a_masked_background_and_is_zero_without_noise():
    vol = phantom((64, 64, 64), seed=1)  # sharp edges: a few per cent of its voxels are edges
    sigma = signal_level(vol) / 10
    noisy = add_noise(vol, 10.0, "gaussian", 0) * (vol > 0)  # skull-stripped after the noise: exact zeros
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.05)
    assert estimate_noise_sigma(vol) < 0.01 * signal_level(vol)  # smooth anatomy alone: almost nothing
    assert estimate_noise_sigma(np.full((8, 8, 8), 3.0)) == 0.0 and estimate_noise_sigma(np.zeros((8, 8, 8))) == 0.0
    scaled = estimate_noise_sigma(7.0 * noisy)
    assert scaled == pytest.approx(7.0 * estimate_noise_sigma(noisy), rel=1e-5)  # in the volume's own units


# ----- parsing and the vector -----------------------------------------------------------------------
def test_profile_and_noise_parsing_round_trip():
    assert parse_slice_profile("unknown") is None
    assert parse_slice_profile("gaussian") == SliceProfile("gaussian", fwhm=1.0)
    assert parse_slice_profile("Gaussian:0.6") == SliceProfile("gaussian", fwhm=0.6)
    assert parse_slice_profile("box") == SliceProfile("box", width=1.0)
    assert parse_slice_profile("box_gaussian:1.2,0.4") == SliceProfile("box_gaussian", width=1.2, fwhm=0.4)
    for text in ("gaussian:0.6", "box:1.3", "box_gaussian:1,0.5", "unknown"):
        assert profile_text(parse_slice_profile(text)) == text
    assert parse_noise_sigma("auto") == "auto" and parse_noise_sigma("unknown") is None
    assert parse_noise_sigma("12.5") == 12.5 and parse_noise_sigma("0") == 0.0
    with pytest.raises(ValueError, match="noise sigma"):
        Conditioning(noise=-1.0)


def test_degradation_vector_layout():
    assert torch.equal(degradation_vector(None, None), torch.zeros(DEGRADATION_DIM))
    d = degradation_vector(0.01, SliceProfile("box", width=1.0))
    assert d[0] == 1 and d[1] == pytest.approx(np.log(2.0)) and d[2] == 1
    assert d[3:6].tolist() == [0, 1, 0] and d[6] == 0 and d[7] == 1
    assert d[8] == pytest.approx(np.sqrt(1 / 12) * 2 * np.sqrt(2 * np.log(2)), rel=1e-6)  # std of the box as FWHM
    g = degradation_vector(0.0, SliceProfile("gaussian", fwhm=0.6))
    assert g[1] == 0 and g[3] == 1 and g[6] == pytest.approx(0.6) and g[8] == pytest.approx(0.6)
    assert torch.equal(degradation_vector(None, SliceProfile("gaussian"))[:2], torch.zeros(2))


# ----- the model --------------------------------------------------------------------------------------
def trained_like(model: SRDenoiser) -> SRDenoiser:
    """`model` with random values in its zero-initialised layers (MONAI's output and residual-branch
    convolutions, the degradation embedding's last layer), as training would leave them."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return model


def _inputs(f=8, n=8, b=2):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(b, f, n, n, n, generator=gen), torch.randn(b, f, n, n, n, generator=gen), torch.tensor([0.3, 1.0])


def test_zero_initialised_conditioning_reproduces_an_unconditioned_model_exactly(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(trained_like(SRDenoiser(tiny_config((1, 1, 4)))), tmp_path / "plain.pt")
    old = load_checkpoint(path).eval()
    assert not old.config.conditioned and not hasattr(old, "degradation_embed")
    new = load_weights(SRDenoiser(conditioned(old.config)), old).eval()
    x, c, t = _inputs(f=4)
    with torch.no_grad():
        ref = old(x, t, c)
        for d in (degradation_vector(0.05, SliceProfile("box")), degradation_vector(None, None), None):
            assert torch.equal(new(x, t, (c, d)), ref)
        assert torch.equal(new(x, t, c), ref)


def test_conditioning_changes_the_output_once_its_layer_is_trained():
    torch.manual_seed(0)
    model = trained_like(SRDenoiser(conditioned(tiny_config())).eval())
    x, c, t = _inputs()
    box, gauss = degradation_vector(0.02, SliceProfile("box")), degradation_vector(0.02, SliceProfile("gaussian"))
    with torch.no_grad():
        a, b, u = model(x, t, (c, box)), model(x, t, (c, gauss)), model(x, t, (c, None))
        per_example = model(x, t, (c, torch.stack([box, gauss])))
    assert (a - b).abs().max() > 1e-3 and (a - u).abs().max() > 1e-3
    assert torch.equal(u, model(x, t, c))  # no vector = unknown
    torch.testing.assert_close(per_example[0], a[0])  # each example gets its own vector
    torch.testing.assert_close(per_example[1], b[1])
    plain = trained_like(SRDenoiser(tiny_config()).eval())  # an unconditioned model ignores the vector
    with torch.no_grad():
        assert torch.equal(plain(x, t, (c, box)), plain(x, t, c))


def test_checkpoints_record_the_conditioning_and_old_ones_still_load(tmp_path):
    torch.manual_seed(0)
    plain = SRDenoiser(tiny_config())
    blob = torch.load(save_checkpoint(plain, tmp_path / "plain.pt"), weights_only=True)
    blob["config"] = json.dumps({k: v for k, v in json.loads(blob["config"]).items() if k != "conditioned"})
    torch.save(blob, tmp_path / "old.pt")  # a checkpoint written before conditioning existed
    old = load_checkpoint(tmp_path / "old.pt")
    assert not old.config.conditioned
    for k, v in plain.state_dict().items():
        assert torch.equal(old.state_dict()[k], v)
    model = SRDenoiser(conditioned(tiny_config()))
    path = save_checkpoint(model, tmp_path / "cond.pt")
    assert json.loads(torch.load(path, weights_only=True)["config"])["conditioned"] is True
    back = load_checkpoint(path)
    assert back.config.conditioned
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(SRDenoiser(tiny_config()), back)  # conditioned weights cannot go into a plain model


def test_super_resolve_tells_the_model_and_records_it():
    from sciffusion.plugins.mri.infer import super_resolve

    torch.manual_seed(0)
    model = trained_like(SRDenoiser(conditioned(tiny_config())).eval())
    lr = add_noise(degrade_profile(phantom((32, 32, 32)), (2, 2, 2), SliceProfile("box")), 20.0, "rician", 0)
    kw = dict(samples=1, steps=1, roi=(8, 8, 8))
    auto = super_resolve(model, lr, conditioning=Conditioning("auto", SliceProfile("box")), **kw)
    told = super_resolve(model, lr, conditioning=Conditioning(2.0, SliceProfile("box")), **kw)
    blind = super_resolve(model, lr, **kw)
    assert auto.conditioning["noise_sigma"] == "auto" and auto.conditioning["slice_profile"] == "box:1"
    assert auto.conditioning["noise_sigma_used"] == pytest.approx(estimate_noise_sigma(lr), rel=1e-4)
    assert told.conditioning["noise_sigma_used"] == 2.0 and blind.conditioning["slice_profile"] == "unknown"
    assert np.abs(auto.mean - blind.mean).max() > 0 and np.abs(told.mean - auto.mean).max() > 0
    plain = super_resolve(SRDenoiser(tiny_config()).eval(), lr, **kw)
    assert plain.conditioning is None


# ----- training ---------------------------------------------------------------------------------------
def test_conditioned_items_carry_the_drawn_degradation():
    cfg = tiny_config()
    fam = BlindFamily(profile_probs=(0.0, 1.0, 0.0), p_noise=1.0, p_rician=0.0, snr_range=(10.0, 10.0),
                      p_bias=0.0, p_gamma=0.0, scale_range=(1.0, 1.0), p_affine=0.0, p_elastic=0.0)
    vols = [phantom((48, 48, 48))]
    plain = BlindPatchDataset(vols, cfg, fam, seed=3)
    told = BlindPatchDataset(vols, conditioned(cfg), fam, seed=3, p_unknown=0.0)
    hidden = BlindPatchDataset(vols, conditioned(cfg), fam, seed=3, p_unknown=1.0)
    x0, c = plain[4]
    x0b, cb, d = told[4]
    assert torch.equal(x0, x0b) and torch.equal(c, cb)  # the dropout draws do not change the patch
    signal = told.items[0][4]
    assert d[0] == 1 and d[1] == pytest.approx(np.log1p(signal / 10 / 0.01), rel=1e-5)
    assert d[2] == 1 and d[4] == 1 and 0.7 <= d[7] <= 1.3
    assert torch.equal(hidden[4][2], torch.zeros(DEGRADATION_DIM))
    quiet = BlindPatchDataset(vols, conditioned(cfg), fam, seed=3, p_unknown=0.0, noise_known=False)
    assert quiet[4][2][0] == 0 and quiet[4][2][2] == 1
    half = BlindPatchDataset(vols, conditioned(cfg), fam, seed=3, p_unknown=0.5)
    known = np.array([[half[i][2][0], half[i][2][2]] for i in range(40)])
    assert 0.2 < known.mean() < 0.8


def test_conditioned_training_starts_from_an_unconditioned_checkpoint(tmp_path):
    from sciffusion.plugins.mri.train import train_sr

    cfg = tiny_config()
    torch.manual_seed(1)
    init = save_checkpoint(SRDenoiser(cfg), tmp_path / "init.pt")
    ema = train_sr([phantom((48, 48, 48))], conditioned(cfg), tmp_path / "run", steps=1, batch_size=2,
                   progress=False, family=BlindFamily(), init=init)
    assert ema.config.conditioned
    extra = json.loads(torch.load(tmp_path / "run" / "model.pt", weights_only=True)["extra"])
    assert extra["conditioned"] is True and extra["p_unknown"] == 0.25
    with pytest.raises(ValueError, match="--conditioned needs --blind"):
        train_sr([phantom((48, 48, 48))], conditioned(cfg), tmp_path / "run2", steps=1, progress=False)


def test_adaptation_of_a_conditioned_model_runs():
    from sciffusion.plugins.mri.adapt import adapt_model

    torch.manual_seed(0)
    model = SRDenoiser(conditioned(tiny_config((1, 1, 4)))).eval()
    lr = degrade_profile(phantom((48, 48, 64)), (1, 1, 4), SliceProfile("box"))
    out = adapt_model(model, lr, 1, batch_size=1)
    assert any(not torch.equal(a, b) for a, b in zip(out.state_dict().values(), model.state_dict().values()))


# ----- the command line -------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--noise-sigma", "-1"], "error: --noise-sigma: expected auto, unknown or a number >= 0, got '-1'"),
    (["--noise-sigma", "loud"], "error: --noise-sigma: expected auto, unknown or a number >= 0, got 'loud'"),
    (["--slice-profile", "triangle"], "error: --slice-profile: unknown family 'triangle' in 'triangle'; "
     "expected gaussian, box, box_gaussian, auto or unknown"),
    (["--slice-profile", "gaussian:0"], "error: --slice-profile: 'gaussian:0' should be gaussian:FWHM with sizes "
     "in (0, 4] (units of the factor)"),
    (["--slice-profile", "box_gaussian:1"], "error: --slice-profile: 'box_gaussian:1' should be "
     "box_gaussian:WIDTH,FWHM with sizes in (0, 4] (units of the factor)"),
    (["--slice-profile", "box:wide"], "error: --slice-profile: 'box:wide' has a size that is not a number"),
    (["--train", "--conditioned"], "error: --conditioned needs --blind (the model is told the degradation "
     "the blind family draws)"),
])
def test_bad_conditioning_flags_exit_2_with_one_line(tmp_path, capsys, flags, message):
    assert cli.main(["--device", "cpu", "--quiet", "--out", str(tmp_path / "o"), *flags]) == 2
    assert capsys.readouterr().err.strip() == message


def test_conditioning_flags_reach_the_inference(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "single", lambda args, say: seen.update(cli.inference_options(args)) or 0)
    assert cli.main(["--device", "cpu", "--quiet", "--noise-sigma", "3.5", "--slice-profile", "gaussian:0.6"]) == 0
    assert seen["conditioning"] == Conditioning(3.5, SliceProfile("gaussian", fwhm=0.6))
    assert cli.main(["--device", "cpu", "--quiet", "--noise-sigma", "unknown"]) == 0
    assert seen["conditioning"] == Conditioning(None, "auto")  # the slice profile defaults to auto
    assert cli.main(["--device", "cpu", "--quiet", "--noise-sigma", "unknown", "--slice-profile", "unknown"]) == 0
    assert seen["conditioning"] == Conditioning(None, None)
