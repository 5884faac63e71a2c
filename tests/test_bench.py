"""The benchmark harness and the case tables (pykernels/bench/): one case per family at tiny
sizes through the harness, the table's columns and width, the error against float64, the
command line, and the quiet peak-memory measurement."""

import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch

from pykernels import backends
from pykernels._precision import tolerance
from pykernels.bench import family_module, report
from pykernels.bench.case import Point
from pykernels.bench.harness import measure, pykernels_backends
from pykernels.ops import FAMILIES

from .helpers import ROOT, run_cli

CPU = torch.device("cpu")
# One case per family; torch.compile only for one (it costs seconds per graph on a CPU).
ONE_CASE = {
    "cosine": "cosine_similarity",
    "distillation": "distillation_loss",
    "fused_linear": "fused_linear_cross_entropy",
    "contrastive": "info_nce_loss",
    "sigmoid_contrastive": "sigmoid_contrastive_loss",
    "mae": "mae_step",
    "diffusion": "ddim_step",
    "flow_matching": "flow_matching_loss",
}
COMPILED = "cosine"
NOISE = ("USDT", "profiler_start", "profiler_stop", "gpuGetDeviceCount", "No CUDA runtime is found")


def test_every_family_has_a_case_table():
    assert set(ONE_CASE) == set(FAMILIES)
    for fam in FAMILIES:
        module = family_module(fam)
        names = [c.name for c in module.CASES]
        assert len(names) == len(set(names)), fam
        for p in module.BENCH:
            assert p.case in names, (fam, p)
            assert p.mode in ("quick", "full") and p.device in ("cpu", "cuda"), (fam, p)
        # the quick run's budget: a few points per family on the CPU
        assert 1 <= sum(p.mode == "quick" and p.device == "cpu" for p in module.BENCH) <= 3, fam
        for case in module.CASES:
            assert case.eager is not None and (case.bytes or case.gemms), (fam, case.name)


@pytest.mark.parametrize("family", FAMILIES)
def test_harness_measures_one_case_per_family(family):
    module = family_module(family)
    case = next(c for c in module.CASES if c.name == ONE_CASE[family])
    skip = () if family == COMPILED else ("compile",)
    rows = measure(family, case, Point(case.name, size="tiny"), CPU, budget_s=0.05, skip=skip)
    by = {r.provider: r for r in rows}
    want = set(pykernels_backends(CPU)) | {"eager"} | ({"compile"} if not skip else set())
    assert want <= set(by), (want, set(by))
    for r in rows:
        assert r.note == "", (r.provider, r.note)
        assert r.ms > 0 and r.peak_mb >= 0 and r.roofline > 0, r
        # every provider's outputs and gradients were compared with the float64 reference
        assert math.isfinite(r.max_err) and r.max_err < 1e-3, r
        assert r.x_eager == pytest.approx(by["eager"].ms / r.ms)
    assert by["eager"].x_eager == 1.0
    for be in pykernels_backends(CPU):
        assert by[be].pykernels and by[be].within_tolerance
        assert by[be].max_err <= tolerance(torch.float32, by["eager"].max_err)
    lines = report.compact_table(family, rows)
    assert lines[0].split()[:2] == [family, "provider"]
    assert lines[0].split()[-2:] == ["max", "err"]
    assert len(lines) == 1 + max(len(rows), 2)
    assert all(len(line) <= 120 for line in lines)


def test_harness_marks_a_result_outside_tolerance():
    """A backend that is wrong shows as outside tolerance: the error column is measured."""
    module = family_module("cosine")
    case = next(c for c in module.CASES if c.name == "cosine_similarity")

    def off_by_one_percent(be, x1, x2):
        return case.run(be, x1, x2) * (1.01 if be != "reference" else 1)

    wrong = dataclasses.replace(case, run=off_by_one_percent)
    rows = measure(
        "cosine", wrong, Point(case.name, size="tiny"), CPU, budget_s=0.02, skip=("compile",)
    )
    mine = [r for r in rows if r.pykernels]
    assert mine and all(r.within_tolerance is False and r.max_err > 5e-3 for r in mine)
    assert "OUTSIDE tolerance" in report.verdict(rows, [])


def test_bench_help_and_check_command():
    out = run_cli("bench", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--quick", "--device", "--out"):
        assert flag in out.stdout
    out = run_cli("check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("\n") == 1 and "agree" in out.stdout
    assert not any(n in out.stdout + out.stderr for n in NOISE)


def test_bench_command_end_to_end_at_tiny_size(tmp_path):
    out = run_cli(
        "bench",
        "cosine",
        "--quick",
        "--size",
        "tiny",
        "--skip",
        "compile",
        "--no-check",
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("pykernels ") and "backends built" in lines[0]
    assert lines[-2].startswith("verdict: ") and str(tmp_path) in lines[-1]
    assert all(len(line) <= 120 for line in lines)
    assert not any(n in out.stdout + out.stderr for n in NOISE)
    assert out.stderr == ""  # no progress bar in a log: stderr is not a terminal
    files = sorted(os.listdir(tmp_path))
    assert {"cosine_cpu_quick.csv", "cosine_cpu_quick.md", "summary_cpu_quick.md"} <= set(files)


def test_peak_cpu_bytes_is_quiet():
    """The profiler's C++ start/stop lines do not reach stderr; the measured function's do."""
    code = (
        "import sys, torch; from pykernels._profiling import peak_cpu_bytes\n"
        "a = torch.randn(1000, 1000)\n"
        "n = peak_cpu_bytes(lambda: (a * 2, print('from fn', file=sys.stderr)))\n"
        "print(n)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 4_000_000  # the [1000, 1000] float32 product
    assert "from fn" in out.stderr
    assert not any(n in out.stderr for n in NOISE), out.stderr


def test_update_section_keeps_the_other_device(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    report.update_section(path, "cpu", "## cpu\n\nfirst")
    report.update_section(path, "cuda", "## cuda\n\ngpu figures")
    report.update_section(path, "cpu", "## cpu\n\nsecond")
    text = open(path).read()
    assert "second" in text and "first" not in text and "gpu figures" in text
    assert text.index("## cpu") < text.index("## cuda")


@pytest.mark.skipif(
    "cpu" not in backends.available(CPU), reason="the C++ CPU kernels are not built"
)
def test_default_backend_is_the_first_benchmarked():
    assert pykernels_backends(CPU)[0] == backends.resolve(None, CPU, "bench")


def test_bench_list_runs_without_data():
    """`bench --list` builds every family's inputs as fake tensors; a case that reads a
    tensor's value while building them fails there."""
    out = run_cli("bench", "--list")
    assert out.returncode == 0, out.stdout + out.stderr
    families = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert families == set(FAMILIES)
