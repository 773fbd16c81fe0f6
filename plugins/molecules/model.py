"""E(n)-equivariant graph network (EGNN) denoiser on PyG MessagePassing.

Satorras, Hoogeboom, Welling (2021), "E(n) Equivariant Graph Neural Networks", as used by
EDM (Hoogeboom et al. 2022). One layer, over the complete graph of each molecule::

    d_ij^2 = |x_i - x_j|^2
    m_ij   = phi_e(h_i, h_j, d_ij^2, a_ij) * sigmoid(w . phi_e(...))      (gated message)
    h_i   <- h_i + phi_h(h_i, sum_j m_ij / Z)
    x_i   <- x_i + sum_j (x_i - x_j) / (d_ij + 1) * r tanh(phi_x(m_ij)) / Z

with a_ij the input distances (edge attributes) and Z a fixed normalisation. Rotations and
translations of x commute with every layer; h only sees distances, so it is invariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.nn import MessagePassing

from sciffusion.core.config import JsonConfig

from .geometry import GraphLayout, fully_connected_edges, remove_mean


@dataclass(frozen=True)
class EGNNConfig(JsonConfig):
    """Architecture and data layout of the denoiser (saved with every checkpoint)."""

    n_types: int = 5            # element one-hot width
    hidden: int = 128
    layers: int = 6
    norm: float = 10.0          # Z, the aggregation normaliser
    coords_range: float = 15.0  # r, bounds one coordinate update


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out), nn.SiLU())


class EGNNLayer(MessagePassing):
    """One equivariant layer: updates node features h (N, H) and positions x (N, 3)."""

    def __init__(self, hidden: int, norm: float, coords_range: float):
        super().__init__(aggr="add")
        self.norm, self.coords_range = norm, coords_range
        self.phi_e = _mlp(2 * hidden + 2, hidden, hidden)
        self.gate = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.phi_h = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), last)

    def forward(self, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor,
                edge_attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        agg = self.propagate(edge_index, h=h, x=x, edge_attr=edge_attr)
        m, dx = agg[:, :-3], agg[:, -3:]
        h = h + self.phi_h(torch.cat([h, m / self.norm], dim=1))
        return h, x + dx / self.norm

    def message(self, h_i, h_j, x_i, x_j, edge_attr):
        diff = x_i - x_j
        d2 = (diff * diff).sum(1, keepdim=True)
        m = self.phi_e(torch.cat([h_i, h_j, d2, edge_attr], dim=1))
        m = m * self.gate(m)
        step = torch.tanh(self.phi_x(m)) * self.coords_range
        return torch.cat([m, diff / (torch.sqrt(d2 + 1e-8) + 1.0) * step], dim=1)


class EGNN(nn.Module):
    """Denoiser eps_hat(z_t, t) for molecules.

    Input: positions x (N, 3), node features h (N, F) (scaled types and charges), t per node (N,),
    batch vector (N,) or the batch's `GraphLayout` (its edges and sizes then cost no host sync). Output: (out_x (N, 3) in the zero-CoM subspace, out_h (N, F_out)), with
    out_x = x_L - x_0 (eps prediction) or x_L (x0 prediction), equivariant, and out_h a read-out
    of h_L (invariant).
    """

    def __init__(self, cfg: EGNNConfig, n_in: int, n_out: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(n_in + 1, cfg.hidden)
        self.layers = nn.ModuleList(EGNNLayer(cfg.hidden, cfg.norm, cfg.coords_range)
                                    for _ in range(cfg.layers))
        self.out = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, n_out))

    def forward(self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, batch: torch.Tensor | GraphLayout,
                edge_index: torch.Tensor | None = None, residual: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if edge_index is None:
            edge_index = batch.edge_index if isinstance(batch, GraphLayout) else fully_connected_edges(batch)
        diff = x[edge_index[1]] - x[edge_index[0]]
        edge_attr = (diff * diff).sum(1, keepdim=True)
        feat = self.embed(torch.cat([h, t[:, None].to(h.dtype)], dim=1))
        pos = x
        for layer in self.layers:
            feat, pos = layer(feat, pos, edge_index, edge_attr)
        # residual=True: the displacement x_L - x_0 (an eps estimate); False: x_L itself (an x0 estimate)
        return remove_mean(pos - x if residual else pos, batch), self.out(feat)
