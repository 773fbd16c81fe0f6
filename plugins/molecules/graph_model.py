"""A permutation-equivariant graph transformer over node, edge and graph features (DiGress-style).

Inputs are dense blocks: node features X (B, N, dx_in), edge features E (B, N, N, de_in), graph
features y (B, dy_in) and a node mask (B, N). Every layer maps (X, E, y) to new (X, E, y)::

    Q, K, V = X W_Q, X W_K, X W_V                     (per head h, dim d)
    S_ij^h  = <Q_i^h, K_j^h> / sqrt(d)                (one score per head)
    S_ij   <- S_ij * (1 + E_ij W_mul) + E_ij W_add    (FiLM of the edges into the attention)
    E'_ij   = FiLM_y(S_ij) W_E + (X_i W_a) * (X_j W_b) (new edge features: the scores and the atom pair)
    a_ij    = softmax_j(S_ij) over real nodes j;   X'_i = FiLM_y(sum_j a_ij^h V_j^h) W_X
    y'      = y W_y + PNA(X) + PNA(E)                 (mean, min, max, std pooling over real nodes/edges)

(DiGress keeps one score per feature, a (B, N, N, dx) tensor, which also carries the atom pair
into the edges; here the scores are per head, H / dx times cheaper, and the atom pair reaches the
edges through the product term at the edge width, which is what lets the model train and sample
on a CPU.) Each layer is followed by residuals, layer norms and feed-forward blocks. Every per-node and per-edge map is
shared and every pooling is symmetric, so relabelling the nodes by a permutation P gives
X' -> P X', E' -> P E' P^T and leaves y' unchanged (tested). Edge outputs are symmetrised.

Structural features of the noisy graph (`structural_features`): per node, the degree, the
valence (sum of bond orders) and the number of 3-, 4- and 5-cycles through it; per graph, the
numbers of 3-, 4- and 5-cycles, all from traces of powers of the adjacency matrix A::

    c3(i) = (A^3)_ii / 2
    c4(i) = ((A^4)_ii - d_i (d_i - 1) - (A d)_i) / 2
    c5(i) = ((A^5)_ii - 2 (A^3)_ii d_i - (A diag(A^3))_i + 5 (A^3)_ii - 2 ((A o A^2) d)_i) / 2

(o the elementwise product; each formula subtracts the closed walks that are not simple cycles;
checked against brute-force enumeration in the tests). A graph's count is sum_i c_k(i) / k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sciffusion.core.config import JsonConfig

N_NODE_FEATURES = 5   # degree, valence, c3, c4, c5 per node
N_GRAPH_FEATURES = 3  # c3, c4, c5 per graph
N_SPECTRAL_NODE_FEATURES = 2   # size of the node's connected component, member of the largest one
N_SPECTRAL_GRAPH_FEATURES = 6  # number of components, the 5 smallest nonzero Laplacian eigenvalues
N_EIGENVALUES = 5
ATTENTION_KINDS = ("head", "feature")


@dataclass
class TransformerConfig(JsonConfig):
    """Sizes of the graph transformer."""

    layers: int = 5
    dx: int = 128
    de: int = 32
    dy: int = 64
    heads: int = 8
    ff_x: int = 256
    ff_e: int = 64
    ff_y: int = 128
    attention: str = "head"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.dx % self.heads:
            raise ValueError(f"dx={self.dx} must be a multiple of heads={self.heads}")

    @classmethod
    def scaled(cls, hidden: int, edge_hidden: int, layers: int) -> TransformerConfig:
        """Widths from one node width `d_x` and edge width `d_e`: heads = max(1, d_x // 16) (16
        channels each), feed-forward widths 2 d_x and 2 d_e, graph width 64 (feed-forward 128)."""
        return cls(layers=layers, dx=hidden, de=edge_hidden, dy=64, heads=max(1, hidden // 16),
                   ff_x=2 * hidden, ff_e=2 * edge_hidden, ff_y=128)


def cycle_counts(A: Tensor) -> tuple[Tensor, Tensor]:
    """Simple cycles of length 3, 4, 5 through each node (B, N, 3) and in each graph (B, 3) of a
    symmetric 0/1 adjacency A (B, N, N) with a zero diagonal (formulas in the module docstring)."""
    A = A.float()
    d = A.sum(-1)
    A2 = A @ A
    A3 = A2 @ A
    diag = lambda M: torch.diagonal(M, dim1=-2, dim2=-1)  # noqa: E731
    d3 = diag(A3)
    d4 = (A3 * A).sum(-1)                    # (A^4)_ii = sum_j (A^3)_ij A_ji
    d5 = (A3 * A2).sum(-1)                   # (A^5)_ii = sum_j (A^3)_ij (A^2)_ji
    c3 = d3 / 2
    c4 = (d4 - d * (d - 1) - (A @ d[..., None])[..., 0]) / 2
    c5 = (d5 - 2 * d3 * d - (A @ d3[..., None])[..., 0] + 5 * d3 - 2 * ((A * A2) @ d[..., None])[..., 0]) / 2
    node = torch.stack([c3, c4, c5], -1)
    graph = node.sum(1) / torch.tensor([3.0, 4.0, 5.0], device=A.device)
    return node, graph


def structural_features(E_onehot: Tensor, mask: Tensor, bond_orders: Tensor,
                        spectral: bool = False) -> tuple[Tensor, Tensor]:
    """Node features (B, N, 5) and graph features (B, 3) of a (noisy) graph given as one-hot edge
    types (B, N, N, Ke) with class 0 = no bond; scaled to about unit size. With `spectral`, the
    `spectral_features` are appended: (B, N, 7) and (B, 9)."""
    pair = (mask[:, :, None] & mask[:, None, :]).float()
    A = (1 - E_onehot[..., 0]) * pair
    A = A * (1 - torch.eye(A.shape[-1], device=A.device))
    degree = A.sum(-1)
    valence = (E_onehot * bond_orders.to(E_onehot)).sum(-1).mul(pair).sum(-1)
    cyc_node, cyc_graph = cycle_counts(A)
    node = torch.cat([degree[..., None] / 4, valence[..., None] / 4, cyc_node / 4], -1) * mask[..., None]
    graph = cyc_graph / 8
    if spectral:
        spec_node, spec_graph = spectral_features(A, mask)
        node, graph = torch.cat([node, spec_node], -1), torch.cat([graph, spec_graph], -1)
    return node, graph


def component_sizes(A: Tensor, mask: Tensor) -> Tensor:
    """Size of the connected component of each real node (B, N) of a symmetric 0/1 adjacency A
    (B, N, N); 0 on padding. Reachability R = (I + A)^(2^k) > 0 with 2^k >= N - 1, by squaring."""
    N = A.shape[-1]
    R = ((A > 0) | torch.eye(N, dtype=torch.bool, device=A.device)).float()
    for _ in range(max(1, math.ceil(math.log2(max(N - 1, 1))))):
        R = ((R @ R) > 0).float()
    m = mask.to(R.dtype)
    return (R * m[:, None, :]).sum(-1) * m


def spectral_features(A: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Connectivity and Laplacian-spectrum features of a (noisy) graph, both permutation invariant.

    Per node (B, N, 2): the size of its connected component / n, and 1 if that component is a
    largest one. Per graph (B, 6): the number of components c = sum_i 1 / size_i, divided by N,
    and the 5 smallest nonzero eigenvalues of L = D - A on the real nodes (L has exactly c zero
    eigenvalues), divided by N, zero where the graph has fewer. Padding nodes get L_ii = 2N, above
    every real eigenvalue (at most 2 max degree < 2N), so they sort last.
    """
    N = mask.shape[1]
    m = mask.to(A.dtype)
    n = m.sum(-1).clamp_min(1)
    size = component_sizes(A, mask)
    comps = (m / size.clamp_min(1)).sum(-1)
    largest = (size == size.amax(-1, keepdim=True)).to(A.dtype) * m
    L = torch.diag_embed(A.sum(-1) + (1 - m) * 2 * N) - A
    eig = torch.linalg.eigvalsh(L.double()).to(A.dtype)                   # ascending
    idx = comps.round().long()[:, None] + torch.arange(N_EIGENVALUES, device=A.device)
    vals = eig.gather(1, idx.clamp(max=N - 1))
    vals = vals * (idx < n.round().long()[:, None]).to(A.dtype)
    node = torch.stack([size / n[:, None], largest], -1) * m[..., None]
    return node, torch.cat([comps[:, None], vals], -1) / N


