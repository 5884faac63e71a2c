"""pykernels without Triton (macOS, Windows, CPU-only machines): the package imports, the
cpu and reference backends run, and the triton backend is reported unavailable with the
reason. Runs in a child process in which `import triton` fails."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as where it is not installed
import torch
import pykernels as pk
from pykernels import backends
from pykernels.__main__ import main

assert "triton" not in backends.available(), backends.available()
assert "triton is not importable" in backends.why_unavailable("triton")
x1, x2 = torch.randn(4, 8), torch.randn(4, 8)
for name in backends.available("cpu"):
    out = pk.cosine_similarity(x1, x2, backend=name)
    torch.testing.assert_close(out, torch.nn.functional.cosine_similarity(x1, x2, dim=-1))
try:
    pk.cosine_similarity(x1, x2, backend="triton")
except RuntimeError as exc:
    assert "triton is not importable" in str(exc), exc
else:
    raise AssertionError("backend='triton' ran without triton")
main(["info"])
"""


def test_imports_and_runs_without_triton():
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "triton     unavailable: triton is not importable" in out.stdout, out.stdout
