"""finetune.allocator: glibc keeps a freed block for the next allocation (each case in a fresh process)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# A 20 MB block filled and freed, twice, through the C library's own malloc: with glibc's defaults the first is
# mapped and given back to the system at once, and the second faults all its pages in again, zero-filled; kept,
# the second reuses the first's pages. (torch's aligned blocks behave alike, less tidily: the heap also
# fragments around them for a few steps.)
TWICE = """
import ctypes, resource, sys
from finetune.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(20 << 20)
    ctypes.memset(block, 1, 20 << 20)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""
PAGES = (20 << 20) // 4096


def _faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", TWICE, mode], capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.split()]


def test_a_freed_block_is_reused_without_faulting_its_pages_in_again() -> None:
    default, kept = _faults("default"), _faults("kept")
    assert default[0] > PAGES // 2 and kept[0] > PAGES // 2, (default, kept)  # a first touch faults either way
    assert default[1] > PAGES // 2, default  # glibc's defaults gave the block back
    assert kept[1] < PAGES // 50, kept  # kept: the same pages again


# A 20 MB block freed slides glibc's mmap threshold up to 20 MB; then a 4 MB block, filled and freed, twice:
# from the heap and kept with the slid threshold, mapped and given back each time after map_large_blocks, and
# kept again once slide_back has set the thresholds where the sliding ends.
SLID = """
import ctypes, resource, sys
from finetune import allocator
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def fill_and_free(size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
fill_and_free(20 << 20)
for step in sys.argv[1:]:
    assert getattr(allocator, step)()
print(*(fill_and_free(4 << 20) for _ in range(2)))
"""
SMALL_PAGES = (4 << 20) // 4096


def _slid_faults(*steps: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", SLID, *steps], capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.split()]


def test_while_loading_every_large_block_is_given_back_and_afterwards_kept_again() -> None:
    slid, mapped, back = _slid_faults(), _slid_faults("map_large_blocks"), _slid_faults("map_large_blocks",
                                                                                         "slide_back")
    assert slid[1] < SMALL_PAGES // 50, slid  # glibc's own sliding: the heap kept the block
    assert mapped[0] > SMALL_PAGES // 2 and mapped[1] > SMALL_PAGES // 2, mapped  # mapped, given back, again
    assert back[1] < SMALL_PAGES // 50, back
