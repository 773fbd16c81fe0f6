"""Colin27 (`ch2bet.nii.gz` from Debian's `mricron-data`): a validation brain, never trained on.

One human subject scanned many times and averaged, 1 mm isotropic, skull-stripped, 181 x 217 x 181
voxels. It is not part of any Python wheel: `apt-get install mricron-data` installs it, and
`colin27_path` finds it through `dpkg -L mricron-data` or the package's usual folder. Only this
file of the package is used; the package's other templates are kept for independent evaluation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sciffusion.plugins.mri.io import Volume, load_volume

FILENAME = "ch2bet.nii.gz"
KNOWN_DIRS = ("/usr/share/mricron/templates", "/usr/lib/mricron/templates", "/usr/local/share/mricron/templates")
ENV = "SCIFFUSION_COLIN27"  # an explicit path (e.g. a copy outside a Debian system)
MISSING = (f"Colin27 ({FILENAME}) not found: install Debian's mricron-data (apt-get install mricron-data) "
           f"or set {ENV} to the file")


class Colin27Missing(FileNotFoundError):
    """Colin27 is not installed; the message says how to install it."""


def _from_dpkg() -> Path | None:
    if shutil.which("dpkg") is None:
        return None
    try:
        out = subprocess.run(["dpkg", "-L", "mricron-data"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.stdout.splitlines():
        if line.strip().endswith("/" + FILENAME):
            return Path(line.strip())
    return None


def colin27_path() -> Path:
    """Path of `ch2bet.nii.gz`: `$SCIFFUSION_COLIN27`, then `dpkg -L mricron-data`, then known folders.

    Raises `Colin27Missing` (a `FileNotFoundError`) with the installation hint when none exists.
    """
    env = os.environ.get(ENV)
    candidates = [Path(env)] if env else []
    candidates.append(_from_dpkg())
    candidates += [Path(d) / FILENAME for d in KNOWN_DIRS]
    for c in candidates:
        if c is not None and c.is_file():
            return c
    raise Colin27Missing(MISSING)


def load_colin27() -> Volume:
    """Colin27 as a `Volume` (intensities as stored, 0 outside the brain)."""
    return load_volume(colin27_path())


def colin27_available() -> bool:
    """True when `colin27_path` finds the file (for skipping tests and benchmarks)."""
    try:
        colin27_path()
    except Colin27Missing:
        return False
    return True
