"""Distribution-level scores of a generated set of molecules: FCD and k-NN precision/recall/density/coverage.

Each SMILES is canonicalised (RDKit, no stereo; unreadable ones dropped) and embedded by ChemNet, the
network of the Fréchet ChemNet Distance (Preuer et al. 2018), whose weights ship inside the `fcd`
package (nothing is downloaded): 512 activations of its penultimate layer per molecule. On these
features `sciffusion.core.diffusion.sample_quality` gives

- `fcd`: the Fréchet distance between the Gaussian fits of the generated and reference features;
- `precision` / `recall` (k = 3) and `density` / `coverage` (k = 5) of the generated set against the
  reference set (definitions in docs/core.md).

    from sciffusion.plugins.molecules.distribution import distribution_metrics, qm9_split_smiles
    scores = distribution_metrics(generated_smiles, qm9_split_smiles("test", max_atoms=15))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sciffusion.core.diffusion.sample_quality import sample_quality

from .build import canonical_smiles

K_PR, K_DC = 3, 5
MIN_MOLECULES = max(K_PR, K_DC) + 1  # k-NN radii need more than k molecules per set


@functools.cache
def _chemnet():
    from fcd import load_ref_model

    return load_ref_model()


def chemnet_features(smiles: Sequence[str], device: str | torch.device = "cpu", batch_size: int = 128) -> torch.Tensor:
    """ChemNet penultimate-layer activations `(len(smiles), 512)`, float32, of SMILES as given."""
    from fcd import get_predictions

    if not smiles:
        return torch.zeros(0, 512)
    acts = get_predictions(_chemnet(), list(smiles), batch_size=batch_size, n_jobs=0, device=str(device))
    return torch.from_numpy(acts)


def canonical_set(smiles: Sequence[str]) -> list[str]:
    """RDKit canonical SMILES (no stereo) of every readable entry, in order; unreadable ones dropped."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    return [c for c in (canonical_smiles(s) for s in smiles if s) if c]


def distribution_metrics(
    generated_smiles: Sequence[str],
    reference_smiles: Sequence[str],
    *,
    device: str | torch.device = "cpu",
    bootstrap: int = 0,
    generator: torch.Generator | None = None,
) -> dict:
    """FCD, precision, recall, density and coverage of generated molecules against reference ones.

    Both lists are canonicalised (unreadable SMILES, e.g. invalid generations, are dropped: pass the
    valid molecules), embedded by ChemNet, and scored by `sciffusion.core.diffusion.sample_quality` with
    k = 3 (precision/recall) and k = 5 (density/coverage). `fcd = |mu_g - mu_r|^2 + tr(S_g + S_r -
    2 (S_g^{1/2} S_r S_g^{1/2})^{1/2})` on the 512 ChemNet activations, as the `fcd` package defines it.
    Returns the five scores (with `_low` / `_high` bounds when `bootstrap > 0`), `n_generated` and
    `n_reference` (canonical SMILES used). Raises ValueError when either set has fewer than 6 molecules.
    """
    gen, ref = canonical_set(generated_smiles), canonical_set(reference_smiles)
    for name, s in (("generated", gen), ("reference", ref)):
        if len(s) < MIN_MOLECULES:
            raise ValueError(f"distribution metrics need at least {MIN_MOLECULES} readable {name} SMILES, got {len(s)}")
    feats_ref = chemnet_features(ref, device).to(torch.float64)
    feats_gen = chemnet_features(gen, device).to(torch.float64)
    scores = sample_quality(feats_ref, feats_gen, k_pr=K_PR, k_dc=K_DC, bootstrap=bootstrap, generator=generator)
    out = {("fcd" + k[len("frechet_distance"):] if k.startswith("frechet_distance") else k): v for k, v in scores.items()}
    return {**out, "n_generated": len(gen), "n_reference": len(ref)}


def qm9_split_smiles(split: str = "test", max_atoms: int | None = None, seed: int = 0) -> list[str]:
    """SMILES of one split ("train", "val", "test") of QM9 as the plugin trains on it: molecules of at
    most `max_atoms` atoms, `split_indices(len, seed=seed)` (the shipped model: max_atoms 15, seed 0)."""
    from .data import load_qm9, split_indices

    data = load_qm9(max_atoms=max_atoms)
    idx = split_indices(len(data), seed=seed)
    if split not in idx:
        raise ValueError(f"split must be one of {sorted(idx)}, got {split!r}")
    return [data.smiles[i] for i in idx[split].tolist()]


def read_smiles_column(path: str | Path) -> list[str]:
    """The first whitespace-separated field of every non-empty line of a SMILES file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference SMILES file {path} does not exist")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def reference_scores(
    generated_smiles: Sequence[str], reference: str, max_atoms: int | None,
    device: str | torch.device = "cpu", floor: bool = True, seed: int = 0,
    split_smiles: Callable[[str], list[str]] | None = None,
) -> dict:
    """The `distribution` entry of a generation's metrics.json.

    `reference` is "qm9" (the QM9 test split at `max_atoms`, split seed `seed`) or a SMILES file. With
    "qm9" and `floor`, `floor` holds the same scores for as many training-split molecules (a seeded
    draw) against the test split: what a sampler of the training distribution reaches. The splits
    are the EGNN data's (`qm9_split_smiles`) unless `split_smiles(name)` gives the model's own
    ("train", "test"); a model must be scored against molecules it was not trained on. Too few valid
    generated molecules give `{"skipped": reason}` instead of scores.
    """
    splits = split_smiles or (lambda name: qm9_split_smiles(name, max_atoms, seed))
    gen = canonical_set(generated_smiles)
    if len(gen) < MIN_MOLECULES:
        return {"skipped": f"{len(gen)} valid generated molecules; the k-NN scores need {MIN_MOLECULES}"}
    if reference == "qm9":
        ref = splits("test")
        name = f"QM9 test split (<= {max_atoms} atoms, seed {seed})" if max_atoms else f"QM9 test split (seed {seed})"
    else:
        ref, name = read_smiles_column(reference), str(reference)
    out = {"reference": name, **distribution_metrics(gen, ref, device=device)}
    if reference == "qm9" and floor:
        train = splits("train")
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(gen)]
        out["floor"] = distribution_metrics([train[i] for i in pick.tolist()], ref, device=device)
    return out
