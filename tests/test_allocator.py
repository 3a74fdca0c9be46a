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
for _ in range(10):   # 64 MiB is above glibc's largest mmap threshold; 16 MiB below it
    before = faults()
    x, y = torch.ones(64 * 2**20 // 4), torch.ones(16 * 2**20 // 4)
    del x, y
    per_round.append(faults() - before)
print(sum(per_round[-3:]), min(per_round[-3:]))
"""


def _faults(flag: str) -> tuple[int, int]:
    """(total, fewest) page faults over the last three rounds."""
    env = dict(os.environ, NSA_MALLOC=flag)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    total, fewest = out.stdout.split()[-2:]
    return int(total), int(fewest)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    # settled: now and then the 16 MiB block faults in once (4,096 pages), never the 64 MiB one
    assert _faults("1")[0] < pages
    assert _faults("0")[1] > pages // 2        # the opt-out: the big block faults in every round
