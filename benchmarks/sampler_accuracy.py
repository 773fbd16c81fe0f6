"""Accuracy per network evaluation: core samplers against diffusers and MONAI schedulers.

Data with an exact denoiser: Gaussian mixtures in 2-D (8 components on a ring) and 64-D (4 components),
`core.analytic.GaussianMixture`. Every contender is driven by the same function, the exact posterior mean
`x0_hat(x, alpha, sigma) = E[x_0 | alpha x_0 + sigma eps = x]`, turned into the `eps` prediction that each
library expects at the noise level its own timestep convention names:

- core: `t` in [0, 1], `alpha(t), sigma(t)` of the schedule;
- diffusers DDPM / DDIM / DPMSolverMultistep (dpmsolver++, order 2) and MONAI DDPM / DDIM: a discrete
  timestep `k` in 0..999 with `alphabar_k = prod_{j <= k} (1 - beta_j)`; all are built from
  `trained_betas = schedule.betas(1000)`, so `k` is the core's `t = (k + 1) / 1000` of the same process;
- diffusers EulerDiscrete / HeunDiscrete: the model sees `x / sqrt(1 + s^2)` at
  `s = sigma / alpha` interpolated linearly in `k`, which is `alpha = 1 / sqrt(1 + s^2)`, `sigma = s alpha`.

Distances to the true law, on `n` generated points against `n` fresh true points: sliced Wasserstein-2
(`L` random directions, exact 1-D W2 by sorting) and the MMD (Gaussian kernel, bandwidth the median
pairwise distance of the reference; biased V-statistic, so the floor is positive). The Monte Carlo noise
floor is the same distance between two independent true samples of size `n` (mean of 3 draws): below it a
sampler's error cannot be told apart from a perfect one's.

Settings shared by every peer: `clip_sample=False` (clipping x0 to [-1, 1] would cut the data),
`prediction_type="epsilon"`, `timestep_spacing="trailing"` in diffusers (starts at k = 999; diffusers'
default "leading" starts DDPM/DDIM at k = 1000 - 1000/N, a prior mismatch of its own). MONAI's schedulers
have no such option and are run as they come.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks import _common as C
from sciffusion.core import DiffusionProcess, GaussianMixture, get_schedule, sample
from sciffusion.core.atomic import atomic_write

NFES = (5, 10, 20, 50, 100, 1000)
CORE = ("default", "ddpm", "ddim", "euler_maruyama", "heun", "dpmpp_2m", "unipc", "heun_uniform",
        "dpmpp_2m_uniform")
# `default`: `sample()` without `method=` or `grid=` (what a new user gets);
# `<method>_uniform`: the core sampler on the uniform-in-t grid instead of its default grid
DIFFUSERS = ("diffusers_ddpm", "diffusers_ddim", "diffusers_dpmpp_2m", "diffusers_unipc", "diffusers_euler",
             "diffusers_heun")
MONAI = ("monai_ddpm", "monai_ddim")
MULTISTEP = ("diffusers_unipc", "diffusers_dpmpp_2m")
# Which peers do the same job as each core sampler (for the matched-pair ratios).
MATCH = {
    "default": DIFFUSERS + MONAI,
    "unipc": ("diffusers_unipc",),
    "ddpm": ("diffusers_ddpm", "monai_ddpm"),
    "ddim": ("diffusers_ddim", "diffusers_euler", "monai_ddim"),  # DDIM is Euler on dx~/dsigma~ = eps
    "euler_maruyama": ("diffusers_ddpm", "monai_ddpm"),  # first-order stochastic
    "heun": ("diffusers_heun",),
    "dpmpp_2m": ("diffusers_dpmpp_2m",),
    "heun_uniform": ("diffusers_heun",),
    "dpmpp_2m_uniform": ("diffusers_dpmpp_2m",),
}
T_TRAIN = 1000
SEEDS, SEEDED_UP_TO = 3, 20  # few-step budgets, where the contenders are close, average three seeds


# ----- data ----------------------------------------------------------------------------------------
def mixture(dim: int, seed: int = 0) -> GaussianMixture:
    """2-D: 8 equal components on a ring of radius 2, std 0.25. Otherwise 4 components with means of norm
    about 2 and per-coordinate standard deviations in [0.3, 1]."""
    g = torch.Generator().manual_seed(seed)
    if dim == 2:
        ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
        return GaussianMixture(torch.ones(8), means, torch.full((8, 2), 0.25, dtype=torch.float64))
    means = torch.randn(4, dim, generator=g, dtype=torch.float64) * (2.0 / math.sqrt(dim))
    stds = 0.3 + 0.7 * torch.rand(4, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.4, 0.3, 0.2, 0.1]), means, stds)


# ----- metrics -------------------------------------------------------------------------------------
def sliced_w2(x: Tensor, y: Tensor, directions: Tensor) -> float:
    """`SW2(x, y) = sqrt(mean_l W2^2(<x, u_l>, <y, u_l>))`; 1-D W2 between equal-size samples by sorting."""
    px, _ = torch.sort(x.double() @ directions.T, dim=0)
    py, _ = torch.sort(y.double() @ directions.T, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd(x: Tensor, y: Tensor, bandwidth: float) -> float:
    """Biased MMD with `k(a, b) = exp(-|a - b|^2 / (2 h^2))`: `sqrt(mean k(x,x) + mean k(y,y) - 2 mean k(x,y))`."""
    x, y = x.double(), y.double()

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2)).mean()

    return float(torch.clamp(k(x, x) + k(y, y) - 2 * k(x, y), min=0).sqrt())


@dataclass
class Judge:
    """Reference sample, projection directions, kernel bandwidth and the noise floor of both distances."""

    ref: Tensor
    directions: Tensor
    bandwidth: float
    floor_sw2: float
    floor_mmd: float
    floor_sw2_range: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def build(cls, data: GaussianMixture, n: int, n_dirs: int, seed: int) -> Judge:
        g = torch.Generator().manual_seed(seed)
        ref = data.sample(n, g)
        d = torch.randn(n_dirs, data.dim, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True)
        sub = ref[:1000]
        bw = float(torch.cdist(sub, sub).median())
        j = cls(ref, d, bw, 0.0, 0.0)
        draws = [data.sample(n, g) for _ in range(3)]
        sws = [sliced_w2(z, ref, d) for z in draws]
        j.floor_sw2, j.floor_sw2_range = float(np.mean(sws)), (min(sws), max(sws))
        j.floor_mmd = float(np.mean([mmd(z, ref, bw) for z in draws]))
        return j

    def __call__(self, x: Tensor) -> tuple[float, float]:
        if not bool(torch.isfinite(x).all()):
            return math.inf, math.inf
        return sliced_w2(x, self.ref, self.directions), mmd(x, self.ref, self.bandwidth)


# ----- the one denoiser, in each library's convention --------------------------------------------
class Counted:
    """Counts calls of the exact denoiser (network evaluations)."""

    def __init__(self) -> None:
        self.calls = 0


def core_model(data: GaussianMixture, proc: DiffusionProcess, counter: Counted) -> Callable:
    """`model(x_t, t)` for `core.sample`: the exact `eps` at `alpha(t), sigma(t)`."""
    exact = data.denoiser(proc)

    def model(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        counter.calls += 1
        return exact(x, t)

    return model


def eps_at(data: GaussianMixture, x: Tensor, alpha: float, sigma: float) -> Tensor:
    """`eps_hat = (x - alpha x0_hat) / sigma` with the exact posterior mean (float64 inside)."""
    b = x.shape[0]
    a = torch.full((b,), alpha, dtype=torch.float64)
    s = torch.full((b,), sigma, dtype=torch.float64)
    x0 = data.posterior_mean(x.double(), a, s)
    return ((x.double() - alpha * x0) / sigma).to(x.dtype)


class DiscreteTable:
    """`alphabar_k` (k = 0..999) of the discrete process built from `schedule.betas(1000)`, in float64,
    and the Karras noise level `s_k = sqrt((1 - alphabar_k) / alphabar_k)` that Euler/Heun interpolate."""

    def __init__(self, schedule_name: str) -> None:
        sch = get_schedule(schedule_name)
        self.betas = sch.betas(T_TRAIN)
        abar = sch.alphas_cumprod(T_TRAIN)
        self.abar = (abar[1:] / abar[0]).numpy()
        self.s = np.sqrt((1 - self.abar) / self.abar)

    def vp(self, k: float) -> tuple[float, float]:
        """`(alpha, sigma)` at a (possibly fractional) timestep `k`."""
        s = float(np.interp(float(k), np.arange(T_TRAIN), self.s))
        a = 1.0 / math.sqrt(1.0 + s * s)
        return a, s * a


# ----- the peers ---------------------------------------------------------------------------------
def monai_schedule_name(schedule_name: str) -> str:
    """Register `schedule.betas(1000)` in MONAI's `NoiseSchedules` store once; return its name there."""
    from monai.networks.schedulers import NoiseSchedules

    name = f"sciffusion_{schedule_name}"
    if name not in NoiseSchedules:
        betas = get_schedule(schedule_name).betas(T_TRAIN).float()

        @NoiseSchedules.add_def(name, f"sciffusion {schedule_name} schedule, betas(1000)")
        def _betas(num_train_timesteps: int) -> Tensor:
            if num_train_timesteps != T_TRAIN:
                raise ValueError(f"{name} is tabulated for {T_TRAIN} steps, got {num_train_timesteps}")
            return betas.clone()

    return name


