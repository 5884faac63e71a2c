"""A masked autoencoder with pykernels' fused MAE ops, next to the same training in plain PyTorch.

    python examples/train_mae.py          # about a minute on a laptop CPU
    python examples/train_mae.py --quick  # the tiny parity-test size

A tiny ViT (patch 4 on 32x32 images) sees a random 25% of the patches and reconstructs
the rest. The fused run uses pykernels.random_masking, gather_patches,
unshuffle_with_mask_tokens and masked_patch_loss; the reference run the MAE authors'
argsort / gather code. Writes examples/output/mae_loss.png and mae_reconstruction.png
(input, what the encoder saw, the reconstruction, for both runs).
"""

import matplotlib.pyplot as plt
import torch
from _util import parse_args, plot_losses, report, save, train_both

from pykernels.models import mae

args = parse_args(__doc__.splitlines()[0])
runs = train_both(mae, args)
report(runs)
cfg = mae.SIZES["test" if args.quick else "example"]

fig, ax = plt.subplots(figsize=(6, 4))
plot_losses(ax, runs, title="MAE masked-patch loss, same seed")
save(fig, args, "mae_loss.png")


def show(img):  # [C, H, W] in about [-1, 1] -> [H, W, C] in [0, 1]
    return ((img.float().cpu() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


ref, fused = runs["reference"].extras, runs["fused"].extras
n = 6
fig, axes = plt.subplots(4, n, figsize=(1.6 * n, 6.8))
for j in range(n):
    patch_mask = ref["mask"][j].unsqueeze(-1).expand(-1, cfg.patch**2 * cfg.channels)
    visible = mae.unpatchify(patch_mask.unsqueeze(0), cfg)[0] < 0.5  # pixels the encoder saw
    image = ref["images"][j]
    # as the MAE paper shows them: the visible patches pasted over the prediction (the loss
    # does not train the prediction there)
    rows = (
        image,
        torch.where(visible, image, torch.full_like(image, -1.0)),
        torch.where(visible, image, mae.unpatchify(ref["pred"][j : j + 1], cfg)[0]),
        torch.where(visible, image, mae.unpatchify(fused["pred"][j : j + 1], cfg)[0]),
    )
    for i, img in enumerate(rows):
        axes[i, j].imshow(show(img))
        axes[i, j].axis("off")
for i, title in enumerate(
    ("input", "visible 25%", "reconstruction\n(reference ops)", "reconstruction\n(fused ops)")
):
    axes[i, 0].set_title(title, fontsize=8, loc="left")
fig.suptitle("MAE on held-out images")
save(fig, args, "mae_reconstruction.png")
