"""A small rectified-flow model trained and sampled with pykernels' fused flow-matching ops.

    python examples/train_flow_matching.py                       # under a minute on a laptop CPU
    python examples/train_flow_matching.py --data checkerboard   # a checkerboard (longer)
    python examples/train_flow_matching.py --quick               # a few seconds

An MLP learns the velocity noise - x0 that carries 2-D noise to eight Gaussians (or a
checkerboard), with SD3's recipe: logit-normal timesteps, x_t = (1 - sigma) x0 + sigma noise,
an MSE on the velocity. It is trained twice from one seed: once with diffusers' training
utilities and scheduler lookups written out as train_dreambooth_sd3.py composes them
("reference"), once with pykernels.sample_flow_timesteps, flow_interpolate and
flow_matching_loss ("fused"). The two loss curves must agree (checked: the script exits
with an error otherwise). Each model then samples from noise in 50 Euler steps, with
diffusers' FlowMatchEulerDiscreteScheduler and with pykernels' drop-in
FusedFlowMatchEulerDiscreteScheduler. Writes examples/output/flow_matching_samples.png.
The model is tiny: one CPU thread runs it fastest (--threads to change).
"""

import math
import sys
import time

import matplotlib.pyplot as plt
import torch
from _util import parse_args, save
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import (
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
)
from tqdm import tqdm

import pykernels as pk
from pykernels.integrations.diffusers import FusedFlowMatchEulerDiscreteScheduler

LOSS_RTOL = 1e-4  # largest relative difference allowed between the two runs' per-step losses


# ----------------------------------------------------------------------------- data and model
def checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """Points spread uniformly over the dark squares of a 4 x 4 board on [-2, 2]^2."""
    x = torch.rand(n, generator=g) * 4 - 2
    y = torch.rand(n, generator=g) - 2 * torch.randint(
        0, 2, (n,), generator=g
    )  # [-2, -1) or [0, 1)
    y = y + torch.floor(x) % 2  # every other column one square up
    return torch.stack([x, y], 1)


def gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    """Eight Gaussians (sd 0.15) on the circle of radius 2."""
    angle = torch.randint(0, 8, (n,), generator=g) * (2 * math.pi / 8)
    centres = 2 * torch.stack([angle.cos(), angle.sin()], 1)
    return centres + 0.15 * torch.randn(n, 2, generator=g)


DATASETS = {"checkerboard": checkerboard, "gaussians": gaussians}
STEPS = {"gaussians": 4000, "checkerboard": 7000}  # training steps of a full run


class VelocityMLP(torch.nn.Module):
    """v(x_t, sigma): the point, sigma and sinusoidal features of sigma through three SiLU
    layers."""

    def __init__(self, width: int = 128, freqs: int = 6):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(freqs) * math.pi)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3 + 2 * freqs, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, 2),
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = timesteps.reshape(-1, 1) / 1000
        phase = sigma * self.freqs
        return self.net(torch.cat([x, sigma, phase.sin(), phase.cos()], 1))


# ----------------------------------------------------------------------------- one training step, two ways
def reference_step(model, sched, x0, noise, g):
    """train_dreambooth_sd3.py's step: the density, the scheduler lookup, the
    interpolation, the SD3 weighting, an MSE in float32 per sample then over the batch."""
    u = compute_density_for_timestep_sampling(
        "logit_normal", x0.shape[0], logit_mean=0.0, logit_std=1.0, generator=g
    )
    indices = (u * sched.config.num_train_timesteps).long()
    timesteps = sched.timesteps[indices]
    sigmas = sched.sigmas[indices].reshape(-1, 1)  # the index of timesteps[indices] is `indices`
    noisy = (1.0 - sigmas) * x0 + sigmas * noise
    pred = model(noisy, timesteps)
    weighting = compute_loss_weighting_for_sd3("logit_normal", sigmas=sigmas)
    target = noise - x0
    return torch.mean(
        (weighting.float() * (pred.float() - target.float()) ** 2).reshape(x0.shape[0], -1), 1
    ).mean()