def peer_scheduler(name: str, schedule_name: str, steps: int):
    """A diffusers or MONAI scheduler on the shared process, with `set_timesteps(steps)` done."""
    if name.startswith("monai"):
        from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

        cls = DDPMScheduler if name == "monai_ddpm" else DDIMScheduler
        sch = cls(num_train_timesteps=T_TRAIN, schedule=monai_schedule_name(schedule_name), clip_sample=False,
                  prediction_type="epsilon")
        sch.set_timesteps(steps)
        return sch
    import diffusers

    betas = get_schedule(schedule_name).betas(T_TRAIN).numpy().astype(np.float32)
    own = dict(num_train_timesteps=T_TRAIN, trained_betas=betas, prediction_type="epsilon")
    common = dict(own, timestep_spacing="trailing")
    if name == "diffusers_ddpm":
        sch = diffusers.DDPMScheduler(clip_sample=False, **common)
    elif name == "diffusers_ddim":
        sch = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    elif name == "diffusers_dpmpp_2m":
        sch = diffusers.DPMSolverMultistepScheduler(**own)  # its defaults: dpmsolver++, order 2, linspace
    elif name == "diffusers_unipc":
        sch = diffusers.UniPCMultistepScheduler(**own)  # its defaults: bh2, order 2, corrector, linspace
    elif name == "diffusers_euler":
        sch = diffusers.EulerDiscreteScheduler(**common)
    elif name == "diffusers_heun":
        sch = diffusers.HeunDiscreteScheduler(**common)
    else:
        raise ValueError(f"unknown peer {name!r}")
    sch.set_timesteps(steps)
    return sch


