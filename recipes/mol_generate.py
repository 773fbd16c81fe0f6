"""Generate, score or train molecule diffusion models (`sciffusion.plugins.molecules.cli`).

    python -m recipes.mol_generate                      # 100 molecules, shipped graph model
    python -m recipes.mol_generate --model egnn --n 100 # the 3-D route (E(3)-equivariant EDM)
    python -m recipes.mol_generate --help               # every option

Also installed as the console script `sciffusion-mol-generate`.
"""

from __future__ import annotations

import sys

from sciffusion.plugins.molecules.cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """`sciffusion.plugins.molecules.cli.main` under this module's name."""
    return _main(argv, prog="python -m recipes.mol_generate")


if __name__ == "__main__":
    sys.exit(main())
