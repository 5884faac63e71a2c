"""Distil a small causal LM into a smaller one with the fused LM-head loss.

A random-init Hugging Face LlamaForCausalLM teacher (4 layers) and student (2 layers), V =
32000, on synthetic token data. The student trains twice from one seed: with the unfused
composition (both models' [tokens, V] logits, then F.kl_div at T = 2 plus F.cross_entropy)
and with pykernels.integrations.transformers.causal_lm_distillation_loss (the heads fused
into pykernels.fused_linear_distillation_loss: no logits). It prints each run's peak
memory of one training step and its step time, checks that the two loss curves agree,
and saves a plot. About a minute on a 2-core CPU (transformers needed).

    python examples/distill_llm.py [--quick] [--device cuda]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _util import parse_args, plt, save
from tqdm import tqdm

try:
    import transformers
except ImportError as exc:
    raise SystemExit(f"this example needs transformers (pip install transformers): {exc}") from None

from pykernels._profiling import peak_cpu_bytes
from pykernels.integrations.transformers import causal_lm_distillation_loss, shift_labels

V, T, HARD = 32000, 2.0, 0.5
SIZES = {
    "example": dict(steps=30, batch=4, seq=64, hidden=64),
    "test": dict(steps=6, batch=2, seq=16, hidden=32),
}


def llama(layers: int, hidden: int, seed: int, device) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return transformers.LlamaForCausalLM(config).to(device)


def unfused_loss(student, teacher, ids):
    """What the training code looks like without pykernels: both [tokens, V] logits."""
    s = student(ids).logits.flatten(0, 1)
    with torch.no_grad():
        t = teacher(ids).logits.flatten(0, 1)
    y = shift_labels(ids).flatten()
    counted = y != -100
    kl = F.kl_div(
        F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none"
    ).sum(-1)
    soft = (kl * counted).sum() / counted.sum() * T * T
    return soft + HARD * F.cross_entropy(s, y)


def fused_loss(student, teacher, ids):
    return causal_lm_distillation_loss(student, teacher, ids, ids, temperature=T, hard_weight=HARD)


def batches(size: dict, seed: int, device):
    """Synthetic tokens: a repeating pattern with noise, so the teacher's view is learnable."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(size["steps"]):
        base = torch.randint(0, 512, (size["batch"], 1), generator=gen)
        ids = (base + torch.arange(size["seq"]) * 7) % V
        noise = torch.randint(0, V, ids.shape, generator=gen)
        keep = torch.rand(ids.shape, generator=gen) < 0.8
        yield torch.where(keep, ids, noise).to(device)


def train(loss_fn, name: str, size: dict, seed: int, device):
    teacher = llama(4, size["hidden"], seed + 1, device).eval()
    student = llama(2, size["hidden"], seed + 2, device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    losses, times = [], []
    for ids in tqdm(list(batches(size, seed, device)), desc=name):
        t0 = time.perf_counter()
        loss = loss_fn(student, teacher, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    ids = next(batches(size, seed + 5, device))
    step = lambda: loss_fn(student, teacher, ids).backward()  # noqa: E731
    peak = peak_memory(step, device)
    student.zero_grad(set_to_none=True)
    return losses, times, peak


def peak_memory(fn, device) -> float:
    """MB allocated at the peak of fn beyond what existed before it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return peak_cpu_bytes(fn) / 2**20


def main():
    args = parse_args(__doc__.splitlines()[0])
    size = SIZES["test" if args.quick else "example"]
    runs = {
        name: train(fn, name, size, args.seed, args.device)
        for name, fn in (("unfused", unfused_loss), ("fused", fused_loss))
    }
    for name, (losses, times, peak) in runs.items():
        ms = 1e3 * sorted(times[2:])[len(times[2:]) // 2]
        print(
            f"{name:>8}: peak memory of a training step {peak:8.1f} MB, median step {ms:7.1f} ms,"
            f" final loss {losses[-1]:.4f}"
        )
    ref, fused = runs["unfused"][0], runs["fused"][0]
    dev = max(abs(a - b) / abs(b) for a, b in zip(fused, ref))
    print(f"largest relative difference between the two loss curves: {dev:.1e}")
    assert dev < 1e-3, "the fused and unfused loss curves disagree"
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(ref, lw=1.6, label="unfused logits + F.kl_div + F.cross_entropy")
    ax.plot(fused, ls="--", lw=1.0, label="pykernels fused LM-head loss")
    ax.set(title=f"Llama 4 -> 2 layers, V = {V}, T = {T}", xlabel="step", ylabel="loss")
    ax.legend()
    save(fig, args, "distill_llm_loss.png")


if __name__ == "__main__":
    main()
