"""nsa_core: the library behind the NSA replication notebooks (see README.md)."""
import ctypes
import os
import sys


def _keep_freed_memory() -> None:
    """Let the process keep the memory it frees (glibc only; NSA_MALLOC=0 opts out).

    PyTorch's CPU tensors come straight from malloc, and glibc hands every block above
    32 MiB back to the OS when it is freed, so the next one page-faults its way in again,
    4 KiB at a time. At batch 128 a training step took 12,000-24,000 page faults, and a
    640-image forward cost 1.7x per image what a 128-image forward did. Without mmap for
    large blocks and without trimming, the heap settles after a few steps and freed blocks
    are reused (measured: 0-3,000 faults per step; the 640-image forward as cheap per image
    as 128). The price: the process keeps its peak memory until it exits."""
    if sys.platform != "linux" or os.environ.get("NSA_MALLOC", "1") == "0":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


_keep_freed_memory()
