"""A small diffusion model with pykernels' fused noise, loss and sampler steps, next to plain PyTorch.

    python examples/train_diffusion.py          # about a minute on a laptop CPU
    python examples/train_diffusion.py --quick  # the tiny parity-test size

A denoiser learns to predict the noise on pictures of rectangles and discs
(pykernels.add_noise + diffusion_loss in the fused run, the diffusers formulas in plain
PyTorch in the reference run), then samples from pure noise with ddim_step and ddpm_step.
Writes examples/output/diffusion_loss.png and diffusion_samples.png.
"""

import matplotlib.pyplot as plt
from _util import parse_args, plot_losses, report, save, train_both

from pykernels.models import diffusion

args = parse_args(__doc__.splitlines()[0])
runs = train_both(diffusion, args)
report(runs)

fig, ax = plt.subplots(figsize=(6, 4))
plot_losses(ax, runs, title="diffusion (epsilon) loss, same seed")
save(fig, args, "diffusion_loss.png")


def grid(x, cols):  # [n, 1, S, S] -> one [rows*S, cols*S] picture with 1-pixel gaps
    n, _, S, _ = x.shape
    rows = (n + cols - 1) // cols
    out = x.new_full((rows * (S + 1), cols * (S + 1)), -1.0)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (S + 1) : r * (S + 1) + S, c * (S + 1) : c * (S + 1) + S] = x[k, 0]
    return out.float().cpu().clamp(-1, 1).numpy()


fig, axes = plt.subplots(2, 2, figsize=(8, 8))
cols = 6
for i, sampler in enumerate(("ddim", "ddpm")):
    for j, ops in enumerate(("reference", "fused")):
        axes[i, j].imshow(grid(runs[ops].extras[sampler], cols), cmap="gray", vmin=-1, vmax=1)
        axes[i, j].set_title(f"{sampler.upper()} samples, {ops} ops")
        axes[i, j].axis("off")
save(fig, args, "diffusion_samples.png")
