"""Ensemble sampling of a `Downscaler`: conditioning, noise batches, the core sampler, back to physical units.

For coarse fields X (T, C, h, w) in physical units, with B the bicubic interpolation of the
normalised coarse field, m = f . beta the residual mean (f ending with the B of all variables for
a model with the local slopes) and s its standard deviation:

1. `prepare`: fill missing coarse cells, compute B, m and the conditioning [B, m, s/<s>, sin(lat)];
2. `noise_groups`: batches of (member, time) pairs, each batch with its generator;
3. `draw`: the core sampler draws the standardised residual x0 of one batch, clamped to +-CLAMP
   (member k with network k mod N of a `NetworkEnsemble`, `by_network`);
4. `to_physical`: z = B + m + s x0, back to physical units, then the block means made equal to X
   (`Downscaler.match_coarse`), or non-negative cells capped by their block's total;
5. `finish`: known cells (inpainting) put back, cells never observed in training set to NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from sciffusion.plugins.climate.downscale.config import condition
from sciffusion.plugins.climate.downscale.statistics import local_features
from sciffusion.plugins.climate.grid import block_upper_bound
from sciffusion.plugins.climate.model import networks

if TYPE_CHECKING:
    from sciffusion.plugins.climate.downscale.bundle import Downscaler

# a standardised residual beyond +-6 is a sampler excursion, and exp() of it (precipitation) explodes
CLAMP = 6.0


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample: ensemble size, sampler, seeds, batching, device and the coarse-field rules
    (see `Downscaler.sample`)."""

    members: int = 8
    steps: int = 10
    method: str | None = None   # None: the core's default sampler (`sciffusion.plugins.core_sampler`)
    seed: int = 0
    batch_size: int = 8
    device: str | None = None
    progress: bool = False
    conserve: bool = True
    coarse_gaps: str = "infill"
    time_seeds: Sequence[int] | None = None
    precision: str = "auto"


@dataclass
class Prepared:
    """Per-call inputs of the sampler, all (T, ...): the coarse fields as given and with their gaps
    filled (physical units), B and m (normalised), the conditioning, and the known cells standardised."""

    coarse: np.ndarray
    filled: np.ndarray
    b: np.ndarray
    m: np.ndarray
    cond: np.ndarray
    known_x: np.ndarray | None


def prepare(bundle: Downscaler, coarse: np.ndarray, times: np.ndarray | None, coarse_gaps: str,
            known: np.ndarray | None = None) -> Prepared:
    """B, m = f . beta, the conditioning channels and, for inpainting, x0 = (z_known - B - m) / s."""
    coarse = np.asarray(coarse, np.float64)
    filled = bundle.fill_coarse(coarse, coarse_gaps)
    b = bundle.bicubic_z(filled)
    f = bundle.features(times, coarse.shape[0])
    fl = local_features(f, b) if bundle.coef.shape[1] > f.shape[1] else f   # the local slopes' B
    m = np.einsum("cphw,tphw->tchw", bundle.coef, fl).astype(np.float32)
    cond = condition(b, m, bundle.std, bundle.grids.lat, f[:, 1:] if bundle.cfg.solar_channels else None)
    known_x = None
    if known is not None:
        zk = np.nan_to_num(bundle.norm.forward(known.astype(np.float64)), nan=0.0)
        known_x = np.nan_to_num((zk - b - m) / bundle.std).astype(np.float32)
    return Prepared(coarse, filled, b, m, cond, known_x)


def noise_groups(members: int, n_times: int, batch_size: int, seed: int,
                 time_seeds: Sequence[int] | None, dev: torch.device) -> list:
    """(generator, [(member, time), ...]) batches: one generator for the whole call, or with
    `time_seeds` one per time (its members in batches), so a time's members do not depend on
    which other times are sampled with it."""
    if time_seeds is None:
        jobs = [(k, t) for k in range(members) for t in range(n_times)]
        gen = torch.Generator(device=dev).manual_seed(seed)
        return [(gen, jobs[s : s + batch_size]) for s in range(0, len(jobs), batch_size)]
    groups = []
    for t in range(n_times):
        gen = torch.Generator(device=dev).manual_seed(int(time_seeds[t]))
        groups += [(gen, [(k, t) for k in range(s, min(s + batch_size, members))]) for s in range(0, members, batch_size)]
    return groups


