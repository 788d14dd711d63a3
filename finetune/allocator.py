"""glibc's malloc (Linux), told what a CPU run's allocations look like: two settings, each for one phase.

By default glibc gives large freed blocks back to the system: a block over its mmap threshold at once, and the
heap's free top once it grows past the trim threshold. Both thresholds slide: freeing a mapped block raises the
mmap threshold to that block's size (up to 32 MB), so later blocks of that size come from the heap instead.

Quantising while loading (QLoRA on a CPU): transformers reads each weight, makes a 16-bit copy, quantises it and
frees the copy, between the quantised weights that stay. Once the threshold has slid, those copies come from the
heap, and the holes they leave between kept weights cannot be given back: the bundled model's load peaked
anywhere from 1,090 to 1,410 MB in 14 runs of the same code (and held up to 290 MB more afterwards, 2026-12-03,
Intel AMX Xeon). `map_large_blocks` fixes the threshold at glibc's starting 128 KB
for the load: every copy is mapped and given back whole, and the peak measured 1,082-1,090 MB in six runs out of six.

Training packed batches: a CPU training step frees the same buffers every step (activations, the vocabulary
projection's logits, the loss's chunks) and the next step faults the same pages in again, zero-filled by the
kernel, one 4 KB page at a time. In a compiled step of the bench recipe torch.profiler put 105 ms on the
vocabulary projection with glibc's defaults, 31 ms with nothing ever handed back (17 ms alone, into a buffer
allocated once), and 191 ms on the loss's chunk copies. Keeping blocks of up to 32 MB in the heap and never
trimming it (`keep_freed_memory`) halved the minor page faults of a run and made packed steps 7-12% faster on a
2-core AMX Xeon (docs/bench.md); handing back nothing at all (blocks over 32 MB too, such as those logits)
measured the same within noise, and the threshold keeps one very large block from staying held for good.

Only for packed batches: they hold about the same number of tokens every step, so a step asks for the sizes the
last one freed and the kept blocks fit. Padded batches change width from step to step; with them the peak grew
5% (about the spread between runs) and the step hardly changed (0-3%), so they keep glibc's defaults, or after a
quantising load `slide_back`: the thresholds where glibc's own sliding ends.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's first mmap threshold (DEFAULT_MMAP_THRESHOLD_MIN), where its sliding starts.
START_MMAP_THRESHOLD = 128 << 10
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): larger blocks are still mapped and given
# back at once, so one very large buffer never stays held.
MMAP_THRESHOLD = 32 << 20
# The heap's free top is given back only past this (mallopt takes an int: the largest value it can hold).
TRIM_THRESHOLD = 2**31 - 1


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None where the process's malloc is another (macOS, musl, Windows)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    mallopt = _mallopt()
    # Both or neither: setting one turns off glibc's own sliding of the other (alone, a trim threshold left
    # every block over 128 KB mapped, and a step took 1.7x as long).
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 \
        and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1


def map_large_blocks() -> bool:
    """Map every block over 128 KB, so that freeing it gives it back at once; False where not glibc's or refused.

    Process-wide, and it ends glibc's sliding for the rest of the process: call it before a load that quantises
    on a CPU, and `slide_back` (or `keep_freed_memory`) after it.
    """
    return _set(START_MMAP_THRESHOLD, 2 * START_MMAP_THRESHOLD)


def slide_back() -> bool:
    """The thresholds where glibc's sliding ends (32 MB, its trim twice that), for a run after map_large_blocks."""
    return _set(MMAP_THRESHOLD, 2 * MMAP_THRESHOLD)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MB for reuse; False where it is not glibc's or refused.

    Process-wide, for the rest of the process: call it once the run is known to pack its batches on a CPU.
    """
    return _set(MMAP_THRESHOLD, TRIM_THRESHOLD)
