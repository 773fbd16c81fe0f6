"""Joint diffusion of positions and atom types for batches of molecules of different sizes.

Each node carries z = [x (3), h (F)], h = [type_scale * onehot(type), charge_scale * charge]
(EDM, Hoogeboom et al. 2022: types scaled by 1/4, charges by 1/10). Positions diffuse in the
zero-centre-of-mass subspace, types either

- "continuous": the one-hot columns diffuse with the same Gaussian process (EDM), read out by
  argmax at t = 0; or
- "categorical": a discrete process over the K element classes (core.categorical); the model
  predicts p(type_0 | z_t) and the reverse step is the posterior averaged over that prediction.

Time is continuous, t in [0, 1], drawn per molecule and broadcast to its nodes by the batch vector.
The Gaussian part is core's DiffusionProcess on the node matrix, with the network predicting eps
(EDM) or x0 (the EGNN's output coordinates themselves; the loss is then the x0 error weighted by
min(SNR + 1, cap), i.e. the v-loss weighting capped at low noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.config import JsonConfig
from sciffusion.core.diffusion.categorical import CategoricalProcess
from sciffusion.core.diffusion.process import DiffusionProcess
from sciffusion.core.diffusion.samplers import sample as core_sample
from sciffusion.core.diffusion.schedules import Schedule, get_schedule
from sciffusion.plugins import core_sampler

from .geometry import GraphLayout, centered_noise, graph_layout, graph_sizes, remove_mean
from .model import EGNN, EGNNConfig


def edm_polynomial_schedule(power: float = 2.0, precision: float = 1e-5) -> Schedule:
    """EDM's noise schedule: alphabar(t) = (1 - 2 s) (1 - t^power)^2 + s, s = `precision`.

    lambda(t) = log(alphabar) - log(1 - alphabar) (EDM, appendix B; there on the grid t = i / T).
    """

    def log_snr(t: Tensor) -> Tensor:
        abar = (1 - 2 * precision) * (1 - t**power) ** 2 + precision
        return torch.log(abar) - torch.log1p(-abar)

    return Schedule("edm_polynomial", log_snr, (("power", power), ("precision", precision)))


SCHEDULES = {"edm_polynomial": edm_polynomial_schedule}  # this plugin's own, beside core's registry


def molecule_schedule(name: str) -> Schedule:
    """A schedule by name: this plugin's `SCHEDULES` first, then core's registry (`get_schedule`).

    The plugin's schedules are looked up here rather than registered in core, so importing the
    plugin leaves core's registry as it was.
    """
    return SCHEDULES[name]() if name in SCHEDULES else get_schedule(name)


@dataclass(frozen=True)
class MolDiffusionConfig(JsonConfig):
    """Everything needed to rebuild a model from its checkpoint (saved as JSON beside it)."""

    elements: tuple[str, ...] = ("H", "C", "N", "O", "F")
    type_mode: str = "continuous"           # "continuous" (EDM) | "categorical"
    schedule: str = "edm_polynomial"
    type_scale: float = 0.25
    charge_scale: float = 0.1
    categorical_transition: str = "marginal"  # "uniform" | "marginal" (categorical mode)
    ce_weight: float = 1.0                  # weight of the type cross-entropy (categorical mode)
    prediction: str = "eps"                 # "eps" (EDM) | "x0"
    snr_cap: float = 200.0                  # x0 prediction: loss weight min(SNR + 1, snr_cap)
    max_atoms: int = 29
    egnn: EGNNConfig = field(default_factory=EGNNConfig)

    def __post_init__(self):
        if self.type_mode not in ("continuous", "categorical"):
            raise ValueError(f"type_mode must be 'continuous' or 'categorical', got {self.type_mode!r}")

    @property
    def n_types(self) -> int:
        return len(self.elements)


class MolDiffusion(torch.nn.Module):
    """EGNN denoiser + processes; the unit that is trained, saved and sampled.

    Buffers: `size_hist` (max_atoms + 1,) training counts of molecules by size, and
    `type_marginal` (K,) the training frequency of each element.
    """

    def __init__(self, cfg: MolDiffusionConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.n_types
        self.net = EGNN(cfg.egnn, n_in=k + 1, n_out=k + 1)
        self.process = DiffusionProcess(molecule_schedule(cfg.schedule), prediction=cfg.prediction)
        self.register_buffer("size_hist", torch.ones(cfg.max_atoms + 1))
        self.register_buffer("type_marginal", torch.full((k,), 1.0 / k))

    # ----- layout ---------------------------------------------------------------------------
    def categorical(self) -> CategoricalProcess:
        """The discrete process of the types (categorical mode)."""
        kind = self.cfg.categorical_transition
        return CategoricalProcess(self.process.schedule, self.cfg.n_types, kind,
                                  marginal=self.type_marginal if kind == "marginal" else None)

    def encode(self, z: Tensor, charges: Tensor) -> Tensor:
        """Node features h_0 = [type_scale onehot(z), charge_scale charge], (N, K + 1)."""
        onehot = torch.nn.functional.one_hot(z, self.cfg.n_types).float()
        return torch.cat([onehot * self.cfg.type_scale, charges[:, None].float() * self.cfg.charge_scale], 1)

    def denoise(self, x: Tensor, h: Tensor, t_node: Tensor, batch: Tensor | GraphLayout,
                edge_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Network output at (x_t, h_t, t): (eps_x_hat, out_h) where out_h is eps_h_hat (continuous)
        or [type logits (K), eps_charge_hat] (categorical). `batch` is the batch vector or, inside a
        loop, the batch's `GraphLayout` (no host sync)."""
        return self.net(x, h, t_node, batch, edge_index, residual=self.cfg.prediction == "eps")

    def _weight(self, t_node: Tensor) -> Tensor:
        """Per-node loss weight on squared errors of the model's prediction type: 1 for eps; for x0,
        min(SNR + 1, snr_cap), SNR = alpha^2 / sigma^2 (the eps loss would be SNR * x0 error)."""
        if self.cfg.prediction == "eps":
            return torch.ones_like(t_node)
        snr = torch.exp(self.process.log_snr(t_node))
        return torch.clamp(snr + 1, max=self.cfg.snr_cap)

    @staticmethod
    def layout(batch) -> GraphLayout:
        """The `GraphLayout` of a PyG batch: sizes from its `ptr` offsets when it has them (no host
        sync), else counted from the batch vector; built once per batch, before the network runs."""
        ptr = getattr(batch, "ptr", None)
        sizes = ptr[1:] - ptr[:-1] if ptr is not None else graph_sizes(batch.batch, int(batch.num_graphs))
        return graph_layout(batch.batch, sizes)

    # ----- training loss ----------------------------------------------------------------------
    def loss(self, batch, generator: torch.Generator | None = None) -> Tensor:
        """Mean over molecules of the per-molecule denoising loss.

        ::

            continuous:  L = w |y - y_hat|^2 / (n (3 + F))  over x and h (EDM's L2 objective for eps)
            categorical: L = w (|y_x - y_x_hat|^2 / 3 + |y_q - y_q_hat|^2) / n
                             + ce_weight * CE(type_0, p_hat(type_0 | z_t)) / n

        y is eps (w = 1) or x0 (w = min(SNR + 1, snr_cap)), by `prediction`.
        """
        layout = self.layout(batch)
        b = layout.batch
        x0 = remove_mean(batch.pos.float(), layout)
        g = layout.num_graphs
        dev = x0.device
        t = rng.rand((g,), generator, device=dev)
        t_node = t[b]
        eps_x = centered_noise(x0.shape, layout, generator=generator, device=dev)
        x_t, _ = self.process.add_noise(x0, t_node, noise=eps_x)
        sizes = layout.sizes.float()
        h0 = self.encode(batch.z, batch.charges)
        if self.cfg.type_mode == "continuous":
            h_t, eps_h = self.process.add_noise(h0, t_node, generator=generator)
            ex, out = self.denoise(x_t, h_t, t_node, layout)
            tx, th = (eps_x, eps_h) if self.cfg.prediction == "eps" else (x0, h0)
            err = (((ex - tx) ** 2).sum(1) + ((out - th) ** 2).sum(1)) * self._weight(t_node)
            per_mol = torch.zeros(g, device=dev).index_add_(0, b, err) / (sizes * (3 + h0.shape[1]))
            return per_mol.mean()
        cat = self.categorical()
        q_t, eps_q = self.process.add_noise(h0[:, -1:], t_node, generator=generator)
        z_t = cat.sample_xt(batch.z, t_node, generator=generator)
        h_t = torch.cat([torch.nn.functional.one_hot(z_t, self.cfg.n_types).float() * self.cfg.type_scale,
                         q_t], 1)
        ex, out = self.denoise(x_t, h_t, t_node, layout)
        logits, eq = out[:, :-1], out[:, -1:]
        tx, tq = (eps_x, eps_q) if self.cfg.prediction == "eps" else (x0, h0[:, -1:])
        err = (((ex - tx) ** 2).sum(1) / 3 + ((eq - tq) ** 2).sum(1)) * self._weight(t_node)
        err = err + self.cfg.ce_weight * torch.nn.functional.cross_entropy(logits, batch.z, reduction="none")
        per_mol = torch.zeros(g, device=dev).index_add_(0, b, err) / sizes
        return per_mol.mean()

    # ----- sampling -------------------------------------------------------------------------
    def sample_sizes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Numbers of atoms drawn from the training histogram, (n,) long."""
        return rng.multinomial(self.size_hist.float(), n, generator=generator)

    @torch.no_grad()
    def sample(self, sizes: Tensor, steps: int = 500, method: str | None = "ddpm",
               generator: torch.Generator | None = None, device: str | torch.device | None = None,
               progress: bool = False) -> dict[str, Tensor]:
        """Sample molecules with the given atom counts (sizes (G,)), all in one batch.

        continuous: `core.sample` with the sampler `method` (default ancestral `ddpm`, which gave more
        stable and valid molecules than the core's deterministic default at 50 to 200 steps; None: the
        core's default) on the node matrix z = [x, h] (N, 3 + F), with `project` removing each
        molecule's centre of mass from x after every step; types by argmax of h at t = 0.
        categorical: ancestral steps on the uniform grid t_i = i / steps; positions (and charges)
        from the Gaussian posterior q(z_s | z_t, z0_hat), types from
        p(type_s | type_t) ∝ Q_{t|s}[type_s, type_t] sum_k p_hat(k | z_t) Qbar_s[k, type_s].
        Returns pos (N, 3), z (N,) long, charges (N,) long, batch (N,), sizes (G,).
        """
        device = torch.device(device or next(self.parameters()).device)
        sizes = torch.as_tensor(sizes, dtype=torch.long).cpu()
        if sizes.numel() == 0 or int(sizes.min()) < 1:
            raise ValueError("sizes must be a non-empty list of positive atom counts")
        if int(sizes.max()) > self.cfg.max_atoms:
            raise ValueError(f"requested {int(sizes.max())} atoms, the model allows at most {self.cfg.max_atoms}")
        b = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(device)
        layout = graph_layout(b, sizes)  # once, outside the loop: the steps below never read back
        k = self.cfg.n_types
        if self.cfg.type_mode == "categorical":
            x, h, types = self._sample_categorical(layout, steps, generator, device)
        else:
            def model(zx: Tensor, t: Tensor) -> Tensor:
                ex, eh = self.denoise(zx[:, :3], zx[:, 3:], t, layout)
                return torch.cat([ex, eh], 1)

            def project(zx: Tensor) -> Tensor:
                return torch.cat([remove_mean(zx[:, :3], layout), zx[:, 3:]], 1)

            zx = core_sample(model, self.process, (len(b), 3 + k + 1), method=core_sampler(method),
                             steps=steps, generator=generator, progress=progress, device=device, project=project)
            x, h = zx[:, :3], zx[:, 3:]
            types = h[:, :k].argmax(1)
        charges = torch.round(h[:, -1] / self.cfg.charge_scale).clamp(-3, 3).long()
        return {"pos": x.cpu(), "z": types.cpu(), "charges": charges.cpu(), "batch": b.cpu(), "sizes": sizes}

    def _sample_categorical(self, layout: GraphLayout, steps: int, gen: torch.Generator | None,
                            device: torch.device):
        n, k = len(layout.batch), self.cfg.n_types
        cat = self.categorical()

        def randn(shape):
            return rng.randn(shape, gen, device=device)

        x, h = remove_mean(randn((n, 3)), layout), randn((n, 1))
        z_t = rng.multinomial(cat.prior().float().expand(n, k).to(device), 1, generator=gen).flatten()
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        for i in range(steps):
            t = torch.full((n,), float(grid[i]), device=device)
            s = torch.full((n,), float(grid[i + 1]), device=device)
            h_in = torch.cat([torch.nn.functional.one_hot(z_t, k).float() * self.cfg.type_scale, h], 1)
            ex, out = self.denoise(x, h_in, t, layout)
            zx, eps = torch.cat([x, h], 1), torch.cat([ex, out[:, -1:]], 1)
            z0 = self.process.predict_x0(eps, zx, t)
            if i == steps - 1:
                zx, z_t = z0, out[:, :-1].argmax(1)
            else:
                mean, var = self.process.posterior(z0, zx, s, t)
                noise = randn(zx.shape)
                noise[:, :3] = remove_mean(noise[:, :3], layout)
                zx = mean + var.sqrt()[:, None].float() * noise
                z_t = cat.step(z_t, out[:, :-1], s.double(), t.double(), generator=gen)
            x, h = remove_mean(zx[:, :3], layout), zx[:, 3:]
        return x, h, z_t


def vlb_position_dof(sizes: Tensor) -> Tensor:
    """Degrees of freedom of the zero-CoM position subspace per molecule: (n - 1) * 3.

    Gaussian log-densities of positions use this instead of 3n (EDM, sec. 3.2).
    """
    return (sizes - 1) * 3


def log_normal_zero_com(x: Tensor, batch: Tensor, sigma: float = 1.0) -> Tensor:
    """log N(x; 0, sigma^2 I) on the zero-CoM subspace, per molecule: ``-|x|^2/(2 sigma^2)
    - d/2 log(2 pi sigma^2)``, with d = (n - 1) * 3."""
    sizes = graph_sizes(batch)
    sq = torch.zeros(len(sizes), dtype=x.dtype, device=x.device).index_add_(0, batch, (x * x).sum(1))
    d = vlb_position_dof(sizes).to(x.dtype)
    return -0.5 * sq / sigma**2 - 0.5 * d * math.log(2 * math.pi * sigma**2)
