"""Keep freed host memory in the process for the next training step (glibc's malloc).

A training step allocates and frees the same large tensors every step: the [B, F]
pre-activations, the [F, d] and [B, d] gradients. glibc serves a block above its mmap
threshold with a fresh mapping and unmaps it when freed, and returns the top of its heap
to the system above the trim threshold, so each step faults its pages in again and the
kernel zero-fills them. Raising both thresholds keeps freed blocks for reuse: the
process's memory stays at its peak, which a training process reaches in its first step
anyway.

Measured on a 2-core CPU (docs/METHOD.md §5.4; the same step, one process per setting,
5-9 reps):
d=768, F=4096 at L0 64 171 ms a step with the thresholds raised against 197-207 ms
without, d=768, F=16384 604-611 ms against 785-816 ms, the dense step at d=384, F=4096
318-330 ms against 435-449 ms; the page faults per step fell from 14-26 thousand to
under 450. The price is memory held at the peak: 60 dense steps at d=768, F=4096 ended
at 602 MB resident against 483 MB, steady from step 40 on. Other C libraries (musl,
macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks below 1 GiB come from the heap and are reused: [B, F] fp32 at B=4096, F=65536
# is 1 GiB. Larger ones are mapped and unmapped as before.
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest value mallopt takes: never trim


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C
    library is not glibc (nothing is changed there)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
