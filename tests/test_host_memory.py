"""sae_core/host_memory.py: with glibc's thresholds raised, the trainer's steps reuse the
memory of the step before. Each half runs in a fresh process: ReLU steps at d=64,
F=4096, batch 4096, whose [B, F] pre-activations (64 MiB) glibc would otherwise map
and zero-fill afresh every step."""

import platform
import subprocess
import sys

import pytest

STEPS = """
import resource, sys
from sae_core.host_memory import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
import torch
from sae_core.archs.relu import ReLU
from sae_core.model import StepContext
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
arch = ReLU(5.0, 0, 0.1)
sae = arch.init(64, 4096, gen)
ctx = StepContext(10, torch.zeros(4096, dtype=torch.bool), None)
x = torch.randn(4096, 64, generator=gen)
for _ in range(3):  # the process's peak
    arch.gradients(sae, x, ctx)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    arch.gradients(sae, x, ctx)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_steps_reuse_freed_memory() -> None:
    pre_pages = 5 * (4096 * 4096 * 4) // 4096  # five steps' [B, F] fp32, 4 KiB pages
    as_is, kept = faults("as-is"), faults("kept")
    assert as_is > pre_pages / 2, as_is  # mapped afresh at each step
    assert kept < as_is / 10, (kept, as_is)
