"""MRI/CT super-resolution with a conditional diffusion model (`sciffusion.plugins.mri.cli`).

    python -m recipes.mri_superres                                   # demo: MNI152, held-out slab, 2x
    python -m recipes.mri_superres --input scan.nii.gz --scale 2     # your scan: sr + uncertainty map
    python -m recipes.mri_superres --help                            # every option

Also installed as the console script `sciffusion-mri-superres`.
"""

from __future__ import annotations

import sys

from sciffusion.plugins.mri.cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """`sciffusion.plugins.mri.cli.main` under this module's name."""
    return _main(argv, prog="python -m recipes.mri_superres")


if __name__ == "__main__":
    sys.exit(main())