def fused_step(model, sched, x0, noise, g):
    timesteps, sigmas = pk.sample_flow_timesteps(
        x0.shape[0], weighting_scheme="logit_normal", generator=g, shift=sched.config.shift
    )
    pred = model(pk.flow_interpolate(x0, noise, sigmas), timesteps)
    return pk.flow_matching_loss(pred, x0, noise, sigmas)


def train(ops: str, data, args, steps: int, batch: int) -> dict:
    torch.manual_seed(args.seed)
    model = VelocityMLP()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    g = torch.Generator().manual_seed(args.seed)
    step = reference_step if ops == "reference" else fused_step
    losses, times = [], []
    for _ in tqdm(range(steps), desc=f"training [{ops}]", mininterval=0.5):
        x0, noise = data(batch, g), torch.randn(batch, 2, generator=g)
        t0 = time.perf_counter()
        loss = step(model, sched, x0, noise, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return {"model": model, "losses": losses, "times": times}


@torch.no_grad()
def sample(model, scheduler_cls, n: int, steps: int, seed: int) -> torch.Tensor:
    sched = scheduler_cls(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(steps)
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(n)), t, x).prev_sample
    return x


# ----------------------------------------------------------------------------- main
def pop_data_option() -> str:
    """--data gaussians | checkerboard, taken out of sys.argv before the shared options."""
    if "--data" not in sys.argv:
        return "gaussians"
    i = sys.argv.index("--data")
    name = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
    del sys.argv[i : i + 2]
    if name not in DATASETS:
        sys.exit(f"--data must be one of {sorted(DATASETS)}, got {name!r}")
    return name


def main():
    name = pop_data_option()
    data = DATASETS[name]
    args = parse_args(__doc__.splitlines()[0])
    if not args.threads:
        torch.set_num_threads(1)
    steps, batch = (200, 256) if args.quick else (STEPS[name], 512)
    runs = {ops: train(ops, data, args, steps, batch) for ops in ("reference", "fused")}
    ref, fused = runs["reference"], runs["fused"]
    dev = max(abs(a - b) / abs(b) for a, b in zip(fused["losses"], ref["losses"]))
    med = {ops: 1e3 * sorted(r["times"][5:])[len(r["times"][5:]) // 2] for ops, r in runs.items()}
    # 2-D points: the ops move a few kB, and each fused call's fixed cost (validation,
    # dispatch) is about that of the several small PyTorch ops it replaces
    print(
        f"training step ({batch} points in 2-D): reference {med['reference']:.2f} ms  "
        f"fused {med['fused']:.2f} ms"
    )
    print(
        f"largest relative difference between the two loss curves: {dev:.1e} (allowed {LOSS_RTOL:.0e})"
    )
    samples = {
        "diffusers scheduler": sample(
            ref["model"], FlowMatchEulerDiscreteScheduler, 4000, 50, args.seed
        ),
        "fused scheduler": sample(
            fused["model"], FusedFlowMatchEulerDiscreteScheduler, 4000, 50, args.seed
        ),
    }
    plot(data(4000, torch.Generator().manual_seed(1)), samples, runs, args)
    if not dev <= LOSS_RTOL:
        sys.exit(
            f"the fused run's losses differ from the reference run's by {dev:.1e} > {LOSS_RTOL:.0e}"
        )


def plot(data, samples, runs, args):
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (title, pts) in zip(axes, [("data", data), *samples.items()]):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set(title=title, xlim=(-2.7, 2.7), ylim=(-2.7, 2.7), aspect="equal")
    for ops, r in runs.items():
        losses = torch.tensor(r["losses"])
        smooth = losses.unfold(0, min(50, len(losses)), 1).mean(1)  # a running mean over 50 steps
        axes[3].plot(
            smooth,
            lw=1.6 if ops == "reference" else 1.0,
            ls="-" if ops == "reference" else "--",
            label=f"{ops} ops",
        )
    axes[3].set(title="loss, same seed", xlabel="step", ylabel="loss (running mean of 50 steps)")
    axes[3].legend()
    save(fig, args, "flow_matching_samples.png")


if __name__ == "__main__":
    main()
