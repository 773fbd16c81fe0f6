"""Geometry of batched point clouds: zero centre of mass, fully connected edges, random rotations.

A batch of molecules is a node matrix with a `batch` vector (PyG convention): node i belongs to
molecule batch[i]. Positions diffuse in the linear subspace sum_i x_i = 0 of each molecule
(Hoogeboom et al. 2022, EDM, sec. 3.2), whose dimension is (n - 1) * 3.

The bookkeeping of a batch (its molecule sizes and complete-graph edges) needs the number of molecules
on the host; `graph_layout` computes it once per batch, and every function here that takes a batch
vector also takes that `GraphLayout`, so a denoising loop reuses it without a host-device sync per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sciffusion.core import rng


def num_graphs(batch: torch.Tensor) -> int:
    """Number of molecules in a batch vector (0 for an empty one)."""
    return int(batch.max()) + 1 if batch.numel() else 0


def graph_sizes(batch: torch.Tensor, n_graphs: int | None = None) -> torch.Tensor:
    """Atoms per molecule, (G,) long."""
    return torch.bincount(batch, minlength=n_graphs or num_graphs(batch))


@dataclass(frozen=True)
class GraphLayout:
    """A batch's bookkeeping, on the batch's device: `batch` (N,), `sizes` (G,) long atoms per
    molecule, and the complete graph's `edge_index` (2, sum_g n_g (n_g - 1)). Built by `graph_layout`."""

    batch: torch.Tensor
    sizes: torch.Tensor
    edge_index: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return self.sizes.shape[0]


def graph_layout(batch: torch.Tensor, sizes: torch.Tensor | None = None) -> GraphLayout:
    """The `GraphLayout` of a batch vector; given `sizes` (G,), nothing is read back from the device.

    Without `sizes` this costs one host-device sync (the number of molecules): call it once per batch.
    """
    if sizes is None:
        sizes = graph_sizes(batch)
    sizes = sizes.to(batch.device)
    return GraphLayout(batch, sizes, fully_connected_edges(batch, sizes))


def _parts(batch: torch.Tensor | GraphLayout, n_graphs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch vector, sizes) from a batch vector (one host sync) or a `GraphLayout` (none)."""
    if isinstance(batch, GraphLayout):
        return batch.batch, batch.sizes
    return batch, graph_sizes(batch, n_graphs)


def scatter_mean(x: torch.Tensor, batch: torch.Tensor | GraphLayout, n_graphs: int | None = None) -> torch.Tensor:
    """Per-molecule mean of node rows: out[g] = mean_{i: batch[i]=g} x[i], shape (G, F)."""
    b, sizes = _parts(batch, n_graphs)
    total = torch.zeros(sizes.shape[0], x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, b, x)
    return total / sizes.clamp(min=1).to(x.dtype)[:, None]


def remove_mean(x: torch.Tensor, batch: torch.Tensor | GraphLayout) -> torch.Tensor:
    """Project node positions (N, 3) onto zero centre of mass per molecule: x_i - mean_{j in g(i)} x_j.

    (Centre of geometry: EDM uses uniform weights, so the projection is orthogonal.)
    """
    b = batch.batch if isinstance(batch, GraphLayout) else batch
    return x - scatter_mean(x, batch)[b]


def centered_noise(shape: tuple[int, int], batch: torch.Tensor | GraphLayout, generator=None,
                   device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard Gaussian noise in the zero-CoM subspace: eps = P z, z ~ N(0, I), P the projection
    (drawn on the generator's device, then moved to `device`)."""
    z = rng.randn(shape, generator, device=device or "cpu", dtype=dtype)
    return remove_mean(z, batch)


def fully_connected_edges(batch: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Edge index (2, sum_g n_g (n_g - 1)) of the complete graph of each molecule, no self loops.

    Built in plain torch (PyG's radius_graph needs pyg-lib). Assumes nodes of one molecule are
    contiguous, as in a PyG Batch. Row 0 is the source j, row 1 the target i. `sizes` (G,), when
    known, saves counting them.
    """
    if batch.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=batch.device)
    sizes = graph_sizes(batch) if sizes is None else sizes.to(batch.device)
    start = torch.cumsum(sizes, 0) - sizes
    per_node = sizes[batch]                                   # n_{g(i)} for each node i
    src = torch.repeat_interleave(torch.arange(batch.numel(), device=batch.device), per_node)
    block_start = torch.cumsum(per_node, 0) - per_node
    within = torch.arange(src.numel(), device=batch.device) - torch.repeat_interleave(block_start, per_node)
    dst = start[batch[src]] + within
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


def random_rotation(generator=None, dtype=torch.float64) -> torch.Tensor:
    """A uniformly random rotation matrix (3, 3) with det +1 (QR of a Gaussian matrix)."""
    a = torch.randn(3, 3, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
