"""Check every built backend against float64, then time each family's cases against
the idiomatic PyTorch code (eager), torch.compile of it and the installed peers.

--quick (what `make bench` runs): small sizes, a compact table per family, a one-line
verdict; without it, the full sizes with their targets (MET / MISS). Full tables, CSV
and PNG plots go to the output folder either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import warnings

import torch

from ..ops import FAMILIES
from . import family_module, report
from .harness import describe, measure, pykernels_backends

# The "(no GPU) No CUDA runtime is found" warning of torch.utils.cpp_extension, which
# torch.compile imports on a machine with a CUDA build of torch and no driver: no news to
# someone timing CPU code.
QUIET_LOGGERS = ("torch.utils.cpp_extension",)
BUDGET_S = {"quick": 0.8, "full": 4.0}  # timing per Point, shared by its providers


def default_out() -> str:
    """benchmarks/results in a source checkout, else ./pykernels-bench-results."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    checkout = os.path.exists(os.path.join(root, "setup.py"))
    if checkout and os.path.isdir(os.path.join(root, "benchmarks")):
        return os.path.join(root, "benchmarks", "results")
    return os.path.abspath("pykernels-bench-results")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m pykernels bench", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    # (no choices=: argparse rejects an empty list against choices on some Pythons)
    ap.add_argument("families", nargs="*", help=f"any of {', '.join(FAMILIES)} (default: all)")
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, compact tables (what `make bench` runs)"
    )
    ap.add_argument(
        "--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu"
    )
    ap.add_argument(
        "--out",
        help="folder for the full tables, CSV and plots (default: benchmarks/"
        "results in a checkout, else ./pykernels-bench-results)",
    )
    ap.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write this device's section of FILE (benchmarks/RESULTS.md)",
    )
    ap.add_argument(
        "--list", action="store_true", help="list the points and their targets, run nothing"
    )
    ap.add_argument("--no-check", action="store_true", help="skip the backend check")
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PROVIDER",
        help="leave a provider out (compile, a backend or a peer; repeatable)",
    )
    ap.add_argument(
        "--size",
        help="run every point at this size of the family's table instead "
        "(tiny: a smoke test of the harness)",
    )
    return ap


class _Progress:
    """A tqdm bar on a terminal (removed when done); nothing in a log or without tqdm."""

    def __init__(self, total: int, desc: str):
        self.bar, self.desc = None, desc
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=total,
            desc=desc,
            leave=False,
            file=sys.stderr,
            disable=None,
            bar_format="{desc} {bar:20} {n}/{total} [{elapsed}]",
        )

    def __call__(self, n: int, doing: str | None = None) -> None:
        if self.bar is not None:
            if doing is not None:
                self.bar.set_description_str(f"{self.desc}: {doing}"[:60])
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _points(module, mode: str, device: torch.device) -> list:
    return [p for p in module.BENCH if p.mode == mode and p.device == device.type]


def _case(module, name):
    return next(c for c in module.CASES if c.name == name)


def run_family(
    family: str, module, mode: str, device: torch.device, log: list, ns
) -> tuple[list, list]:
    """(rows, target lines) of one family's Points."""
    points = _points(module, mode, device)
    if ns.size:
        points = [dataclasses.replace(p, size=ns.size) for p in points]
    cases = [_case(module, p.case) for p in points]
    # per Point: the backends, eager, compile, the peers, the timing
    steps = [
        len(pykernels_backends(device))
        + 3
        + len(c.peers)
        - len(set(ns.skip) & ({"compile"} | set(c.peers)))
        for c in cases
    ]
    progress = _Progress(sum(steps), family)
    rows, targets = [], []
    default = pykernels_backends(device)[0] if pykernels_backends(device) else "reference"
    try:
        for point, case in zip(points, cases):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                point_rows = measure(family, case, point, device, BUDGET_S[mode], progress, ns.skip)
            log += [f"{family} {case.name}: {w.category.__name__}: {w.message}" for w in caught]
            rows += point_rows
            targets += report.target_lines(point, point_rows, default)
    finally:
        progress.close()
    return rows, targets


def _write(family: str, rows: list, out: str, stem: str, title: str) -> None:
    report.write_csv(rows, os.path.join(out, f"{family}_{stem}.csv"))
    with open(os.path.join(out, f"{family}_{stem}.md"), "w") as fh:
        fh.write(f"# {family}\n\n{title}\n\n{report.markdown_table(rows)}\n")
    report.plot(rows, os.path.join(out, f"{family}_{stem}.png"), f"{family}: {title}")


def list_points(families, mode: str, device: torch.device) -> None:
    """One line per Point: family, case, shape, dtype, targets (inputs built as fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for family in families:
        module = family_module(family)
        for p in _points(module, mode, device) if module is not None else []:
            case = _case(module, p.case)
            with FakeTensorMode(allow_non_fake_inputs=True):
                inputs = case.inputs(p.dtype, "cpu", p.size, requires_grad=False)
            shape, dtype = describe(inputs, p.dtype, not case.grads)
            targets = ", ".join(t.describe() for t in p.targets)
            print(f"{family:<20}{p.case:<40}{shape + ' ' + dtype:<29}{targets}".rstrip())


def _check(device: torch.device) -> int:
    from .. import _selfcheck

    return 1 if _selfcheck.run(device) else 0


def main(argv: list[str]) -> int:
    ap = parser()
    ns = ap.parse_args(argv)
    unknown = [f for f in ns.families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mode = "quick" if ns.quick else "full"
    if ns.list:
        list_points(ns.families or FAMILIES, mode, device)
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.time()
    out = ns.out or default_out()
    os.makedirs(out, exist_ok=True)
    built = pykernels_backends(device)
    print(report.header(device, built), flush=True)
    print("\n".join(report.legend(built)), flush=True)
    if not ns.no_check and _check(device):
        print("backend check failed: not benchmarking", file=sys.stderr)
        return 1
    tables, targets, log = {}, [], []
    stem = device.type + ("_quick" if ns.quick else "")
    for family in ns.families or FAMILIES:
        module = family_module(family)
        if module is None or not _points(module, mode, device):
            print(f"\n{family}: no {mode} cases on {device.type}")
            continue
        rows, lines = run_family(family, module, mode, device, log, ns)
        tables[family], targets = rows, targets + lines
        table = report.compact_table(family, rows) + [t for _, t in lines]
        print("\n" + "\n".join(table), flush=True)
        _write(family, rows, out, stem, report.header(device, built))
    command = "python -m pykernels bench " + " ".join(argv)
    summary = report.summary_markdown(device, built, command.strip(), tables, targets)
    with open(os.path.join(out, f"summary_{stem}.md"), "w") as fh:
        warned = "".join(f"- {w}\n" for w in log)
        fh.write(summary + (f"\n### warnings\n\n{warned}" if log else ""))
    if ns.markdown:
        report.update_section(ns.markdown, device.type, summary)
    rows = [r for t in tables.values() for r in t]
    print("\n" + report.verdict(rows, targets))
    print(f"full tables, CSV and plots: {out} ({time.time() - t0:.0f} s)")
    return 1 if any(r.within_tolerance is False for r in rows) else 0
