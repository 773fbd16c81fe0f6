"""Graph diffusion of molecules: cycle features, permutation equivariance, conversion, sampling, loss."""

import itertools

import pytest
import torch

from sciffusion.plugins.molecules.graph_data import (
    ATOM_TYPES,
    collate_graphs,
    dense_to_graphs,
    graph_to_mol,
    sanitized,
    smiles_to_data,
    to_dense,
)
from sciffusion.plugins.molecules.graph_diffusion import (
    GraphDiffusion,
    GraphDiffusionConfig,
    load_graph_model,
    save_graph_model,
)
from sciffusion.plugins.molecules.graph_model import (
    TransformerConfig,
    cycle_counts,
    spectral_features,
)

SMILES = ["CCO", "CC(=O)O", "c1ccoc1", "C[NH3+]", "OCCO", "C#N", "C1CC1", "CNC=O", "O=C1CC=CN1", "C1CCCCC1"]
TINY = TransformerConfig(layers=2, dx=16, de=8, dy=8, heads=2, ff_x=16, ff_e=8, ff_y=8)


def _brute_cycles(A):
    """Simple cycles of length 3..5 through each node, by enumerating vertex sequences."""
    n = A.shape[0]
    per_node = torch.zeros(n, 3)
    for k in (3, 4, 5):
        seen = set()
        for seq in itertools.permutations(range(n), k):
            if all(A[seq[i], seq[(i + 1) % k]] for i in range(k)):
                key = frozenset(frozenset((seq[i], seq[(i + 1) % k])) for i in range(k))
                if key not in seen:
                    seen.add(key)
                    for v in seq:
                        per_node[v, k - 3] += 1
    return per_node


def test_cycle_counts_equal_brute_force_enumeration():
    g = torch.Generator().manual_seed(0)
    graphs = []
    for _ in range(12):
        p = 0.25 + 0.5 * float(torch.rand(1, generator=g))
        A = (torch.rand(7, 7, generator=g) < p).float().triu(1)
        graphs.append(A + A.T)
    A = torch.stack(graphs)
    node, graph = cycle_counts(A)
    for b in range(len(graphs)):
        brute = _brute_cycles(A[b])
        torch.testing.assert_close(node[b], brute)
        torch.testing.assert_close(graph[b], brute.sum(0) / torch.tensor([3.0, 4.0, 5.0]))
    assert graph.max() > 3  # the random graphs do hold cycles of every length


def _model(seed=0, net=TINY, **kw):
    torch.manual_seed(seed)
    data, _ = smiles_to_data(SMILES)
    m = GraphDiffusion(GraphDiffusionConfig(net=net, **kw))
    m.set_statistics(data)
    return m.eval(), data


def test_spectral_features_match_scipy_components_and_numpy_eigenvalues():
    import numpy as np
    from scipy.sparse.csgraph import connected_components

    g = torch.Generator().manual_seed(3)
    B, N = 40, 9
    A = (torch.rand(B, N, N, generator=g) < 0.18).float()
    A = torch.triu(A, 1)
    A = A + A.transpose(1, 2)
    sizes = torch.randint(1, N + 1, (B,), generator=g)
    mask = torch.arange(N)[None, :] < sizes[:, None]
    A = A * (mask[:, :, None] & mask[:, None, :])
    node, graph = spectral_features(A, mask)
    for b in range(B):
        n = int(sizes[b])
        a = A[b, :n, :n].numpy()
        c, labels = connected_components(a, directed=False)
        comp_size = np.bincount(labels)[labels]
        np.testing.assert_allclose(node[b, :n, 0].numpy(), comp_size / n, rtol=1e-6)
        np.testing.assert_array_equal(node[b, :n, 1].numpy(), (comp_size == comp_size.max()).astype(float))
        assert float(graph[b, 0]) * N == pytest.approx(c)
        ev = np.linalg.eigvalsh(np.diag(a.sum(1)) - a)[c:c + 5]
        want = np.zeros(5)
        want[:len(ev)] = ev
        np.testing.assert_allclose(graph[b, 1:].numpy() * N, want, atol=1e-5)
    assert node[~mask].abs().max() == 0
    assert (graph[:, 0] * N).max() > 2  # the random graphs do have several components


