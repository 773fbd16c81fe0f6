"""Discrete denoising diffusion of molecular graphs (DiGress, Vignac et al. 2023) with property guidance.

Node types X (atom types) and edge types E (no bond, single, double, triple) are noised by
`core.categorical.JointCategoricalProcess` with marginal-preserving transitions
`Q_{t|s} = a I + (1 - a) 1 m^T` (m = the training data's class marginals), the edge field
symmetric (upper triangle noised, mirrored). A `GraphTransformer` predicts the clean graph:

    loss = CE(X_0, p_hat_X(X_t)) + lambda * CE(E_0, p_hat_E(X_t, E_t)),    t ~ U(0, 1],

with node terms averaged over real atoms and edge terms over ordered pairs i != j of real atoms
(lambda = 5, DiGress). Graph properties (RDKit logP by default) enter as normalised values plus
a "given" flag each; in training each property is hidden independently with probability
`cond_drop` (0.1), so one model serves both unconditional and conditional generation. Classifier-free guidance with weight w uses

    log p_w(x_0 | x_t, c) = (1 + w) log p_hat(x_0 | x_t, c) - w log p_hat(x_0 | x_t, {}) + const.

Sampling draws the sizes n (from the training histogram or given), X_1, E_1 from the marginals,
then takes any number of reverse steps x_s ~ sum_k q(x_s | x_t, x_0 = k) p_hat(k | x_t) (DiGress) on the
grid t = u^5, u in equal steps from 1 to 0 (`GraphDiffusion.time_grid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sciffusion.core import rng
from sciffusion.core.config import JsonConfig
from sciffusion.core.diffusion.categorical import CategoricalProcess, JointCategoricalProcess
from sciffusion.core.diffusion.schedules import get_schedule
from sciffusion.core.grids import time_grid as core_time_grid
from sciffusion.core.train.checkpoint import CheckpointError, atomic_torch_save, read_torch_file

from .data import MolInputError
from .graph_data import ATOM_TYPES, BOND_ORDER, BOND_TYPES, PROPERTIES, DenseGraphs, to_dense
from .graph_model import (
    N_GRAPH_FEATURES,
    N_NODE_FEATURES,
    N_SPECTRAL_GRAPH_FEATURES,
    N_SPECTRAL_NODE_FEATURES,
    GraphTransformer,
    TransformerConfig,
    structural_features,
)

MODEL_KIND = "graph"
GRID_POWER = 5.0  # exponent of the sampling grid (`GraphDiffusion.time_grid`)
DEFAULT_STEPS = 40  # reverse steps of `GraphDiffusion.sample` and the pipeline


@dataclass
class GraphDiffusionConfig(JsonConfig):
    """Vocabulary, process and network of a graph diffusion model (saved with its weights)."""

    atom_types: tuple[str, ...] = ATOM_TYPES
    bond_types: tuple[str, ...] = BOND_TYPES
    max_atoms: int = 9
    properties: tuple[str, ...] = ("logp",)
    schedule: str = "cosine"
    edge_weight: float = 5.0
    cond_drop: float = 0.1
    features: bool = True
    spectral: bool = False
    net: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        self.atom_types, self.bond_types = tuple(self.atom_types), tuple(self.bond_types)
        self.properties = tuple(self.properties)
        if isinstance(self.net, dict):
            self.net = TransformerConfig(**self.net)
        unknown = [p for p in self.properties if p not in PROPERTIES]
        if unknown:
            raise ValueError(f"unknown properties {unknown}; known: {sorted(PROPERTIES)}")


class GraphDiffusion(nn.Module):
    """The graph denoiser with its data statistics (class marginals, size histogram, property
    mean/std) as buffers, the categorical process, the training loss, sampling and the NLL."""

    def __init__(self, cfg: GraphDiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kx, ke, p, n = len(cfg.atom_types), len(cfg.bond_types), len(cfg.properties), cfg.max_atoms
        self.register_buffer("node_marginal", torch.full((kx,), 1.0 / kx, dtype=torch.float64))
        self.register_buffer("edge_marginal", torch.full((ke,), 1.0 / ke, dtype=torch.float64))
        self.register_buffer("size_hist", torch.ones(n + 1).index_fill(0, torch.tensor([0]), 0.0))
        self.register_buffer("prop_mean", torch.zeros(p, dtype=torch.float64))
        self.register_buffer("prop_std", torch.ones(p, dtype=torch.float64))
        self.register_buffer("bond_orders", torch.tensor(BOND_ORDER[:ke], dtype=torch.float32))
        nf = (N_NODE_FEATURES + N_SPECTRAL_NODE_FEATURES * cfg.spectral) if cfg.features else 0
        gf = (N_GRAPH_FEATURES + N_SPECTRAL_GRAPH_FEATURES * cfg.spectral) if cfg.features else 0
        self.net = GraphTransformer(cfg.net, kx + nf, ke, 2 + gf + 2 * p, kx, ke)

    # ----- process and statistics -------------------------------------------------------------
    @property
    def process(self) -> JointCategoricalProcess:
        """Marginal transitions for X and E (E symmetric) on the configured schedule."""
        sched = get_schedule(self.cfg.schedule)
        return JointCategoricalProcess(
            {"X": CategoricalProcess(sched, len(self.cfg.atom_types), "marginal", self.node_marginal.cpu()),
             "E": CategoricalProcess(sched, len(self.cfg.bond_types), "marginal", self.edge_marginal.cpu())},
            symmetric=("E",))

    def set_statistics(self, data: Sequence) -> None:
        """Class marginals, size histogram and property mean/std from training graphs (`Data`)."""
        from .graph_data import class_marginals, property_stats, size_histogram

        hist = size_histogram(data, self.cfg.max_atoms)
        if len(hist) > self.cfg.max_atoms + 1:
            raise MolInputError(f"training data has graphs of {len(hist) - 1} atoms, above max_atoms={self.cfg.max_atoms}")
        node, edge = class_marginals(data, len(self.cfg.atom_types), len(self.cfg.bond_types))
        self.size_hist.copy_(hist)
        self.node_marginal.copy_(node.clamp_min(1e-6) / node.clamp_min(1e-6).sum())
        self.edge_marginal.copy_(edge.clamp_min(1e-6) / edge.clamp_min(1e-6).sum())
        if self.cfg.properties:
            mean, std = property_stats(data)
            self.prop_mean.copy_(mean)
            self.prop_std.copy_(std)

    # ----- network ------------------------------------------------------------------------------
    def forward(self, X_t: Tensor, E_t: Tensor, t: Tensor, mask: Tensor, cond: Tensor | None = None,
                cond_given: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits of X_0 (B, N, Kx) and E_0 (B, N, N, Ke) from the noisy graph at time t (B,).

        cond: normalised property values (B, P); cond_given: (B, P) 1 where a property is given.
        """
        kx, ke = len(self.cfg.atom_types), len(self.cfg.bond_types)
        B = X_t.shape[0]
        Xh = nn.functional.one_hot(X_t, kx).float()
        Eh = nn.functional.one_hot(E_t, ke).float()
        n = mask.sum(1, keepdim=True).float() / self.cfg.max_atoms
        ys = [t.float().reshape(B, 1), n]
        if self.cfg.features:
            node_f, graph_f = structural_features(Eh, mask, self.bond_orders, self.cfg.spectral)
            Xh = torch.cat([Xh, node_f], -1)
            ys.append(graph_f)
        p = len(self.cfg.properties)
        if p:
            cond = torch.zeros(B, p, device=X_t.device) if cond is None else cond.float()
            given = torch.zeros(B, p, device=X_t.device) if cond_given is None else cond_given.float()
            ys += [cond * given, given]
        return self.net(Xh, Eh, torch.cat(ys, -1), mask)

    def normalise(self, values: Tensor) -> Tensor:
        """Raw property values (B, P) to the network's scale: (v - mean) / std."""
        return ((values.double() - self.prop_mean) / self.prop_std).float()

    # ----- training -------------------------------------------------------------------------------
    def loss(self, dense: DenseGraphs, generator: torch.Generator | None = None) -> Tensor:
        """CE(X_0) + edge_weight * CE(E_0) at t ~ U(0, 1] with property dropout (module docstring)."""
        B, N = dense.X.shape
        dev = dense.X.device
        t = 1.0 - torch.rand(B, dtype=torch.float64, device=dev, generator=generator)
        mask = self._masks(dense.mask)
        x_t = self.process.sample_xt({"X": dense.X, "E": dense.E}, t, mask, generator)
        given = None
        cond = None
        if self.cfg.properties:
            given = (torch.rand(B, len(self.cfg.properties), device=dev, generator=generator) >= self.cfg.cond_drop)
            cond = self.normalise(dense.y)
        lx, le = self(x_t["X"], x_t["E"], t, dense.mask, cond, given)
        pair = mask["E"] & ~torch.eye(N, dtype=torch.bool, device=dev)
        ce_x = nn.functional.cross_entropy(lx[dense.mask], dense.X[dense.mask])
        ce_e = nn.functional.cross_entropy(le[pair], dense.E[pair])
        return ce_x + self.cfg.edge_weight * ce_e

    @staticmethod
    def _masks(node_mask: Tensor) -> dict[str, Tensor]:
        return {"X": node_mask, "E": node_mask[:, :, None] & node_mask[:, None, :]}

    # ----- sampling ---------------------------------------------------------------------------------
    def sample_sizes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n graph sizes drawn from the training histogram (on the generator's device; returned on the CPU)."""
        return rng.multinomial(self.size_hist.float(), n, generator, replacement=True).cpu()

    def cond_tensors(self, targets: dict[str, float] | None, B: int) -> tuple[Tensor | None, Tensor | None]:
        """Normalised property targets and 'given' flags (B, P) from {property: value}."""
        if not targets:
            return None, None
        unknown = [k for k in targets if k not in self.cfg.properties]
        if unknown:
            raise MolInputError(f"unknown property {unknown[0]!r}: this model knows "
                                f"{', '.join(self.cfg.properties) or 'no properties (it is unconditional)'}")
        raw = torch.zeros(B, len(self.cfg.properties), dtype=torch.float64)
        given = torch.zeros(B, len(self.cfg.properties))
        for k, v in targets.items():
            j = self.cfg.properties.index(k)
            raw[:, j], given[:, j] = float(v), 1.0
        return self.normalise(raw.to(self.prop_mean.device)) * given.to(self.prop_mean.device), \
            given.to(self.prop_mean.device)

    def _logits(self, X, E, t, mask, cond, given, guidance):
        """x_0 logits, with classifier-free guidance when `guidance` is nonzero and a target is given."""
        if cond is None or not guidance:
            return self(X, E, t, mask, cond, given)
        B = X.shape[0]
        lx, le = self(torch.cat([X, X]), torch.cat([E, E]), torch.cat([t, t]), torch.cat([mask, mask]),
                      torch.cat([cond, torch.zeros_like(cond)]), torch.cat([given, torch.zeros_like(given)]))
        mix = lambda z: (1 + guidance) * z[:B].log_softmax(-1) - guidance * z[B:].log_softmax(-1)  # noqa: E731
        return mix(lx), mix(le)

    def time_grid(self, steps: int, power: float = GRID_POWER) -> Tensor:
        """The sampling grid t_i = u_i^power, u_i = 1 - i / steps (core's `power` grid from 1 to 0).

        power = 1 is the uniform grid; power > 1 crowds the steps toward t = 0, in ever finer steps
        down to the last. Each reverse step draws every atom and bond independently given x_t, so
        a long step can change two bonds of one atom at once and break its valence. Near t = 0,
        where the last bonds settle and the denoiser reverts what it takes for leftover noise (the
        posterior's division by Qbar_t[k, x_t] makes that likely even at tiny t), short steps make
        those changes one after another."""
        return core_time_grid(None, steps, "power", power=power)

    @torch.no_grad()
    def sample(self, sizes: Tensor, steps: int = DEFAULT_STEPS, generator: torch.Generator | None = None,
               targets: dict[str, float] | None = None, guidance: float = 0.0,
               progress: bool = False, final: str = "argmax", grid_power: float = GRID_POWER) -> DenseGraphs:
        """Ancestral sampling of len(sizes) graphs on `time_grid(steps, grid_power)`.

        final="sample" draws the last step like the others; final="argmax" returns the most
        probable clean graph argmax p_hat(x_0 | x_{t_1}) instead (the discrete counterpart of
        returning the denoised mean at the end of Gaussian sampling)."""
        if final not in ("sample", "argmax"):
            raise ValueError(f"final must be 'sample' or 'argmax', got {final!r}")
        ts = self.time_grid(steps, grid_power).tolist()
        dev = self.node_marginal.device
        sizes = torch.as_tensor(sizes, dtype=torch.long)
        if len(sizes) and (int(sizes.max()) > self.cfg.max_atoms or int(sizes.min()) < 1):
            raise MolInputError(f"graph sizes must be in 1..{self.cfg.max_atoms}, got {sizes.min()}..{sizes.max()}")
        B, N = len(sizes), self.cfg.max_atoms
        mask = (torch.arange(N)[None, :] < sizes[:, None]).to(dev)
        masks = self._masks(mask)
        proc = self.process
        zeros = {"X": torch.zeros(B, N, dtype=torch.long, device=dev),
                 "E": torch.zeros(B, N, N, dtype=torch.long, device=dev)}
        x = proc.sample_prior(zeros, masks, generator)
        cond, given = self.cond_tensors(targets, B)
        for i in tqdm(range(steps), disable=not progress, leave=False, desc="sampling"):
            t = torch.full((B,), ts[i], dtype=torch.float64, device=dev)
            s = torch.full((B,), ts[i + 1], dtype=torch.float64, device=dev)
            lx, le = self._logits(x["X"], x["E"], t, mask, cond, given, guidance)
            if i == steps - 1 and final == "argmax":
                x = {"X": torch.where(mask, lx.argmax(-1), x["X"]),
                     "E": torch.where(masks["E"] & ~torch.eye(N, dtype=torch.bool, device=dev), le.argmax(-1), x["E"])}
                break
            x = proc.step(x, {"X": lx, "E": le}, s, t, masks, generator)
        return DenseGraphs(x["X"], x["E"], mask, torch.zeros(B, 0))

    # ----- likelihood -----------------------------------------------------------------------------
    @torch.no_grad()
    def nll(self, dense: DenseGraphs, num_steps: int = 500, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Negative ELBO of graphs, nats per molecule, labelled: 'size' (-log p(n) from the
        histogram), 'prior/X', 'prior/E', 'diffusion/X', 'diffusion/E', 'reconstruction/X',
        'reconstruction/E' and 'total' (unconditional model)."""
        mask = dense.mask
        masks = self._masks(mask)

        def denoise(x_t, t):
            lx, le = self(x_t["X"], x_t["E"], t, mask)
            return {"X": lx, "E": le}

        terms = self.process.elbo(denoise, {"X": dense.X, "E": dense.E}, num_steps, masks, generator)
        out = terms.labelled()
        p_n = self.size_hist.double() / self.size_hist.sum()
        size = -torch.log(p_n[mask.sum(1)].clamp_min(1e-30))
        out["size"] = size
        out["total"] = out["total"] + size
        return out


# ----------------------------------------------------------------------------- files
def save_graph_model(model: GraphDiffusion, path: str | Path, state: dict | None = None) -> Path:
    """Write {"kind": "graph", "config", "state"} atomically (weights_only-loadable)."""
    path = Path(path)
    atomic_torch_save({"kind": MODEL_KIND, "config": model.cfg.to_dict(),
                       "state": state if state is not None else model.state_dict()}, path)
    return path


def load_graph_model(path: str | Path, device: str | torch.device = "cpu") -> GraphDiffusion:
    """Rebuild a GraphDiffusion from `save_graph_model` output, or from a Trainer checkpoint
    (`ckpt_*.pt`, its EMA weights) beside a `graph_config.json`."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    blob = read_torch_file(path, "graph checkpoint", map_location=device)
    if isinstance(blob, dict) and "ema" in blob and (path.parent / "graph_config.json").exists():
        blob = {"kind": MODEL_KIND, "config": json.loads((path.parent / "graph_config.json").read_text()),
                "state": blob["ema"]}
    if not isinstance(blob, dict) or blob.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{path} is not a graph-diffusion checkpoint (an EGNN model? use --model egnn)")
    model = GraphDiffusion(GraphDiffusionConfig.from_dict(blob["config"], source=f"{path} config"))
    model.load_state_dict(blob["state"])
    return model.to(device).eval()


def graph_loss(model: GraphDiffusion, process, batch) -> Tensor:
    """Trainer hook: PyG Batch -> dense blocks -> `GraphDiffusion.loss`."""
    net = getattr(model, "module", model)
    return net.loss(to_dense(batch, net.cfg.max_atoms))


def train_graph(model: GraphDiffusion, data: Sequence, cfg, resume: bool = True, progress: bool = True) -> GraphDiffusion:
    """Train with core's Trainer (EMA, atomic checkpoints, resume). Writes graph_config.json,
    train_smiles.txt and, at the end, model.pt (EMA weights) to cfg.out_dir; returns the EMA model."""
    import json

    from sciffusion.core.atomic import atomic_write_text
    from sciffusion.core.train.trainer import Trainer

    from .graph_data import collate_graphs

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.set_statistics(data)
    atomic_write_text(out / "graph_config.json", json.dumps(model.cfg.to_dict(), indent=2))
    atomic_write_text(out / "train_smiles.txt", "\n".join(d.smiles for d in data) + "\n")
    trainer = Trainer(model, None, list(data), cfg, loss_fn=graph_loss, collate_fn=collate_graphs, progress=progress)
    trainer.fit(resume=resume)
    ema = trainer.ema_model
    save_graph_model(ema, out / "model.pt")
    return ema


__all__ = ["GraphDiffusion", "GraphDiffusionConfig", "graph_loss", "load_graph_model", "save_graph_model",
           "train_graph"]
