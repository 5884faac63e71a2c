"""Shared by the example scripts: arguments, the two training runs, the speed line, plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone: `python examples/train_clip.py`

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

OUTPUT = ROOT / "examples" / "output"
COLORS = {"reference": "tab:blue", "fused": "tab:orange"}


def parse_args(description: str, losses: tuple[str, ...] = ()) -> argparse.Namespace:
    """The examples' common options; `losses`: the choices of a --loss option (first: default)."""
    p = argparse.ArgumentParser(description=description)
    if losses:
        p.add_argument("--loss", choices=losses, default=losses[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--quick", action="store_true", help="the tiny size the parity test uses (seconds)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUTPUT, help="folder for the picture")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def train_both(module, args, **overrides) -> dict:
    """The same seed, once with plain-PyTorch ops and once with pykernels' fused ops;
    overrides: Config fields of the model."""
    size = "test" if args.quick else "example"
    print(f"{module.__name__.split('.')[-1]}: size={size}, device={args.device}, seed={args.seed}")
    return {
        ops: module.train(
            ops, size=size, seed=args.seed, device=args.device, progress=True, **overrides
        )
        for ops in ("reference", "fused")
    }


def report(runs: dict, phases: dict | None = None) -> None:
    """Median training-step time of both runs, per phase, and how close the loss curves are."""
    phases = phases or {"training step": slice(None)}
    ref, fused = runs["reference"], runs["fused"]
    for name, sl in phases.items():
        r, f = _median_ms(ref.step_times[sl]), _median_ms(fused.step_times[sl])
        print(f"{name:>22}: reference {r:8.2f} ms  fused {f:8.2f} ms  speed-up x{r / f:.2f}")
    dev = max(abs(a - b) / abs(b) for a, b in zip(fused.losses, ref.losses))
    print(f"largest relative difference between the two loss curves: {dev:.1e}")
    for key, value in ref.evals.items():
        print(f"{key:>22}: reference {value:.6g}  fused {fused.evals[key]:.6g}")


def _median_ms(times: list[float]) -> float:
    times = sorted(times[5:] if len(times) > 20 else times)  # the first steps warm up allocators
    return 1e3 * times[len(times) // 2]


def plot_losses(ax, runs: dict, sl: slice = slice(None), title: str = "", log: bool = True) -> None:
    for ops, run in runs.items():
        ax.plot(
            run.losses[sl],
            color=COLORS[ops],
            lw=1.6 if ops == "reference" else 1.0,
            ls="-" if ops == "reference" else "--",
            label=f"{ops} ops",
        )
    ax.set(title=title, xlabel="step", ylabel="loss")
    if log:
        ax.set_yscale("log")
    ax.legend()


def save(fig, args, name: str) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / name
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
    return path
