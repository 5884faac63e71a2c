"""What every reference model's training loop shares: seeding, timing, a text progress bar."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace

import torch

from .ops import get_ops


@dataclass
class Run:
    """One training run: the loss of every step, the final evaluation numbers, the wall
    time of every training step (seconds)."""

    ops: str
    losses: list[float] = field(default_factory=list)
    evals: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)
    extras: dict = field(default_factory=dict)  # what an example shows: the model, samples, ...

    def median_step_ms(self, skip: int = 5) -> float:
        times = sorted(self.step_times[skip:] or self.step_times)
        return 1e3 * times[len(times) // 2]


def generator(seed: int, device) -> torch.Generator:
    """Data and noise come from this generator, parameters from torch.manual_seed(seed):
    both runs of a parity pair draw exactly the same numbers."""
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def start_run(sizes: dict, size: str, overrides: dict, ops, seed: int, device):
    """What every model's train() does first -> (cfg, run, ops, g): the config of `size` with
    the overrides, the Run named after ops, the ops (get_ops), the data generator."""
    cfg = replace(sizes[size], **overrides)
    run = Run(ops if isinstance(ops, str) else getattr(ops, "name", "custom"))
    ops = get_ops(ops)
    return cfg, run, ops, generator(seed, device)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip=None) -> torch.Tensor:
    """One update from `loss` -> the detached loss (what train_loop's step_fn returns).
    clip: (parameters, max norm) to clip the gradients' global norm to before the step."""
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(*clip)
    opt.step()
    return loss.detach()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Progress:
    """A text progress bar on stderr: redrawn in place on a terminal, one line per tenth
    of the run otherwise (logs), nothing when disabled."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled = total, label, enabled
        self.tty = sys.stderr.isatty()
        self.every = max(1, total // (50 if self.tty else 10))
        self.start = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        done = step + 1
        if not self.enabled or (done % self.every and done != self.total):
            return
        bar = "#" * (30 * done // self.total)
        line = (
            f"{self.label:<28} [{bar:<30}] {done:>5}/{self.total}  loss {loss:8.4f}  "
            f"{time.perf_counter() - self.start:5.1f}s"
        )
        end = "\n" if done == self.total or not self.tty else ""
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()


def train_loop(run: Run, step_fn, steps: int, device, label: str, progress: bool) -> None:
    """Calls step_fn(i) -> loss tensor `steps` times, timing each call."""
    bar = Progress(steps, f"{label} [{run.ops}]", progress)
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        loss = step_fn(i)
        sync(device)
        run.step_times.append(time.perf_counter() - t0)
        run.losses.append(loss.item())
        bar.update(i, run.losses[-1])
