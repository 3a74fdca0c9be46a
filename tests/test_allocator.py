"""Importing nsa_core makes glibc keep freed memory (nsa_core/__init__.py): in a loop that
allocates and frees large tensors, as training and evaluation do, the memory settles and
stops page-faulting in again."""
import os
import subprocess
import sys

import pytest

CHILD = """
import resource, torch, nsa_core
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_round = []
for _ in range(8):   # 64 MiB is above glibc's largest mmap threshold; 16 MiB below it
    before = faults()
    x, y = torch.ones(64 * 2**20 // 4), torch.ones(16 * 2**20 // 4)
    del x, y
    per_round.append(faults() - before)
print(max(per_round[-2:]))
"""


def _faults(flag: str) -> int:
    env = dict(os.environ, NSA_MALLOC=flag)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    assert _faults("1") < pages // 10          # settled: a few faults at most
    assert _faults("0") > pages // 2           # the opt-out: the big block faults in every round
