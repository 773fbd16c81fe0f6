"""How well `--slice-profile auto` finds a thick-slice scan's slice profile, and what a miss costs.

Each brain (the MNI152 T1 template from nilearn, and Colin27 when Debian's `mricron-data` is installed;
validation only) is degraded whole along one thick axis (`--scales`, e.g. 1,1,4 and 4,1,1) by each
slice profile of a grid (Gaussians of FWHM 0.6 f, f and 1.4 f, boxes of width 0.8 f and f, a box of
width f convolved with a Gaussian of FWHM 0.5 f), without noise and with Rician noise at SNR 20
(`degrade.degrade_profile`, `degrade.add_noise`). `profile_estimate.estimate_slice_profile` then
estimates the profile from the low-resolution volume alone, with the noise level estimated too.

What a miss costs is measured where the profile is used: the data-consistency step applied to cubic
interpolation (`consistency.fit_consistency`; no network), once with the true profile, once with the
estimate and once with the usual guess of a Gaussian of FWHM f. Reported: PSNR inside the head mask
of the estimate minus the truth, and of the guess minus the truth (dB; 0 is as good as knowing).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import _common as C

GRID = (("gaussian", 0.6, 1.0), ("gaussian", 1.0, 1.0), ("gaussian", 1.4, 1.0), ("box", 1.0, 0.8),
        ("box", 1.0, 1.0), ("box_gaussian", 0.5, 1.0))
GUESS = ("gaussian", 1.0, 1.0)


def brains(quick: bool) -> dict[str, np.ndarray]:
    """The volumes to degrade: MNI152 (2 mm with `--quick`) and Colin27 when installed."""
    from sciffusion.plugins.mri.colin27 import Colin27Missing, load_colin27
    from sciffusion.plugins.mri.data import mni_volume

    out = {"MNI152 T1": np.asarray(mni_volume(2 if quick else 1).data, np.float32)}
    if not quick:
        try:
            out["Colin27"] = np.asarray(load_colin27().data, np.float32)
        except Colin27Missing as err:
            print(f"skipping Colin27: {err}", flush=True)
    return out


def score_cell(hr: np.ndarray, scale: tuple[int, int, int], truth, snr: float | None) -> list:
    """One table row: the estimate, and the PSNR of consistent cubic with it and with the guess minus the truth."""
    from sciffusion.plugins.mri.conditioning import estimate_noise_sigma, profile_text
    from sciffusion.plugins.mri.consistency import fit_consistency
    from sciffusion.plugins.mri.degrade import (
        SliceProfile,
        add_noise,
        crop_to_multiple,
        degrade_profile,
        upsample,
    )
    from sciffusion.plugins.mri.metrics import psnr
    from sciffusion.plugins.mri.profile_estimate import estimate_slice_profile
    from sciffusion.plugins.mri.transforms import foreground_mask

    hr = crop_to_multiple(hr, scale)
    lr = add_noise(degrade_profile(hr, scale, truth), snr, "rician", 0)
    sigma = estimate_noise_sigma(lr)
    found = estimate_slice_profile(lr, scale, sigma).profile
    cubic, mask = upsample(lr, scale, 3), foreground_mask(hr)
    guess = SliceProfile(GUESS[0], fwhm=GUESS[1], width=GUESS[2])
    score = {k: psnr(fit_consistency(cubic, lr, scale, p, sigma)(cubic, lr), hr, mask)
             for k, p in (("truth", truth), ("found", found), ("guess", guess))}
    return [profile_text(truth), "none" if snr is None else f"Rician SNR {snr:g}", profile_text(found),
            f"{score['found'] - score['truth']:+.2f}", f"{score['guess'] - score['truth']:+.2f}"]


def main(argv: list[str] | None = None) -> str:
    from sciffusion.plugins.mri.degrade import SliceProfile, parse_scale

    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--scales", default="1,1,4;4,1,1", help="thick-slice scales, separated by ';'")
    args = C.parse(p, argv)
    started = time.perf_counter()
    C.setup(args.threads)
    scales = [parse_scale(s) for s in args.scales.split(";") if s.strip()]
    grid = GRID[:2] if args.quick else GRID
    sections = []
    for name, hr in brains(args.quick).items():
        for scale in scales:
            rows = []
            for kind, fwhm, width in grid:
                for snr in ((None,) if args.quick else (None, 20.0)):
                    rows.append(score_cell(hr, scale, SliceProfile(kind, fwhm=fwhm, width=width), snr))
                    print("  " + " | ".join(rows[-1]), flush=True)
            sections.append((f"{name}, scale {','.join(map(str, scale))}", C.table(
                ["true profile", "noise", "estimate", "estimate - truth (dB)", "guess gaussian:1 - truth (dB)"],
                rows)))
    summary = ("Estimated slice profiles of whole brains degraded along one thick axis, and the PSNR of the "
               "data-consistency step on cubic interpolation with the estimate (and with the guess of a "
               "Gaussian of FWHM f) relative to the true profile, in dB inside the head mask.")
    sections.append(("How the cells are made", __doc__.split("\n\n", 1)[1].strip()))
    return C.report("mri_profile_estimate", "MRI: estimating the slice profile of thick-slice scans", summary,
                    sections, args, started)


if __name__ == "__main__":
    main()
