"""End-to-end runs for lab pipelines and the recipe: super-resolve a scan, or evaluate on a reference.

    model = load_checkpoint(default_checkpoint((2, 2, 2)))
    run = evaluate_reference(load_volume("hr.nii.gz"), model)      # degrade, super-resolve, score
    write_outputs(run, "out/")                                        # sr/uncertainty/trilinear/...
    run = super_resolve_volume(load_volume("scan.nii.gz"), model)   # no reference: no metrics
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sciffusion.core.atomic import atomic_write_text
from sciffusion.plugins import core_sampler
from sciffusion.plugins.mri.degrade import crop_to_multiple, degrade
from sciffusion.plugins.mri.figures import nearest_up, slice_figure
from sciffusion.plugins.mri.infer import SRResult, super_resolve
from sciffusion.plugins.mri.io import Volume, VolumeError, lr_affine, save_volume, sr_affine
from sciffusion.plugins.mri.metrics import evaluate, uncertainty_correlation
from sciffusion.plugins.mri.model import SRDenoiser
from sciffusion.plugins.mri.profile_estimate import resolve_auto_profile
from sciffusion.plugins.mri.transforms import foreground_mask

MAX_OUTPUT_VOXELS = 2**28


@dataclass
class Run:
    """What one super-resolution run produced (arrays on the refined grid) and how."""

    result: SRResult
    lowres: Volume
    affine: np.ndarray  # refined grid
    scale: tuple[int, int, int]
    settings: dict
    reference: np.ndarray | None = None
    mask: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)
    input_path: str = "<array>"
    like: Volume | None = None


def _settings(model: SRDenoiser, **kw) -> dict:
    return {"model": model.config.to_dict(), **kw}


def check_scale_fits(shape: tuple[int, ...], scale: tuple[int, int, int], name: str) -> None:
    """Refuse outputs that would not fit in memory (more than 2^28 refined voxels)."""
    n = int(np.prod([s * f for s, f in zip(shape, scale)]))
    if n > MAX_OUTPUT_VOXELS:
        raise VolumeError(f"{name}: scale {scale} would make a {n:,}-voxel output (limit {MAX_OUTPUT_VOXELS:,})")


def axis_permutation(scale: tuple[int, int, int], model_scale: tuple[int, int, int],
                     name: str = "checkpoint") -> tuple[int, int, int]:
    """`p` with `model_scale[i] == scale[p[i]]`: the data's axis `p[i]` goes where the model's axis `i` is.

    The identity when the scales agree; otherwise the first such permutation in lexicographic
    order (a cyclic shift for one thick-slice axis, which keeps the in-plane order). A scale that
    no permutation of the model's matches raises `VolumeError`.
    """
    for perm in itertools.permutations(range(3)):
        if all(model_scale[i] == scale[perm[i]] for i in range(3)):
            return tuple(perm)
    raise VolumeError(
        f"{name}: trained for scale {','.join(map(str, model_scale))}, which cannot serve scale "
        f"{','.join(map(str, scale))} even with the axes permuted (the reduced axes do not match)")


def _transpose_result(res: SRResult, order: tuple[int, ...]) -> SRResult:
    """Every array of `res` with its spatial axes reordered by `order` (samples keep their first axis)."""
    def t(a):
        return None if a is None else np.ascontiguousarray(np.transpose(a, order if a.ndim == 3 else (0, *[o + 1 for o in order])))

    return SRResult(t(res.mean), t(res.std), t(res.sample_mean), t(res.posterior_mean), t(res.cubic),
                    t(res.trilinear), t(res.samples), res.conditioning, res.consistency, res.profile_estimate)


def check_adaptable(vol: Volume, scale: tuple[int, int, int]) -> None:
    """`--adapt` needs thick slices: one reduced axis, and an input whose voxels are not isotropic."""
    from sciffusion.plugins.mri.adapt import AdaptError, thick_axis

    try:
        thick_axis(scale)
    except AdaptError as err:
        raise VolumeError(f"{vol.path}: {err}") from None
    z = np.asarray(vol.zooms)
    if np.ptp(z) <= 0.01 * z.max():
        raise VolumeError(f"{vol.path}: --adapt needs an anisotropic input (thick slices), but its voxels are "
                          f"isotropic ({' x '.join(f'{v:g}' for v in z)} mm): there is no in-plane high "
                          "resolution to learn from")


def super_resolve_volume(vol: Volume, model: SRDenoiser, samples: int = 4, steps: int = 5,
                         method: str | None = None, seed: int = 0, device: str = "cpu",
                         progress: bool = False, scale: tuple[int, int, int] | None = None,
                         adapt: int = 0, **kw) -> Run:
    """Super-resolve a user's low-resolution scan by `scale` (default: the model's; no metrics).

    A `scale` that is a permutation of the model's (e.g. `4,1,1` for a `1,1,4` model) is served by
    permuting the data's axes into the model's order and back (`axis_permutation`). `adapt > 0`
    first fine-tunes a copy of the model on the scan itself (`adapt.adapt_model`, thick slices only).
    """
    scale = tuple(scale or model.config.scale)
    perm = axis_permutation(scale, model.config.scale)
    if any(n < 4 for n in vol.data.shape):
        raise VolumeError(f"{vol.path}: volume {vol.data.shape} is too small to super-resolve (need >= 4 voxels per axis)")
    check_scale_fits(vol.data.shape, scale, vol.path)
    if adapt:
        check_adaptable(vol, scale)
    t0 = time.time()
    data = np.ascontiguousarray(np.transpose(vol.data, perm))
    kw["conditioning"], estimated = resolve_auto_profile(kw.get("conditioning"), data, model.config.scale)
    used = model
    if adapt:
        from sciffusion.plugins.mri.adapt import adapt_model

        profile = kw["conditioning"].profile if kw["conditioning"] is not None else None
        used = adapt_model(model, data, adapt, seed=seed, progress=progress, profile=profile)
    t_adapt = time.time() - t0
    res = super_resolve(used, data, samples=samples, steps=steps, method=method, seed=seed, device=device,
                        progress=progress, **kw)
    res = _transpose_result(res, tuple(int(i) for i in np.argsort(perm)))
    settings = _settings(model, samples=samples, steps=steps, method=core_sampler(method), seed=seed, device=str(device),
                         seconds=round(time.time() - t0, 1), mode="input", scale=list(scale),
                         axis_permutation=list(perm), adapt_steps=adapt, adapt_seconds=round(t_adapt, 1),
                         estimate=kw.get("estimate", "posterior_mean"), conditioned=model.config.conditioned)
    if res.conditioning is not None:
        settings["conditioning"] = res.conditioning
    if estimated is not None:
        settings["slice_profile_estimate"] = estimated
    settings["data_consistency"] = res.consistency or "off"
    return Run(res, vol, sr_affine(vol.affine, scale), scale, settings, input_path=vol.path, like=vol)


def evaluate_reference(ref: Volume, model: SRDenoiser, samples: int = 4, steps: int = 5,
                       method: str | None = None, seed: int = 0, device: str = "cpu",
                       crop: tuple[slice, slice, slice] | None = None,
                       eval_region: np.ndarray | None = None, progress: bool = False,
                       scale: tuple[int, int, int] | None = None, **kw) -> Run:
    """Degrade a high-resolution reference by `scale` (default: the model's), super-resolve it, and score it.

    The reference is cropped to multiples of the scale and degraded whole (`degrade.degrade`); `crop`
    (slices on the cropped high-res grid, aligned to the scale) restricts the super-resolution to a
    sub-block, and `eval_region` (boolean, same grid as the crop) further restricts the metrics,
    which are computed inside the head mask of the reference.
    """
    scale = tuple(scale or model.config.scale)
    axis_permutation(scale, model.config.scale)
    hr = crop_to_multiple(ref.data, scale)
    if any(n < 4 * f for n, f in zip(hr.shape, scale)):
        raise VolumeError(f"{ref.path}: reference {ref.data.shape} is too small for scale {scale}")
    lr = degrade(hr, scale, model.config.fwhm)
    affine_hr = ref.affine
    if crop is not None:
        starts = [s.start or 0 for s in crop]
        if any(st % f for st, f in zip(starts, scale)):
            raise ValueError(f"crop {crop} is not aligned to the scale {scale}")
        hr = hr[crop]
        lr = lr[tuple(slice((s.start or 0) // f, None if s.stop is None else s.stop // f)
                      for s, f in zip(crop, scale))]
        shift = np.eye(4)
        shift[:3, 3] = starts
        affine_hr = affine_hr @ shift
    low = Volume(lr, lr_affine(affine_hr, scale), None, f"{ref.path} degraded {scale}")
    run = super_resolve_volume(low, model, samples=samples, steps=steps, method=method, seed=seed,
                               device=device, progress=progress, scale=scale, **kw)
    run.settings["mode"] = "reference"
    run.affine, run.reference, run.input_path, run.like = affine_hr, hr, ref.path, ref
    mask = foreground_mask(hr)
    if eval_region is not None:
        mask &= eval_region
    run.mask = mask
    r = run.result
    run.metrics = {
        "methods": evaluate({"trilinear": r.trilinear, "cubic": r.cubic, "sciffusion": r.mean,
                             "sciffusion_sample_mean": r.sample_mean}, hr, mask),
        "estimate": kw.get("estimate", "posterior_mean"),
        "uncertainty_spearman": round(uncertainty_correlation(r.std, r.mean, hr, mask), 4)
        if samples > 1 else None,
        "mask_voxels": int(mask.sum()),
        "normalisation": "intensities / p99.5 of the reference inside the mask, clipped to [0, 1]",
    }
    return run


def evaluate_demo(model: SRDenoiser, scale: tuple[int, int, int] | None = None, **kw) -> Run:
    """The demonstration: degrade the 1 mm MNI152 template and super-resolve its held-out slab.

    The slab (`data.HOLDOUT` along `data.HOLDOUT_AXIS`) and its guard band are the block that is
    super-resolved; the metrics are computed on the slab only (`data.heldout_crop`), which no
    shipped model was trained on. `kw` are the arguments of `evaluate_reference`.
    """
    from sciffusion.plugins.mri.data import heldout_crop, heldout_description, mni_volume

    scale = tuple(scale or model.config.scale)
    ref = mni_volume(1)
    crop, region = heldout_crop(crop_to_multiple(ref.data, scale).shape)
    run = evaluate_reference(ref, model, crop=crop, eval_region=region, scale=scale, **kw)
    run.settings["demo"] = f"MNI152 {heldout_description()}; metrics inside it"
    return run


def _atomic_json(obj: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_outputs(run: Run, out_dir: str | Path, extra_config: dict | None = None) -> dict[str, Path]:
    """Write sr/uncertainty/trilinear (+ lowres, reference) NIfTI, metrics.json, slices.png, config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    protect = (run.input_path,)
    s = "x".join(map(str, run.scale))
    k, st = run.settings["samples"], run.settings["steps"]
    files = {}
    desc = {"sr": f"sciffusion SR {s} mean of {k} samples, {st} steps",
            "uncertainty": f"sciffusion SR {s} per-voxel std of {k} samples",
            "trilinear": f"trilinear interpolation {s}"}
    arrays = {"sr": run.result.mean, "uncertainty": run.result.std, "trilinear": run.result.trilinear}
    for name, arr in arrays.items():
        files[name] = save_volume(arr, run.affine, out / f"{name}.nii.gz", like=run.like, description=desc[name],
                                  protect=protect)
    files["lowres"] = save_volume(run.lowres.data, run.lowres.affine, out / "lowres.nii.gz", like=run.like,
                                  description=f"low-resolution input {s}", protect=protect)
    panels = {"low-res": nearest_up(run.lowres.data, run.scale), "trilinear": run.result.trilinear,
              "sciffusion": run.result.mean}
    if run.reference is not None:
        panels["reference"] = run.reference
        panels["|error|"] = np.abs(run.result.mean - run.reference)
    panels["uncertainty"] = run.result.std
    zooms = tuple(float(z) for z in np.linalg.norm(run.affine[:3, :3], axis=0))
    files["slices"] = slice_figure(panels, out / "slices.png", zooms=zooms, title=f"sciffusion {s}")
    if run.metrics:
        files["metrics"] = out / "metrics.json"
        _atomic_json(run.metrics, files["metrics"])
    files["config"] = out / "config.json"
    _atomic_json({"input": run.input_path, "scale": list(run.scale), **run.settings, **(extra_config or {})},
                 files["config"])
    return files
