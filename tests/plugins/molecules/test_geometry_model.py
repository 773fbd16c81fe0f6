"""Zero-CoM geometry, complete-graph edges and E(3) equivariance of the EGNN denoiser."""

import torch

from sciffusion.plugins.molecules.diffusion import (
    MolDiffusion,
    MolDiffusionConfig,
    log_normal_zero_com,
)
from sciffusion.plugins.molecules.geometry import (
    centered_noise,
    fully_connected_edges,
    graph_layout,
    random_rotation,
    remove_mean,
    scatter_mean,
)
from sciffusion.plugins.molecules.model import EGNN, EGNNConfig


def _batch(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def test_fully_connected_edges_match_brute_force():
    sizes = [3, 1, 5, 2]
    b = _batch(sizes)
    ei = fully_connected_edges(b)
    expected = {(j, i) for i in range(len(b)) for j in range(len(b)) if i != j and b[i] == b[j]}
    got = set(map(tuple, ei.t().tolist()))
    assert got == expected and ei.shape[1] == sum(n * (n - 1) for n in sizes)


def test_remove_mean_and_centered_noise():
    g = torch.Generator().manual_seed(0)
    b = _batch([4, 7, 2])
    x = torch.randn(13, 3, generator=g) + 5.0
    y = remove_mean(x, b)
    assert scatter_mean(y, b).abs().max() < 1e-6
    torch.testing.assert_close(remove_mean(y, b), y)           # a projection
    # projected noise: per-coordinate variance (n - 1) / n inside a molecule of n atoms
    big = _batch([4] * 20000)
    eps = centered_noise((len(big), 3), big, generator=g)
    assert scatter_mean(eps, big).abs().max() < 1e-5
    assert abs(float(eps.var()) - 0.75) < 0.01


def test_log_normal_uses_zero_com_dimension():
    b = _batch([3])
    x = torch.zeros(3, 3)
    # d = (3 - 1) * 3 = 6 degrees of freedom
    assert torch.allclose(log_normal_zero_com(x, b), torch.tensor([-3.0 * torch.log(torch.tensor(2 * torch.pi))]))


def test_egnn_is_e3_equivariant(device):
    torch.manual_seed(0)
    net = EGNN(EGNNConfig(n_types=5, hidden=32, layers=3), n_in=6, n_out=6).double().to(device)
    g = torch.Generator().manual_seed(1)
    b = _batch([5, 9, 3]).to(device)
    x = remove_mean(torch.randn(17, 3, generator=g, dtype=torch.float64).to(device), b)
    h = torch.randn(17, 6, generator=g, dtype=torch.float64).to(device)
    t = torch.rand(3, generator=g, dtype=torch.float64).to(device)[b]
    rot = random_rotation(g).to(device)
    shift = torch.randn(1, 3, generator=g, dtype=torch.float64).to(device) * 10
    ex, eh = net(x, h, t, b)
    ex2, eh2 = net(x @ rot.T + shift, h, t, b)
    assert (ex2 - ex @ rot.T).abs().max() < 1e-5                # positions rotate, ignore translation
    assert (eh2 - eh).abs().max() < 1e-5                        # types invariant
    assert ex.abs().max() > 1e-3                                # the test is not trivially satisfied
    reflect = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64, device=device))
    ex3, eh3 = net(x @ reflect.T, h, t, b)                      # E(3) includes reflections
    assert (ex3 - ex @ reflect.T).abs().max() < 1e-5 and (eh3 - eh).abs().max() < 1e-5
    ex4, eh4 = net(x, h, t, graph_layout(b))                    # the precomputed layout: the same numbers
    assert torch.equal(ex4, ex) and torch.equal(eh4, eh)


def test_loss_is_rotation_invariant_and_samples_are_centred(device, monkeypatch):
    """Also: neither the loss nor the sampler counts molecules from the batch vector (a host sync on a
    GPU): the sizes come from the batch's offsets and the requested sizes."""
    from torch_geometric.data import Batch, Data

    from sciffusion.plugins.molecules import geometry

    counted = []
    monkeypatch.setattr(geometry, "num_graphs", lambda b: counted.append(1) or int(b.max()) + 1)
    torch.manual_seed(0)
    cfg = MolDiffusionConfig(max_atoms=9, egnn=EGNNConfig(hidden=16, layers=2))
    for mode, pred in (("continuous", "eps"), ("categorical", "eps"), ("continuous", "x0")):
        model = MolDiffusion(MolDiffusionConfig(**{**cfg.__dict__, "type_mode": mode, "prediction": pred})).to(device)
        g = torch.Generator().manual_seed(2)
        pos = torch.randn(9, 3, generator=g)
        data = [Data(pos=pos[:4], z=torch.tensor([1, 0, 0, 3]), charges=torch.zeros(4), num_nodes=4),
                Data(pos=pos[4:], z=torch.tensor([1, 1, 2, 0, 0]), charges=torch.zeros(5), num_nodes=5)]
        batch = Batch.from_data_list(data).to(device)
        with torch.no_grad():
            l1 = model.loss(batch, generator=torch.Generator().manual_seed(3))
        rot = random_rotation(g)
        batch.pos = batch.pos @ rot.T.float().to(device) + 3.0
        with torch.no_grad():
            l2 = model.loss(batch, generator=torch.Generator().manual_seed(3))
        assert torch.isfinite(l1) and abs(float(l1 - l2)) < 1e-3 * float(l1)
        out = model.sample(torch.tensor([2, 5, 9]), steps=3, generator=torch.Generator().manual_seed(0))
        assert out["pos"].shape == (16, 3) and out["z"].max() < 5 and out["pos"].device.type == "cpu"
        assert counted == [], mode
        assert scatter_mean(out["pos"], out["batch"], n_graphs=3).abs().max() < 1e-4
