"""Geometry of batched point clouds: zero centre of mass, fully connected edges, random rotations.

A batch of molecules is a node matrix with a `batch` vector (PyG convention): node i belongs to
molecule batch[i]. Positions diffuse in the linear subspace sum_i x_i = 0 of each molecule
(Hoogeboom et al. 2022, EDM, sec. 3.2), whose dimension is (n - 1) * 3.
"""

from __future__ import annotations

import torch


def num_graphs(batch: torch.Tensor) -> int:
    """Number of molecules in a batch vector (0 for an empty one)."""
    return int(batch.max()) + 1 if batch.numel() else 0


def graph_sizes(batch: torch.Tensor, n_graphs: int | None = None) -> torch.Tensor:
    """Atoms per molecule, (G,) long."""
    return torch.bincount(batch, minlength=n_graphs or num_graphs(batch))


def scatter_mean(x: torch.Tensor, batch: torch.Tensor, n_graphs: int | None = None) -> torch.Tensor:
    """Per-molecule mean of node rows: out[g] = mean_{i: batch[i]=g} x[i], shape (G, F)."""
    g = n_graphs or num_graphs(batch)
    total = torch.zeros(g, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, batch, x)
    count = torch.bincount(batch, minlength=g).clamp(min=1).to(x.dtype)
    return total / count[:, None]


def remove_mean(x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Project node positions (N, 3) onto zero centre of mass per molecule: x_i - mean_{j in g(i)} x_j.

    (Centre of geometry: EDM uses uniform weights, so the projection is orthogonal.)
    """
    return x - scatter_mean(x, batch)[batch]


def centered_noise(shape: tuple[int, int], batch: torch.Tensor, generator=None,
                   device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard Gaussian noise in the zero-CoM subspace: eps = P z, z ~ N(0, I), P the projection."""
    z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return remove_mean(z, batch)


def fully_connected_edges(batch: torch.Tensor) -> torch.Tensor:
    """Edge index (2, sum_g n_g (n_g - 1)) of the complete graph of each molecule, no self loops.

    Built in plain torch (PyG's radius_graph needs pyg-lib). Assumes nodes of one molecule are
    contiguous, as in a PyG Batch. Row 0 is the source j, row 1 the target i.
    """
    if batch.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=batch.device)
    sizes = graph_sizes(batch)
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