def run_peer(
    name: str,
    sch,
    eps_fn: Callable[[Tensor, float], Tensor],
    shape: tuple[int, ...],
    g: torch.Generator,
    device: torch.device | None = None,
) -> Tensor:
    """The sampling loop each library documents: `x_T ~ N(0, init_noise_sigma^2)`, then for every timestep
    `eps = model(scale_model_input(x), k)` and `x = step(eps, k, x)`."""
    if name.startswith("monai"):
        x = torch.randn(shape, generator=g, device=device)
        for k in sch.timesteps:
            eps = eps_fn(x, float(k))
            if name == "monai_ddim":
                x, _ = sch.step(eps, int(k), x, eta=0.0, generator=g)
            else:
                x, _ = sch.step(eps, int(k), x, generator=g)
        return x
    x = torch.randn(shape, generator=g, device=device) * sch.init_noise_sigma
    for k in sch.timesteps:
        eps = eps_fn(sch.scale_model_input(x, k), float(k))
        kw = {"generator": g} if name == "diffusers_ddpm" else {}
        x = sch.step(eps, k, x, **kw).prev_sample
    return x


def _core_method(name: str) -> dict:
    """`sample` keywords of a core contender name (`dpmpp_2m_uniform` -> method `dpmpp_2m`, grid `uniform`;
    `default` -> none)."""
    if name == "default":
        return {}
    if name.endswith("_uniform"):
        return {"method": name[: -len("_uniform")], "grid": "uniform"}
    return {"method": name}


