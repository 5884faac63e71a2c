"""Tables, files and verdicts of a benchmark run: the compact console table (one per
family, at most 120 columns), the full markdown / CSV / PNG in the output folder, target
lines (MET / MISS with the figure) and the one-line verdict."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import math
import os
import platform
import statistics

import torch

from .case import Point, Target
from .harness import Row

COLUMNS = ("case", "provider", "ms", "x eager", "x compile", "roofline", "peak MB", "max err")
WIDTHS = (40, 13, 9, 8, 10, 9, 9, 9)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def header(device: torch.device, built: list[str]) -> str:
    import pykernels

    return (
        f"pykernels {pykernels.__version__} | torch {torch.__version__} | "
        f"{device.type}: {machine(device)} | backends built: {', '.join(built) or 'none'}"
    )


def _num(v: float, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _ms(v: float) -> str:
    return _num(v, ".3g" if v < 100 else ".0f")


def _cells(r: Row) -> list[str]:
    err = _num(r.max_err, ".1e") + ("!" if r.within_tolerance is False else "")
    return [
        r.provider,
        _ms(r.ms),
        _num(r.x_eager, ".2f"),
        _num(r.x_compile, ".2f"),
        _num(r.roofline * 100, ".0f") + ("%" if not math.isnan(r.roofline) else ""),
        _num(r.peak_mb, ".3g" if r.peak_mb < 1000 else ".0f"),
        err,
    ]


def compact_table(family: str, rows: list[Row]) -> list[str]:
    """The console table of one family: the case name, then its shape and dtype, in the
    first column of each group of provider rows; failures as a short note."""
    fmt = "".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(WIDTHS))
    out = [fmt.format(family, *COLUMNS[1:]).rstrip()]
    groups = {}
    for r in rows:
        groups.setdefault((r.case, r.shape, r.dtype), []).append(r)
    for (case, shape, dtype), members in groups.items():
        labels = [case, f"  {shape} {dtype}"]
        for i, r in enumerate(members):
            label = (labels[i] if i < len(labels) else "")[: WIDTHS[0] - 1]
            if math.isnan(r.ms):
                out.append(f"{label:<{WIDTHS[0]}}{r.provider:<{WIDTHS[1]}}{r.note}"[:120])
            else:
                out.append(fmt.format(label, *_cells(r)).rstrip())
        if len(members) < len(labels):
            out.append(labels[1])
    return out


def markdown_table(rows: list[Row]) -> str:
    cols = (
        "case",
        "shape",
        "dtype",
        "provider",
        "ms",
        "x eager",
        "x compile",
        "roofline",
        "peak MB",
        "max err vs fp64",
        "note",
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.case, r.shape, r.dtype] + _cells(r) + [r.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[f.name for f in dataclasses.fields(Row)])
        w.writeheader()
        w.writerows(dataclasses.asdict(r) for r in rows)


def plot(rows: list[Row], path: str, title: str) -> bool:
    """Speedup over eager per case and provider, as a bar chart; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = list(dict.fromkeys((r.case, r.shape, r.dtype) for r in rows))
    provs = list(dict.fromkeys(r.provider for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(cases)), 4))
    width = 0.8 / len(provs)
    for i, p in enumerate(provs):
        ys = [
            next(
                (r.x_eager for r in rows if (r.case, r.shape, r.dtype) == c and r.provider == p),
                0.0,
            )
            for c in cases
        ]
        ax.bar(
            [j + i * width for j in range(len(cases))],
            [0 if math.isnan(y) else y for y in ys],
            width,
            label=p,
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels([f"{c}\n{s} {d}" for c, s, d in cases], fontsize=7)
    ax.set_ylabel("speedup over eager")
    ax.set_title(title, fontsize=9)
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _figure(target: Target, mine: Row, rows: list[Row]) -> tuple[bool, str] | None:
    """(met, the measured figure) of one target, None when its provider has no time."""
    other = next((r for r in rows if r.provider == target.against), None)
    if target.kind == "roofline":
        got = mine.roofline
        return (got >= target.value, f"{got:.0%} roofline") if not math.isnan(got) else None
    if other is None:
        return None
    if target.kind == "speedup":
        got = other.ms / mine.ms
        return None if math.isnan(got) else (got >= target.value, f"{got:.2f}x {target.against}")
    got = mine.peak_mb / other.peak_mb
    return (
        (
            got <= target.value,
            f"peak {mine.peak_mb:.3g} MB = {got:.3f} x {target.against}'s {other.peak_mb:.3g} MB",
        )
        if not math.isnan(got)
        else None
    )


def target_lines(point: Point, rows: list[Row], default: str) -> list[tuple[bool, str]]:
    """(met, 'MET  case shape dtype: backend figure (target)') for each target of a Point."""
    mine = next((r for r in rows if r.provider == default), None)
    out = []
    for t in point.targets:
        res = _figure(t, mine, rows) if mine is not None and not math.isnan(mine.ms) else None
        where = f"{point.case} {rows[0].shape} {rows[0].dtype}"
        if res is None:
            out.append((False, f"MISS {where}: no figure for {t.describe()}"))
        else:
            met, fig = res
            line = f"{'MET ' if met else 'MISS'} {where}: {default} {fig} (target {t.describe()})"
            out.append((met, line))
    return out


def legend(built: list[str]) -> list[str]:
    """Two lines saying what the providers and the columns are."""
    return [
        f"providers: {'/'.join(built) or 'none'} = pykernels; eager = the idiomatic PyTorch code; "
        "compile = torch.compile of it; others: peers",
        "ms: median fwd+bwd (fwd for inference ops); x: speedup; roofline: time of the copy or "
        "torch.mm of the same work / ms",
    ]


def verdict(rows: list[Row], targets: list[tuple[bool, str]]) -> str:
    """One line: tolerance, how the pykernels rows compare with eager and compile, targets."""
    mine = [r for r in rows if r.pykernels and not math.isnan(r.ms)]
    bad = [r for r in rows if r.pykernels and r.within_tolerance is False]
    names = "/".join(dict.fromkeys(r.provider for r in mine)) or "pykernels"
    parts = [
        f"{names} within float64 tolerance ({len(mine)} rows)"
        if not bad
        else f"{len(bad)} {names} result(s) OUTSIDE tolerance of float64 (marked !)"
    ]
    for col, label in (("x_eager", "geomean vs eager"), ("x_compile", "vs compile")):
        xs = [getattr(r, col) for r in mine if getattr(r, col) > 0]
        if xs:
            gm = math.exp(statistics.fmean(math.log(x) for x in xs))
            parts.append(f"{label} {gm:.2f}x ({min(xs):.2f}-{max(xs):.2f}x)")
    if targets:
        parts.append(f"targets met: {sum(m for m, _ in targets)} of {len(targets)}")
    return "verdict: " + "; ".join(parts)


def summary_markdown(
    device: torch.device,
    built: list[str],
    command: str,
    tables: dict,
    targets: list[tuple[bool, str]],
) -> str:
    """Date, machine, command and the full tables: what benchmarks/RESULTS.md holds per device."""
    lines = [
        f"## {device.type}: {machine(device)}",
        "",
        f"{datetime.date.today()} | torch {torch.__version__} | backends built: {', '.join(built)}",
        "",
        f"`{command}`",
        "",
    ]
    for family, rows in tables.items():
        lines += [f"### {family}", "", markdown_table(rows), ""]
    if targets:
        lines += ["### targets", ""] + [f"- {t}" for _, t in targets] + [""]
    return "\n".join(lines)


def update_section(path: str, device_type: str, text: str) -> None:
    """Replace this device's section of a results file (between its markers), keeping the
    other device's."""
    begin, end = f"<!-- bench:{device_type} -->", f"<!-- /bench:{device_type} -->"
    old = open(path).read() if os.path.exists(path) else "# Measured results\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(new)
