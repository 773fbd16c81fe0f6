"""Every recipe reads --device the same way: auto by default, and a bad name is one line with exit status 2."""

import importlib

import pytest


@pytest.mark.parametrize("recipe", ["mri_superres", "mol_generate", "climate_downscale", "kernel_smoothing"])
def test_bad_device_is_one_line_and_exit_2_before_any_work(recipe, tmp_path, capsys):
    main = importlib.import_module(f"recipes.{recipe}").main
    assert main(["--device", "gpu0", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpu0" in err[0] and "not a torch device" in err[0]
    assert not (tmp_path / "out").exists()


def test_device_defaults_to_auto():
    from recipes import climate_downscale
    from sciffusion.core.kernel_toys import build_parser as kernel_parser
    from sciffusion.plugins.molecules.cli import build_parser as mol_parser
    from sciffusion.plugins.mri.cli import build_parser as mri_parser

    assert mri_parser().parse_args([]).device == "auto"
    assert mol_parser().parse_args([]).device == "auto"
    assert climate_downscale.parse_args([]).device == "auto"
    assert kernel_parser().parse_args([]).device == "auto"
