"""The command line: `python -m pykernels info | check | bench`."""

import torch

from pykernels import _selfcheck

from .helpers import run_cli


def test_info_lists_backends():
    out = run_cli("info")
    assert out.returncode == 0, out.stderr
    for name in ("cuda", "triton", "cpu", "reference"):
        assert name in out.stdout
    assert "CUDA kernels compiled" in out.stdout


def test_bench_rejects_unknown_family_before_running():
    out = run_cli("bench", "nope")
    assert out.returncode == 2
    assert "unknown family 'nope'" in out.stderr


def test_selfcheck_every_backend_agrees_with_reference():
    """What `python -m pykernels check` (and so `make bench`) runs first."""
    entries = _selfcheck.entries()
    assert {fam for fam, *_ in entries} == set(_selfcheck.FAMILIES)
    assert _selfcheck.run(torch.device("cpu"), verbose=False) == []
