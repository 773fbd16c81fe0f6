"""Probabilistic downscaling (or gap filling) of gridded fields: `python -m recipes.climate_downscale`.

The same program as the console script `sciffusion-climate-downscale`; the options and what a run
writes are in `sciffusion.plugins.climate.cli` and docs/climate.md.
ERA5 single-level data. Source: ECMWF.
"""

from __future__ import annotations

import sys

from sciffusion.plugins.climate.cli import main as _main
from sciffusion.plugins.climate.cli import parse_args as _parse_args
from sciffusion.plugins.climate.experiment import ExperimentConfig

PROG = "python -m recipes.climate_downscale"


def parse_args(argv: list[str] | None = None) -> ExperimentConfig:
    """Command line -> ExperimentConfig."""
    return _parse_args(argv, prog=PROG)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; 0 on success, 2 on bad input."""
    return _main(argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
