"""Freed memory kept for the next training step, for packed batches on a CPU with glibc's malloc (Linux).

By default glibc gives large freed blocks back to the system: a block over its mmap threshold at once, and the
heap's free top once it grows past the trim threshold. A CPU training step frees the same buffers every step
(activations, the vocabulary projection's logits, the loss's chunks) and the next step faults the same pages
in again, zero-filled by the kernel, one 4 KB page at a time. In a compiled step of the bench recipe
torch.profiler put 105 ms on the vocabulary projection with glibc's defaults, 31 ms with nothing ever handed
back (17 ms alone, into a buffer allocated once), and 191 ms on the loss's chunk copies. Keeping blocks of up to
32 MB in the heap and never trimming it halved the minor page faults of a run and made packed steps 7-12% faster
on a 2-core AMX Xeon (docs/bench.md); handing back nothing at all (blocks over 32 MB too, such as those logits)
measured the same within noise, and the threshold keeps one very large block from staying held for good.

Only for packed batches: they hold about the same number of tokens every step, so a step asks for the sizes the
last one freed and the kept blocks fit. Padded batches change width from step to step; with them the peak grew
5% (about the spread between runs) and the step hardly changed (0-3%), so they keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): larger blocks are still mapped and given
# back at once, so one very large buffer never stays held.
MMAP_THRESHOLD = 32 << 20
# The heap's free top is given back only past this (mallopt takes an int: the largest value it can hold).
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MB for reuse; False where it is not glibc's or refused.

    Process-wide, for the rest of the process: call it once the run is known to pack its batches on a CPU.
    """
    if platform.libc_ver()[0] != "glibc":
        return False  # macOS, musl, Windows: another malloc, other tunables
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both or neither: setting one turns off glibc's own adjustment of the other (alone, a trim threshold left
    # every block over 128 KB mapped, and a step took 1.7x as long).
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
