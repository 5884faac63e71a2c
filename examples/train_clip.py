"""CLIP training with pykernels.info_nce_loss, next to the same training in plain PyTorch.

    python examples/train_clip.py          # about a minute on a laptop CPU
    python examples/train_clip.py --quick  # the tiny parity-test size
    python examples/train_clip.py --loss siglip  # SigLIP's sigmoid loss instead of InfoNCE

An image tower and a text tower learn a shared space from synthetic image-caption pairs
with a learnable logit scale; zero-shot top-1 accuracy (class prompts against images by
pykernels.pairwise_cosine_similarity) is printed before and after. The fused run calls
pykernels.info_nce_loss (or pykernels.sigmoid_contrastive_loss), the reference run builds
open_clip's logit matrix (and, for SigLIP, its dense label matrix).
Writes examples/output/clip_loss.png (siglip_loss.png).
"""

import matplotlib.pyplot as plt
from _util import parse_args, plot_losses, report, save, train_both

from pykernels.models import clip

args = parse_args(__doc__.splitlines()[0], losses=("info_nce", "siglip"))
runs = train_both(clip, args, loss=args.loss)
report(runs)

fig, ax = plt.subplots(figsize=(6, 4))
name = "SigLIP sigmoid" if args.loss == "siglip" else "CLIP InfoNCE"
plot_losses(ax, runs, title=f"{name} loss, same seed")
top1 = {ops: run.evals["zero_shot_top1"] for ops, run in runs.items()}
ax.text(
    0.98,
    0.6,
    "zero-shot top-1\n" + "\n".join(f"{k}: {v:.1%}" for k, v in top1.items()),
    transform=ax.transAxes,
    ha="right",
    va="top",
)
save(fig, args, "siglip_loss.png" if args.loss == "siglip" else "clip_loss.png")
