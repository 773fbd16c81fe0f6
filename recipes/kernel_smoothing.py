"""Kernel score estimators on 2-D toy data (the command line of `sciffusion.core.kernel_toys`).

    python -m recipes.kernel_smoothing --dataset pinwheel --method rdks     # outputs in ./kernel_smoothing_out
    python -m recipes.kernel_smoothing --dataset 2spirals --method oism --out runs/oism

Also installed as the console script `sciffusion-kernel-smoothing`.
"""

from __future__ import annotations

import sys

from sciffusion.core.kernel_toys import main

if __name__ == "__main__":
    sys.exit(main())