@pytest.mark.parametrize("attention,spectral", [("head", False), ("feature", True)])
def test_denoiser_is_permutation_equivariant(attention, spectral):
    net = TransformerConfig(**{**TINY.to_dict(), "attention": attention})
    model, data = _model(net=net, spectral=spectral)
    dense = to_dense(collate_graphs(data[:4]))
    g = torch.Generator().manual_seed(1)
    t = torch.rand(4, dtype=torch.float64, generator=g)
    x = model.process.sample_xt({"X": dense.X, "E": dense.E}, t, model._masks(dense.mask), g)
    cond, given = model.cond_tensors({"logp": 0.5}, 4)
    lx, le = model(x["X"], x["E"], t, dense.mask, cond, given)
    # relabel the real nodes of every graph (padding stays at the end)
    perm = torch.arange(9).repeat(4, 1)
    for b in range(4):
        n = int(dense.mask[b].sum())
        perm[b, :n] = torch.randperm(n, generator=g)
    bi = torch.arange(4)[:, None]
    Xp, Ep = x["X"][bi, perm], x["E"][bi[:, :, None], perm[:, :, None], perm[:, None, :]]
    lxp, lep = model(Xp, Ep, t, dense.mask, cond, given)
    m, pair = dense.mask, dense.mask[:, :, None] & dense.mask[:, None, :]
    torch.testing.assert_close(lxp[m], lx[bi, perm][m], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lep[pair], le[bi[:, :, None], perm[:, :, None], perm[:, None, :]][pair],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(le, le.transpose(1, 2))


def test_graphs_round_trip_through_rdkit():
    data, report = smiles_to_data([*SMILES, "not_a_smiles", "C[Si](C)C", "CCCCCCCCCC"])
    assert len(data) == len(SMILES)
    assert report.counts == {"RDKit cannot parse the SMILES": 1, "atom type outside the vocabulary": 1,
                             "more heavy atoms than the model allows": 1}
    assert any("not_a_smiles" in line for line in report.lines())
    dense = to_dense(collate_graphs(data))
    assert dense.X.shape == (len(SMILES), 9) and torch.equal(dense.E, dense.E.transpose(1, 2))
    from rdkit import Chem

    for (types, bonds), d in zip(dense_to_graphs(dense.X, dense.E, dense.mask), data):
        mol = sanitized(graph_to_mol(types, bonds))
        assert mol is not None and Chem.MolToSmiles(mol) == d.smiles
    assert "N+" in ATOM_TYPES and int(dense.X[3, 1]) == ATOM_TYPES.index("N+")


def test_sampling_any_step_count_and_mixed_sizes(tmp_path, device):
    model, _ = _model()
    model = model.to(device)
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([1, 4, 9, 2])
    for steps, final in ((1, "argmax"), (7, "argmax"), (7, "sample")):
        out = model.sample(sizes, steps=steps, generator=g, final=final)
        assert out.X.device.type == device.type and torch.equal(out.mask.sum(1).cpu(), sizes)
        assert torch.equal(out.E, out.E.transpose(1, 2)) and (out.E[~out.mask[:, :, None].expand_as(out.E)] == 0).all()
    same = [model.sample(sizes, steps=3, generator=torch.Generator().manual_seed(5)).E for _ in range(2)]
    assert torch.equal(*same)
    guided = model.sample(sizes, steps=3, generator=g, targets={"logp": 1.0}, guidance=2.0)
    assert guided.X.shape == (4, 9)
    path = save_graph_model(model, tmp_path / "m.pt")
    again = load_graph_model(path)
    assert again.cfg == model.cfg and torch.equal(again.size_hist.cpu(), model.size_hist.cpu())


def test_loss_decreases_when_fitting_a_few_graphs():
    model, data = _model(seed=2)
    model.train()
    batch = to_dense(collate_graphs(data))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = [model.loss(batch, g).item() for _ in range(3)]
    for _ in range(60):
        loss = model.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = [model.loss(batch, g).item() for _ in range(3)]
    assert sum(last) < 0.75 * sum(first)


def test_nll_terms_are_labelled_and_positive():
    model, data = _model()
    dense = to_dense(collate_graphs(data[:3]))
    terms = model.nll(dense, num_steps=8, generator=torch.Generator().manual_seed(0))
    assert {"size", "prior/X", "prior/E", "diffusion/X", "diffusion/E", "reconstruction/X",
            "reconstruction/E", "total"} <= set(terms)
    parts = sum(v for k, v in terms.items() if k != "total")
    torch.testing.assert_close(parts, terms["total"])
    assert (terms["total"] > 0).all()


def test_unknown_property_and_wrong_kind_are_clear(tmp_path):
    from sciffusion.core.train.checkpoint import CheckpointError
    from sciffusion.plugins.molecules.data import MolInputError

    model, _ = _model()
    with pytest.raises(MolInputError, match="unknown property 'gap'"):
        model.sample(torch.tensor([3]), steps=1, targets={"gap": 1.0})
    torch.save({"config": {}, "state": {}}, tmp_path / "egnn.pt")
    with pytest.raises(CheckpointError, match=r"egnn\.pt is not a graph-diffusion checkpoint"):
        load_graph_model(tmp_path / "egnn.pt")