def draw(model: torch.nn.Module, process, prep: Prepared, ts: list[int], gen: torch.Generator,
         opts: SamplingOptions, dev: torch.device, mask: np.ndarray | None = None) -> np.ndarray:
    """Standardised residuals x0 (len(ts), C, H, W), float64 on the host, for the times `ts`,
    clamped to +-CLAMP; with `prep.known_x`, the cells of `mask` are imposed (inpainting)."""
    from sciffusion.core import sample as core_sample
    from sciffusion.core.devices import AutocastModel, autocast_dtype
    from sciffusion.plugins import core_sampler

    kw = {}
    if prep.known_x is not None:
        kw = {"known": torch.from_numpy(prep.known_x[ts]).to(dev),
              "mask": torch.from_numpy(mask[ts].astype(np.float32)).to(dev)}
    model = AutocastModel(model, autocast_dtype(opts.precision, dev))
    x = core_sample(model, process, (len(ts), *prep.b.shape[1:]), method=core_sampler(opts.method), steps=opts.steps,
                    generator=gen, cond=torch.from_numpy(prep.cond[ts]).to(dev), progress=opts.progress,
                    device=dev, **kw)
    return x.clamp(-CLAMP, CLAMP).cpu().double().numpy()


def to_physical(bundle: Downscaler, x: np.ndarray, prep: Prepared, ts: list[int], conserve: bool,
                inpainting: bool) -> np.ndarray:
    """z = B + m + s x0 in physical units; block means matched to the coarse fields with `conserve`,
    else non-negative (log1p) variables capped per cell by their block's total; as is when inpainting."""
    phys = bundle.norm.inverse(prep.b[ts] + prep.m[ts] + bundle.std * x)
    if inpainting:
        return phys
    if conserve:
        return bundle.match_coarse(phys, prep.coarse[ts])
    for c, v in enumerate(bundle.norm.variables):
        if v.transform == "log1p":  # a non-negative cell cannot exceed its block's total
            cap = block_upper_bound(np.maximum(prep.filled[ts, c], 0), bundle.cfg.factor, bundle.grids.lat)
            phys[:, c] = np.minimum(phys[:, c], cap)
    return phys


def finish(bundle: Downscaler, out: np.ndarray, known: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray:
    """Known cells put back exactly (inpainting); cells never observed in training set to NaN."""
    if known is not None:
        out = np.where(mask[None].astype(bool), known[None], out)
    if bundle.missing is not None:
        out[:, :, bundle.missing] = np.nan
    return out


@torch.no_grad()
def sample_ensemble(bundle: Downscaler, coarse: np.ndarray, opts: SamplingOptions, times: np.ndarray | None = None,
                    known: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Ensemble (member, T, C, H, W) in physical units from coarse fields (T, C, h, w); the steps
    are in the module docstring, the arguments in `Downscaler.sample`."""
    dev = torch.device(opts.device or "cpu")
    nets, process = networks(bundle.model.to(dev).eval()), bundle.process()
    prep = prepare(bundle, coarse, times, opts.coarse_gaps, known)
    out = np.empty((opts.members, *prep.b.shape), dtype=np.float32)
    groups = noise_groups(opts.members, prep.coarse.shape[0], opts.batch_size, opts.seed, opts.time_seeds, dev)
    for gen, chunk in groups:
        for n, part in by_network(chunk, len(nets)):
            ts = [t for _, t in part]
            x = draw(nets[n], process, prep, ts, gen, opts, dev, mask)
            phys = to_physical(bundle, x, prep, ts, opts.conserve, inpainting=known is not None)
            for j, (k, t) in enumerate(part):
                out[k, t] = phys[j]
    return finish(bundle, out, known, mask)


def by_network(chunk: list[tuple[int, int]], n_nets: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """(network, jobs) pairs of a batch of (member, time) jobs: member k goes to network k mod N
    (`NetworkEnsemble`), in the batch's order; one pair holding the whole batch for one network."""
    parts = [(n, [job for job in chunk if job[0] % n_nets == n]) for n in range(n_nets)]
    return [(n, jobs) for n, jobs in parts if jobs]