def _fold_max(h: Tensor) -> Tensor:
    """max over axis 1 of (B, R, C) by pairwise maxima of halves (log2 R elementwise passes; on a CPU
    several times faster than `amax(1)`, which reduces across the slow axis)."""
    while h.shape[1] > 1:
        half = h.shape[1] // 2
        top = torch.maximum(h[:, :half], h[:, half:2 * half])
        h = torch.cat([top, h[:, 2 * half:]], 1) if h.shape[1] % 2 else top
    return h[:, 0]


def _pool(h: Tensor, mask: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Masked mean, min, max and std of h over `dims` (PNA-style), concatenated on the last axis.

    `dims` are consecutive axes after the batch axis; `mask` broadcasts against h with a
    trailing axis of size 1."""
    B, C = h.shape[0], h.shape[-1]
    flat = h.reshape(B, -1, C)
    m = mask.to(h.dtype).reshape(B, -1, 1)
    real = m.sum(1)
    count = real.clamp_min(1)
    mean = (flat * m).sum(1) / count
    big = torch.finfo(h.dtype).max / 4
    pad = m == 0
    mx = _fold_max(flat.masked_fill(pad, -big))
    mn = -_fold_max((-flat).masked_fill(pad, -big))
    empty = real == 0
    mn, mx = mn.masked_fill(empty, 0.0), mx.masked_fill(empty, 0.0)
    var = (((flat - mean[:, None, :]) ** 2) * m).sum(1) / count
    return torch.cat([mean, mn, mx, (var.clamp_min(0) + 1e-6).sqrt()], -1)


class XEyLayer(nn.Module):
    """One self-attention layer that updates node, edge and graph features (module docstring)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        dx, de, dy, h = cfg.dx, cfg.de, cfg.dy, cfg.heads
        self.heads, self.dh = h, dx // h
        self.per_feature = cfg.attention == "feature"
        ns = dx if self.per_feature else h          # score channels: one per feature or one per head
        self.qkv = nn.Linear(dx, 3 * dx)
        self.e_film = nn.Linear(de, 2 * ns)        # multiplicative and additive FiLM of the scores
        self.ye_film = nn.Linear(dy, 2 * ns)
        self.yx_film = nn.Linear(dy, 2 * dx)
        self.e_out = nn.Linear(ns, de)
        self.x_pair = nn.Linear(dx, 2 * de)        # node pairs into the edges: (X_i W_a) * (X_j W_b)
        self.x_out = nn.Linear(dx, dx)
        self.y_y = nn.Linear(dy, dy)
        self.x_y = nn.Linear(4 * dx, dy)
        self.e_y = nn.Linear(4 * de, dy)
        self.y_out = nn.Sequential(nn.Linear(dy, dy), nn.ReLU(inplace=True), nn.Linear(dy, dy))
        self.norm_x1, self.norm_x2 = nn.LayerNorm(dx), nn.LayerNorm(dx)
        self.norm_e1, self.norm_e2 = nn.LayerNorm(de), nn.LayerNorm(de)
        self.norm_y1, self.norm_y2 = nn.LayerNorm(dy), nn.LayerNorm(dy)
        self.ff_x = nn.Sequential(nn.Linear(dx, cfg.ff_x), nn.ReLU(inplace=True), nn.Linear(cfg.ff_x, dx))
        self.ff_e = nn.Sequential(nn.Linear(de, cfg.ff_e), nn.ReLU(inplace=True), nn.Linear(cfg.ff_e, de))
        self.ff_y = nn.Sequential(nn.Linear(dy, cfg.ff_y), nn.ReLU(inplace=True), nn.Linear(cfg.ff_y, dy))

    def forward(self, X: Tensor, E: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        xm = mask[..., None].to(X.dtype)
        pair = mask[:, :, None] & mask[:, None, :]
        em = pair[..., None].to(X.dtype)
        S, v = self._scores(X)
        e_mul, e_add = self.e_film(E).chunk(2, -1)
        S = S * (e_mul + 1) + e_add
        y_mul, y_add = self.ye_film(y)[:, None, None, :].chunk(2, -1)
        pa, pb = self.x_pair(X).chunk(2, -1)
        newE = (self.e_out(y_add + (y_mul + 1) * S) + pa[:, :, None, :] * pb[:, None, :, :]) * em
        att = torch.softmax(S.masked_fill(~pair[..., None], -1e9), dim=2)       # over j
        wv = self._attend(att, v)
        x_mul, x_add = self.yx_film(y)[:, None, :].chunk(2, -1)
        newX = self.x_out(x_add + (x_mul + 1) * wv) * xm
        newy = self.y_out(self.y_y(y) + self.x_y(_pool(X, xm, (1,))) + self.e_y(_pool(E, em, (1, 2))))
        X = self.norm_x1(X + newX)
        E = self.norm_e1(E + newE)
        y = self.norm_y1(y + newy)
        X = self.norm_x2(X + self.ff_x(X)) * xm
        E = self.norm_e2(E + self.ff_e(E)) * em
        y = self.norm_y2(y + self.ff_y(y))
        return X, E, y

    def _scores(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Attention scores S (B, N, N, H or dx) and values V (B, N, H, d) from the nodes."""
        B, N, dx = X.shape
        q, k, v = self.qkv(X).view(B, N, 3, self.heads, self.dh).unbind(2)
        if self.per_feature:
            S = (q.reshape(B, N, 1, dx) * k.reshape(B, 1, N, dx)) / math.sqrt(self.dh)
        else:
            qh = q.transpose(1, 2).reshape(B * self.heads, N, self.dh)
            kh = k.permute(0, 2, 3, 1).reshape(B * self.heads, self.dh, N)
            S = torch.bmm(qh, kh).view(B, self.heads, N, N).permute(0, 2, 3, 1) / math.sqrt(self.dh)
        return S, v

    def _attend(self, att: Tensor, v: Tensor) -> Tensor:
        """sum_j a_ij V_j with one weight per head (B, N, N, H) or per feature (B, N, N, dx)."""
        B, N = v.shape[:2]
        if self.per_feature:
            return torch.einsum("bijf,bjf->bif", att, v.reshape(B, N, -1))
        return torch.einsum("bijh,bjhd->bihd", att, v).reshape(B, N, -1)


class GraphTransformer(nn.Module):
    """Maps noisy one-hot graphs plus features to logits of the clean node and edge types.

    forward(X_in (B, N, in_x), E_in (B, N, N, in_e), y_in (B, in_y), mask (B, N)) ->
    (node logits (B, N, out_x), edge logits (B, N, N, out_e)); edge logits are symmetric.
    """

    def __init__(self, cfg: TransformerConfig, in_x: int, in_e: int, in_y: int, out_x: int, out_e: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_x = nn.Sequential(nn.Linear(in_x, cfg.dx), nn.ReLU(inplace=True), nn.Linear(cfg.dx, cfg.dx))
        self.in_e = nn.Sequential(nn.Linear(in_e, cfg.de), nn.ReLU(inplace=True), nn.Linear(cfg.de, cfg.de))
        self.in_y = nn.Sequential(nn.Linear(in_y, cfg.dy), nn.ReLU(inplace=True), nn.Linear(cfg.dy, cfg.dy))
        self.layers = nn.ModuleList(XEyLayer(cfg) for _ in range(cfg.layers))
        self.out_x = nn.Sequential(nn.Linear(cfg.dx, cfg.dx), nn.ReLU(inplace=True), nn.Linear(cfg.dx, out_x))
        self.out_e = nn.Sequential(nn.Linear(cfg.de, cfg.de), nn.ReLU(inplace=True), nn.Linear(cfg.de, out_e))

    def forward(self, X: Tensor, E: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        em = (mask[:, :, None] & mask[:, None, :])[..., None].to(X.dtype)
        h_x = self.in_x(X) * mask[..., None].to(X.dtype)
        h_e = self.in_e(E)
        h_e = 0.5 * (h_e + h_e.transpose(1, 2)) * em
        h_y = self.in_y(y)
        for layer in self.layers:
            h_x, h_e, h_y = layer(h_x, h_e, h_y, mask)
        logits_e = self.out_e(h_e)
        return self.out_x(h_x), 0.5 * (logits_e + logits_e.transpose(1, 2))