def _core_calls(name: str, schedule_name: str, steps: int) -> int:
    """Evaluations `core.sample` makes with `steps` steps (counted on a 1-point dummy run)."""
    counter = Counted()

    def model(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        counter.calls += 1
        return torch.zeros_like(x)

    sample(model, DiffusionProcess(schedule_name, prediction="eps"), (1, 1), steps=steps, progress=False,
           **_core_method(name))
    return counter.calls


def steps_for(method: str, nfe: int, schedule_name: str = "cosine") -> int:
    """Most solver steps whose evaluations fit in a budget of `nfe`. Diffusers' Heun spends `2N - 1`;
    the core's Heun takes a first-order step (one evaluation) where `sigma / alpha` falls more than
    tenfold and on the last step, so its count is measured."""
    if method == "diffusers_heun":
        return max(1, (nfe + 1) // 2)
    if not method.startswith("heun"):
        return nfe
    lo, hi = 1, nfe  # calls(steps) is non-decreasing in steps; the largest steps with calls <= nfe
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _core_calls(method, schedule_name, mid) <= nfe:
            lo = mid
        else:
            hi = mid - 1
    return lo


def run_one(
    method: str, data: GaussianMixture, schedule_name: str, table: DiscreteTable, nfe: int, n: int, seed: int
) -> tuple[Tensor, int]:
    """Samples of one contender at one budget, and the evaluations it actually made."""
    counter = Counted()
    g = torch.Generator().manual_seed(seed)
    steps = steps_for(method, nfe, schedule_name)
    if method in CORE:
        proc = DiffusionProcess(schedule_name, prediction="eps")
        x = sample(core_model(data, proc, counter), proc, (n, data.dim), steps=steps, generator=g,
                   progress=False, **_core_method(method))
        return x, counter.calls

    def eps_fn(x: Tensor, k: float) -> Tensor:
        counter.calls += 1
        a, s = table.vp(k)
        return eps_at(data, x, a, s)

    sch = peer_scheduler(method, schedule_name, steps)
    return run_peer(method, sch, eps_fn, (n, data.dim), g), counter.calls


# ----- the run -----------------------------------------------------------------------------------
@dataclass
class Config:
    dim: int
    schedule: str
    n: int
    nfes: tuple[int, ...]
    seeds: int = 1  # sampling seeds averaged at budgets up to SEEDED_UP_TO evaluations

    @property
    def label(self) -> str:
        return f"{self.dim}-D, {self.schedule}"


def configs(quick: bool, full: bool) -> list[Config]:
    """What the run covers. The default fits in a few CPU minutes: 1000 evaluations only in 2-D."""
    if quick:
        return [Config(2, "cosine", 200, (5,))]
    big = NFES if full else NFES[:-1]
    return [
        Config(2, "cosine", 2000, NFES, SEEDS),
        Config(2, "linear", 2000, NFES, SEEDS),
        Config(64, "cosine", 500, big, SEEDS),
        Config(64, "linear", 500, big, SEEDS),
    ]


def measure(cfg: Config, methods: tuple[str, ...], seed: int = 0) -> tuple[Judge, dict]:
    """`results[method][nfe] = (sw2, mmd, evaluations, seconds)` for one configuration; SW2 and MMD are means
    over `cfg.seeds` sampling seeds (every contender gets the same starting noise per seed) at budgets up to
    `SEEDED_UP_TO`, one seed above."""
    data = mixture(cfg.dim, seed)
    judge = Judge.build(data, cfg.n, n_dirs=64 if cfg.dim == 2 else 256, seed=seed + 1)
    table = DiscreteTable(cfg.schedule)
    results: dict[str, dict[int, tuple[float, float, int, float]]] = {m: {} for m in methods}
    for nfe in cfg.nfes:
        seeds = range(seed + 2, seed + 2 + (cfg.seeds if nfe <= SEEDED_UP_TO else 1))
        for m in methods:
            t0 = time.perf_counter()
            scores = []
            for s in seeds:
                x, calls = run_one(m, data, cfg.schedule, table, nfe, cfg.n, s)
                scores.append(judge(x))
            secs = time.perf_counter() - t0
            results[m][nfe] = (float(np.mean([v[0] for v in scores])), float(np.mean([v[1] for v in scores])),
                               calls, secs)
    return judge, results


def _ratio(a: float, b: float) -> str:
    if not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return "n/a"
    return C.fmt(a / b, 2)


def _at_floor(v: float, floor: float) -> bool:
    return v <= 1.5 * floor


def summarise(all_results: list[tuple[Config, Judge, dict]]) -> tuple[str, list[tuple[str, str]], list[str]]:
    """The headline ratio table, the detailed sections, and the list of places where the core loses."""
    peers = DIFFUSERS + MONAI
    rows, losses = [], []
    for cfg, judge, res in all_results:
        for nfe in cfg.nfes:
            core_best = min(CORE, key=lambda m: res[m][nfe][0])
            peer_best = min(peers, key=lambda m: res[m][nfe][0])
            multi_best = min(MULTISTEP, key=lambda m: res[m][nfe][0])
            d, c, p = res["default"][nfe], res[core_best][nfe], res[peer_best][nfe]
            ms = res[multi_best][nfe]
            floor = _at_floor(d[0], judge.floor_sw2) and _at_floor(p[0], judge.floor_sw2)
            n_seeds = cfg.seeds if nfe <= SEEDED_UP_TO else 1
            rows.append([cfg.label, nfe, n_seeds, C.fmt(d[0]), f"{core_best} {C.fmt(c[0])}",
                         f"{peer_best} {C.fmt(p[0])}", _ratio(d[0], p[0]) + (" (floor)" if floor else ""),
                         _ratio(d[1], p[1]), f"{multi_best} {C.fmt(ms[0])}", _ratio(d[0], ms[0]),
                         _ratio(c[0], p[0]), C.fmt(judge.floor_sw2)])
            if d[0] > p[0] and not floor:
                losses.append(f"{cfg.label}, {nfe} evaluations: the default `sample()`, SW2 {C.fmt(d[0])} > "
                              f"{peer_best} {C.fmt(p[0])}")
    summary = (
        "The core's default `sample(model, process, shape, steps=N)` (no `method=`, no `grid=`: UniPC on the "
        "`angle` grid) against the best peer (diffusers or MONAI, UniPC and DPM-Solver++ with their own "
        "defaults) at each budget of network evaluations; ratio = core error / peer error (below 1: the core "
        "is more accurate). \"best multistep peer\": the better of diffusers' UniPC and DPM-Solver++ alone "
        "(deterministic, like the default). \"best core\" is the best of every core sampler and grid here. SW2 = sliced "
        "Wasserstein-2, MMD = biased Gaussian-kernel MMD, both means over the seeds (sampling noise; the same "
        "starting noise for every contender per seed); floor = mean SW2 between two true samples of the same "
        "size (Monte Carlo noise floor); \"(floor)\": both within 1.5x of it, the ratio is noise.\n\n"
        + C.table(["data, schedule", "evaluations", "seeds", "core default (SW2)", "best core (SW2)",
                   "best peer (SW2)", "SW2 ratio default", "MMD ratio default", "best multistep peer (SW2)",
                   "SW2 ratio default / multistep", "SW2 ratio best core",
                   "SW2 floor"], rows)
    )
    sections: list[tuple[str, str]] = []
    pair_rows = []
    for cfg, judge, res in all_results:
        for m in CORE:
            cells = []
            for nfe in cfg.nfes:
                best = min(MATCH[m], key=lambda p: res[p][nfe][0])
                c, p = res[m][nfe][0], res[best][nfe][0]
                mark = "=" if _at_floor(c, judge.floor_sw2) and _at_floor(p, judge.floor_sw2) else ""
                cells.append(_ratio(c, p) + mark)
                if c > 1.1 * p and not mark:
                    losses.append(f"{cfg.label}, {nfe} evaluations: core {m} SW2 {C.fmt(c)} > {best} {C.fmt(p)}")
            pair_rows.append([cfg.label, m, "/".join(MATCH[m]), *cells])
    nfe_heads = [str(k) for k in all_results[0][0].nfes]
    for cfg, _, _ in all_results:
        if len(cfg.nfes) > len(nfe_heads):
            nfe_heads = [str(k) for k in cfg.nfes]
    pair_rows = [r + [""] * (3 + len(nfe_heads) - len(r)) for r in pair_rows]
    sections.append((
        "Matched pairs",
        "SW2 of each core sampler over the best of the peers that do the same job, per budget "
        "(`=`: both within 1.5x of the noise floor, the ratio is noise).\n\n"
        + C.table(["data, schedule", "core", "peers", *nfe_heads], pair_rows),
    ))
    for cfg, judge, res in all_results:
        methods = list(res)
        head = ["sampler", *[str(k) for k in cfg.nfes]]
        sw_rows = [[m, *[f"{C.fmt(res[m][k][0])} ({res[m][k][2]})" for k in cfg.nfes]] for m in methods]
        mm_rows = [[m, *[C.fmt(res[m][k][1]) for k in cfg.nfes]] for m in methods]
        secs = sum(v[3] for r in res.values() for v in r.values())
        sections.append((
            f"{cfg.label}: n = {cfg.n} samples",
            f"SW2 (actual network evaluations in brackets); noise floor {C.fmt(judge.floor_sw2)} (three draws: "
            f"{C.fmt(judge.floor_sw2_range[0])} to {C.fmt(judge.floor_sw2_range[1])}).\n\n"
            + C.table(head, sw_rows)
            + f"\n\nMMD (kernel bandwidth {C.fmt(judge.bandwidth)}); noise floor {C.fmt(judge.floor_mmd)}.\n\n"
            + C.table(head, mm_rows)
            + f"\n\nSampling time for this configuration: {secs:.0f} s.",
        ))
    return summary, sections, losses


def plot(all_results: list[tuple[Config, Judge, dict]], path: Path) -> None:
    """Error (SW2) against network evaluations, one panel per configuration, log-log."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 2 if len(all_results) > 1 else 1
    rows = math.ceil(len(all_results) / cols)
    fig = Figure(figsize=(6.0 * cols, 4.2 * rows + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    names = CORE + DIFFUSERS + MONAI
    from matplotlib import colormaps

    colours = {m: colormaps["tab20"](i % 20) for i, m in enumerate(names)}
    for i, (cfg, judge, res) in enumerate(all_results):
        ax = fig.add_subplot(rows, cols, i + 1)
        for m, r in res.items():
            ks = sorted(r)
            style = "-" if m in CORE else ("--" if m in DIFFUSERS else ":")
            ax.plot([r[k][2] for k in ks], [r[k][0] for k in ks], style, marker="o", ms=3, lw=1.2, label=m,
                    color=colours.get(m))
        ax.axhline(judge.floor_sw2, color="grey", lw=0.8, ls="-.", label="noise floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(cfg.label)
        ax.set_xlabel("network evaluations")
        ax.set_ylabel("sliced W2 to the true law")
        ax.grid(alpha=0.3, which="both")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=8, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08 if rows > 1 else 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, fig.savefig)


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="also 1000 evaluations in 64-D (about 4x longer)")
    args = C.parse(p, argv)
    started = time.perf_counter()
    C.setup(args.threads)
    methods = CORE + DIFFUSERS + MONAI
    all_results = []
    for cfg in configs(args.quick, args.full):
        judge, res = measure(cfg, methods)
        all_results.append((cfg, judge, res))
    summary, sections, losses = summarise(all_results)
    why = (
        "Where the core loses (more than 10 % above the peer, outside the noise floor):\n\n"
        + ("\n".join(f"- {s}" for s in losses) if losses else "- nowhere in this run")
        + "\n\n" + NOTES
    )
    sections.insert(0, ("Where the core loses, and why", why))
    if not args.quick:
        from benchmarks.sampler_validation import heldout_section

        sections.append(("Held-out mixtures", heldout_section()))
    writes = not args.no_write and not (args.quick and Path(args.out).resolve() == C.DOCS.resolve())
    if writes:
        plot(all_results, Path(args.out) / "sampler_accuracy.png")
        sections.append(("Plot", "![SW2 against network evaluations](sampler_accuracy.png)"))
    return C.report("sampler_accuracy", "Sampler accuracy per network evaluation", summary, sections, args,
                    started)


NOTES = """Why, and how to read the numbers:

- All contenders call the same exact denoiser; only the integrators and their time grids differ. Budgets up
  to 20 evaluations average three sampling seeds (the same starting noise for every contender per seed),
  larger budgets use one; at the noise floor the ordering is chance. Deterministic samplers started from the
  same noise converge to the same point set, so their common limit is one draw of the floor (it can sit above
  the floor's mean).
- The default `sample()` is UniPC (order-2 predictor, corrector reusing the next evaluation, `B(h) =
  e^{-h} - 1`, lower-order final steps below 15 steps) on the `angle` grid: equal steps in
  `atan(sigma / alpha)^(1/1.2)`. With power 1 that grid is the cosine schedule's uniform-in-`t` grid, which
  is why diffusers' UniPC (timesteps uniform in `k`) does well on cosine; on the linear schedule uniform `k`
  ends with a jump from `sigma / alpha = 0.72` (5 steps) to 0, and the angle grid ends at 0.3. The power 1.2
  moves steps toward small noise, where the modes sharpen.
- `eps` models start at `sigma / alpha = 80` (`core.samplers.default_t_max`; at `t = 1` on the clipped cosine
  schedule an `eps` error is multiplied by 2e4), the peers at timestep 999 (2e4 on cosine, 150 on linear). The
  first evaluation also moves the start to the prior's mean `alpha x0_hat`, so the later start costs no prior
  mismatch; the first step reuses that evaluation.
- `heun` and `dpmpp_2m` keep their log-SNR grid over `sigma / alpha` in [0.002, 80], which spends a small
  budget on noise levels far below the data's scale: on `grid="uniform"` (`*_uniform` rows) they match
  diffusers' DPM-Solver++ and Heun. `euler_maruyama` is the older name of `ddpm_beta` (DDPM with variance
  beta).
- diffusers' `HeunDiscreteScheduler` takes a second-order first step from `sigma / alpha` = 2e4 on the
  clipped cosine schedule and blows up (SW2 in the hundreds) until about 100 evaluations.
- MONAI's `DDPMScheduler.step` always steps from `k` to `k - 1` whatever `set_timesteps` chose, so with fewer
  than 1000 steps it leaves most of the noise in. MONAI's `DDIMScheduler` steps by `1000 // N` while its
  timesteps are spaced by `999 / (N - 1)`, which mis-states the noise level at every step.
- Heun spends two evaluations per step except on first-order steps; its budget is matched to at most the
  stated count (the actual counts are in brackets in the detailed tables and on the plot's x axis).
"""


if __name__ == "__main__":
    main()
