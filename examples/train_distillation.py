"""Knowledge distillation with pykernels' fused losses, next to the same training in plain PyTorch.

    python examples/train_distillation.py          # about a minute on a laptop CPU
    python examples/train_distillation.py --quick  # the tiny parity-test size

A teacher MLP learns a synthetic 10-class task; a smaller student learns from it with
soft + hard targets and a feature term; then a tiny causal LM student is distilled from a
frozen teacher LM's logits over 8192 tokens on padded sequences. The training step uses
pykernels.distillation_loss / cross_entropy / feature_distillation_loss in the fused run,
F.kl_div / F.cross_entropy in the reference run. Writes examples/output/distillation_loss.png.
"""

import matplotlib.pyplot as plt
from _util import parse_args, plot_losses, report, save, train_both

from pykernels.models import distillation

args = parse_args(__doc__.splitlines()[0])
runs = train_both(distillation, args)
cfg = distillation.SIZES["test" if args.quick else "example"]
phases = distillation.phases(cfg)
report(runs, phases)

fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, (name, sl) in zip(axes, phases.items()):
    plot_losses(ax, runs, sl, title=f"{name}")
fig.suptitle("distillation: reference (plain PyTorch) vs fused pykernels ops, same seed")
save(fig, args, "distillation_loss.png")
