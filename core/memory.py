"""Host-memory behaviour of long sampling and training loops on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


@functools.cache
def retain_freed_memory(threshold: int = 1 << 30) -> bool:
    """Keep freed CPU buffers below `threshold` bytes in the process heap (glibc `mallopt`).

    Every denoising or training step allocates and frees the same activations (tens of MB). By default
    glibc serves blocks above 32 MB with mmap and hands them back on free, so the kernel
    zero-fills every page again on the next step: on the whole-brain MRI run that was
    66 million page faults and as much system time as compute. Raising the mmap and trim
    thresholds makes the next step reuse the freed memory. Returns False (and changes
    nothing) where the C library is not glibc. Once per process.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
