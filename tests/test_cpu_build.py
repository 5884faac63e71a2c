"""The CPU kernels' two builds (common/cpu_capability.h): the baseline build runs and
agrees with the reference, and AVX2 code exists only under AVX2-named symbols, so a CPU
without AVX2 never executes it through a shared inline function."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import pykernels as pk

pytestmark = pytest.mark.skipif(not pk.backends.extension_loaded(), reason="pykernels._C not built")

# Runs in a child process: the capability is chosen once per process, from the environment.
_CHILD = r"""
import torch, pykernels as pk
from tests.helpers import as64, assert_close, grads, randn
print(torch.ops.pykernels._cpu_capability())
s = randn(6, 1000, scale=3, seed=1, requires_grad=True)
t = randn(6, 1000, scale=3, seed=2, requires_grad=True)
y = torch.tensor([3, -100, 999, 0, 5, 7])
for kw in (dict(temperature=2.0), dict(temperature=0.5, beta=0.5, labels=y, hard_weight=0.5, label_smoothing=0.1),
           dict(temperature=4.0, beta=1.0, reduction="none")):
    out = pk.distillation_loss(s, t, backend="cpu", **kw)
    base = pk.distillation_loss(s, t, backend="reference", **kw)  # PyTorch's own float32 error
    s64, t64 = as64(s, t)
    want = pk.distillation_loss(s64, t64, backend="reference", **kw)
    assert_close(out, want, torch.float32, baseline=base)
    for g, b, w in zip(grads(out, [s, t]), grads(base, [s, t]), grads(want, [s64, t64])):
        assert_close(g, w, torch.float32, baseline=b, what="gradient")
print("ok")
"""


def _run_child(capability: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("PYKERNELS_CPU_CAPABILITY", None)
    if capability is not None:
        env["PYKERNELS_CPU_CAPABILITY"] = capability
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.split()


def test_baseline_build_matches_reference():
    assert _run_child("default") == ["default", "ok"]


def test_default_build_choice_matches_the_cpu():
    lines = _run_child(None)
    assert lines[1] == "ok"
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    has_avx2 = all(re.search(rf"\b{f}\b", flags) for f in ("avx2", "fma", "f16c"))
    # An x86-64 build (GCC) on a CPU with AVX2 + FMA + F16C must choose the AVX2 build.
    assert lines[0] == ("avx2" if has_avx2 and os.uname().machine == "x86_64" else "default")


@pytest.mark.skipif(
    shutil.which("objdump") is None or os.uname().machine != "x86_64",
    reason="needs objdump on x86-64",
)
def test_avx_instructions_only_in_avx2_symbols():
    """Every function of the library that contains a VEX instruction (AVX and later) has
    AVX2 in its name: the kernels of the AVX2 builds, and the at::vec::AVX2 and
    pykernels::cpu::AVX2 helpers they instantiate. A baseline function compiled inside an
    AVX2 region would show up here."""
    so = pk._C.__file__
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", so],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    func, vex_funcs = None, set()
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            func = m.group(1)
        elif re.search(r"\tv[a-z0-9]+\s", line):
            vex_funcs.add(func)
    assert vex_funcs, "no AVX2 code at all: the AVX2 builds are missing"
    stray = sorted(f for f in vex_funcs if "avx2" not in f.lower())
    assert not stray, f"VEX instructions in functions outside the AVX2 builds: {stray[:5]}"
