"""Loaders: QM9 rows, SMILES/SDF/XYZ files, and every bad-input path of issue 6."""

from pathlib import Path

import pytest
import torch

from sciffusion.plugins.molecules.data import (
    MolInputError,
    load_qm9,
    pack,
    read_molecules,
    read_sdf,
    read_smiles,
    read_xyz,
    split_indices,
)

RDKIT = Path(__import__("rdkit").__file__).parent
EGFR = RDKIT / "Contrib" / "PBF" / "testData" / "egfr.sdf"


@pytest.mark.slow
def test_qm9_rows_are_parsed_with_positions_types_and_smiles():
    ds = load_qm9(limit=50)
    assert len(ds) == 50
    water = ds[2]                                   # QM9 #3 is water: O, H, H
    assert water.smiles == "O" and water.z.tolist() == [3, 0, 0]
    d_oh = (water.pos[0] - water.pos[1]).norm()
    assert 0.9 < float(d_oh) < 1.0                  # O-H 0.96 A
    assert water.x.shape == (3, 5) and water.charges.abs().sum() == 0
    small = load_qm9(limit=50, max_atoms=8)
    assert len(small) < 50 and int(small.n_atoms.max()) <= 8


def test_split_is_reproducible_and_disjoint():
    a, b = split_indices(1000, seed=3), split_indices(1000, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    allidx = torch.cat([a["train"], a["val"], a["test"]])
    assert len(allidx) == 1000 and len(set(allidx.tolist())) == 1000
    assert not torch.equal(a["train"], split_indices(1000, seed=4)["train"])
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(10, (0.5, 0.2, 0.2))


def test_smiles_file_skips_bad_lines_and_names_them(tmp_path):
    f = tmp_path / "mols.smi"
    f.write_text("smiles\nCCO ethanol\nC1CC\nc1ccccc1Cl\nC(C)(C)(C)(C)(C)C\nOC=O\n")
    rep = read_smiles(f, max_atoms=20)
    # line 3: unclosed ring; line 4: Cl outside H,C,N,O,F; line 5: hexavalent carbon
    assert [d.smiles for d in rep.data] == ["CCO", "O=CO"]
    assert rep.n_skipped == 3 and ":5 " in rep.errors[2]
    assert any(":3 " in e and "cannot parse" in e for e in rep.errors)
    assert any(":4 " in e and "['Cl']" in e and "outside" in e for e in rep.errors)
    assert rep.data[-1].smiles == "O=CO" and rep.data[-1].pos[:, 2].abs().sum() > 0   # 3-D conformer
    with pytest.raises(MolInputError, match=r"mols.smi:3 .*cannot parse"):
        read_smiles(f, strict=True)


def test_too_large_molecule_is_reported(tmp_path):
    f = tmp_path / "big.smi"
    f.write_text("CCCCCCCCCC\nCO\n")
    rep = read_smiles(f, max_atoms=10)
    assert len(rep.data) == 1 and rep.data[0].smiles == "CO"
    assert "32 atoms, more than the model allows (10)" in rep.errors[0]


def test_sdf_record_without_3d_coordinates(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    flat = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.Compute2DCoords(flat)
    good = Chem.AddHs(Chem.MolFromSmiles("CN"))
    AllChem.EmbedMolecule(good, randomSeed=0)
    f = tmp_path / "mix.sdf"
    w = Chem.SDWriter(str(f))
    flat.SetProp("_Name", "flat_one")
    w.write(flat)
    w.write(good)
    w.close()
    rep = read_sdf(f)
    assert len(rep.data) == 1 and rep.data[0].smiles == "CN"
    assert "record 1 (flat_one): no 3-D coordinates" in rep.errors[0]
    with pytest.raises(MolInputError, match="no 3-D coordinates"):
        read_sdf(f, strict=True)


def test_egfr_sdf_reads_with_an_extended_element_set():
    rep = read_sdf(EGFR, elements=("H", "C", "N", "O", "F", "S", "Cl", "Br", "I", "P"))
    assert len(rep.data) + rep.n_skipped == 365 and len(rep.data) >= 360
    default = read_sdf(EGFR)                           # most contain Cl/Br: named, skipped, counted
    assert default.n_skipped > 0 and "outside the model's set" in default.errors[0]
    assert len(default.data) + default.n_skipped == 365


def test_xyz_frames_and_bad_frame(tmp_path):
    f = tmp_path / "two.xyz"
    f.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n2\nbroken\nC 0 0\n")
    rep = read_xyz(f)
    assert len(rep.data) == 1 and rep.data[0].z.tolist() == [3, 0, 0]
    assert "lacks x y z" in rep.errors[0] or "announced" in rep.errors[0]
    ds = pack(rep.data)
    assert len(ds) == 1 and ds[0].num_nodes == 3


@pytest.mark.parametrize("name", ["empty.sdf", "empty.smi", "empty.xyz"])
def test_empty_file(tmp_path, name):
    f = tmp_path / name
    f.write_text("")
    with pytest.raises(MolInputError, match="empty file"):
        read_molecules(f)


def test_comment_only_smiles_file_is_empty(tmp_path):
    f = tmp_path / "c.smi"
    f.write_text("# nothing here\n\n")
    with pytest.raises(MolInputError, match="empty file"):
        read_smiles(f)
