"""Knowledge distillation, two ways, on synthetic data.

1. Classifier: a teacher MLP learns a synthetic 10-class task with the hard-label cross
   entropy; a smaller student learns from it with Hinton's loss (soft targets at
   temperature T plus the hard labels) and a feature-distillation term (FitNets: the
   student's hidden layer, projected to the teacher's width, pulled towards the teacher's).
2. Language model: a tiny causal transformer student is distilled from a frozen teacher
   LM's logits over a vocabulary of 8192 tokens, on padded sequences sampled from the
   teacher; padded positions carry the label ignore_index and drop out of the loss.

``train(ops="reference" | "fused")`` runs all three phases and returns the per-step losses
(teacher, then student, then LM student) and the final evaluation numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._common import Run, optimizer_step, start_run, train_loop
from ._layers import Block

IGNORE_INDEX = -100
PAD = 0


@dataclass(frozen=True)
class Config:
    features: int = 32
    classes: int = 10
    teacher_hidden: int = 128
    student_hidden: int = 24
    batch: int = 128
    train_size: int = 8192
    teacher_steps: int = 150
    student_steps: int = 150
    temperature: float = 4.0
    soft_weight: float = 0.7
    hard_weight: float = 0.3
    feature_weight: float = 0.01
    lr: float = 3e-3
    # language model
    vocab: int = 8192
    seq_len: int = 16
    lm_batch: int = 4
    lm_pool: int = 128
    lm_test: int = 32
    teacher_dim: int = 48
    student_dim: int = 32
    lm_steps: int = 100
    lm_temperature: float = 2.0
    lm_lr: float = 3e-3


SIZES = {
    "test": Config(),
    "example": Config(
        teacher_hidden=256,
        student_hidden=32,
        batch=256,
        teacher_steps=400,
        student_steps=400,
        lm_batch=8,
        lm_pool=512,
        teacher_dim=64,
        student_dim=48,
        lm_steps=200,
    ),
}


# ----------------------------------------------------------------------------- models
class MLP(nn.Module):
    """A classifier that also returns its last hidden layer (the features to distil)."""

    def __init__(self, features: int, hidden: int, classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.head(h), h


class CausalLM(nn.Module):
    """Token + position embeddings, causal transformer blocks, output tied to the embedding."""

    def __init__(self, vocab: int, dim: int, layers: int, max_len: int, embed_std: float = 0.3):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        nn.init.normal_(self.tok.weight, std=embed_std)  # N(0, 1) would give near one-hot logits
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads=4, causal=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, last_only: bool = False) -> Tensor:
        h = self.norm(self.blocks(self.tok(tokens) + self.pos[: tokens.shape[1]]))
        return (h[:, -1] if last_only else h) @ self.tok.weight.T  # [B, (T,) vocab]


# ----------------------------------------------------------------------------- data
def make_task(cfg: Config, n: int, g: torch.Generator, device) -> tuple[Tensor, Tensor]:
    """Inputs ~ N(0, I); labels from a fixed random two-layer network (a nonlinear task)."""
    w1 = torch.randn(cfg.features, 64, generator=g, device=device)
    w2 = torch.randn(64, cfg.classes, generator=g, device=device)
    x = torch.randn(n, cfg.features, generator=g, device=device)
    return x, (torch.tanh(x @ w1 / cfg.features**0.5) @ w2).argmax(-1)


@torch.no_grad()
def sample_sequences(
    teacher: CausalLM, cfg: Config, n: int, g: torch.Generator, device
) -> tuple[Tensor, Tensor]:
    """Sequences sampled from the teacher, padded after a random length; labels are the next
    tokens, with ignore_index where the next token is padding."""
    tokens = torch.randint(1, cfg.vocab, (n, 1), generator=g, device=device)
    for _ in range(cfg.seq_len - 1):
        probs = teacher(tokens, last_only=True).softmax(-1)
        tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=g)], dim=1)
    lengths = torch.randint(cfg.seq_len // 2, cfg.seq_len + 1, (n, 1), generator=g, device=device)
    pos = torch.arange(cfg.seq_len, device=device)
    tokens = tokens.masked_fill(pos >= lengths, PAD)
    labels = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], PAD)], dim=1)
    labels = labels.masked_fill(pos >= lengths - 1, IGNORE_INDEX)
    return tokens, labels


# ----------------------------------------------------------------------------- training
def accuracy(model: MLP, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x)[0].argmax(-1) == y).float().mean().item()


def train_classifiers(
    ops, cfg: Config, run: Run, g: torch.Generator, device, progress: bool
) -> None:
    x, y = make_task(cfg, cfg.train_size + 2048, g, device)
    (x, x_test), (y, y_test) = x.split([cfg.train_size, 2048]), y.split([cfg.train_size, 2048])
    batches = torch.randint(
        0,
        x.shape[0],
        (cfg.teacher_steps + cfg.student_steps, cfg.batch),
        generator=g,
        device=device,
    )

    teacher = MLP(cfg.features, cfg.teacher_hidden, cfg.classes).to(device)
    opt = torch.optim.AdamW(teacher.parameters(), lr=cfg.lr)

    def teacher_step(i):
        idx = batches[i]
        loss = ops.cross_entropy(teacher(x[idx])[0], y[idx])
        return optimizer_step(opt, loss)

    train_loop(run, teacher_step, cfg.teacher_steps, device, "distill: teacher", progress)
    teacher.requires_grad_(False)

    student = MLP(cfg.features, cfg.student_hidden, cfg.classes).to(device)
    project = nn.Linear(cfg.student_hidden, cfg.teacher_hidden).to(device)  # FitNets' regressor
    opt = torch.optim.AdamW([*student.parameters(), *project.parameters()], lr=cfg.lr)

    def student_step(i):
        idx = batches[cfg.teacher_steps + i]
        with torch.no_grad():
            t_logits, t_feat = teacher(x[idx])
        s_logits, s_feat = student(x[idx])
        loss = ops.distillation_loss(
            s_logits,
            t_logits,
            temperature=cfg.temperature,
            labels=y[idx],
            soft_weight=cfg.soft_weight,
            hard_weight=cfg.hard_weight,
        )
        loss = loss + cfg.feature_weight * ops.feature_distillation_loss(project(s_feat), t_feat)
        return optimizer_step(opt, loss)

    train_loop(run, student_step, cfg.student_steps, device, "distill: student", progress)
    run.evals["teacher_accuracy"] = accuracy(teacher, x_test, y_test)
    run.evals["student_accuracy"] = accuracy(student, x_test, y_test)


def train_language_model(
    ops, cfg: Config, run: Run, g: torch.Generator, device, progress: bool
) -> None:
    teacher = (
        CausalLM(cfg.vocab, cfg.teacher_dim, layers=2, max_len=cfg.seq_len)
        .to(device)
        .requires_grad_(False)
    )
    tokens, labels = sample_sequences(teacher, cfg, cfg.lm_pool + cfg.lm_test, g, device)
    (tokens, test_tokens), (labels, test_labels) = (
        tokens.split([cfg.lm_pool, cfg.lm_test]),
        labels.split([cfg.lm_pool, cfg.lm_test]),
    )
    batches = torch.randint(
        0, cfg.lm_pool, (cfg.lm_steps, cfg.lm_batch), generator=g, device=device
    )

    student = CausalLM(cfg.vocab, cfg.student_dim, layers=1, max_len=cfg.seq_len).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lm_lr)

    def lm_loss(tok, lab):
        with torch.no_grad():
            t_logits = teacher(tok)
        return ops.distillation_loss(
            student(tok),
            t_logits,
            temperature=cfg.lm_temperature,
            labels=lab,
            soft_weight=0.9,
            hard_weight=0.1,
            ignore_index=IGNORE_INDEX,
        )

    def step(i):
        loss = lm_loss(tokens[batches[i]], labels[batches[i]])
        return optimizer_step(opt, loss)

    train_loop(run, step, cfg.lm_steps, device, "distill: LM student", progress)
    with torch.no_grad():
        run.evals["lm_eval_loss"] = lm_loss(test_tokens, test_labels).item()
        counted = test_labels != IGNORE_INDEX
        agree = student(test_tokens).argmax(-1) == teacher(test_tokens).argmax(-1)
        run.evals["lm_top1_agreement"] = agree[counted].float().mean().item()


def train(
    ops="reference",
    *,
    size: str = "test",
    seed: int = 0,
    device="cpu",
    progress: bool = False,
    **overrides,
) -> Run:
    """Teacher, then student classifier, then LM student; losses of all steps in that order."""
    cfg, run, ops, g = start_run(SIZES, size, overrides, ops, seed, device)
    train_classifiers(ops, cfg, run, g, device, progress)
    train_language_model(ops, cfg, run, g, device, progress)
    return run


def phases(cfg: Config) -> dict[str, slice]:
    """Where each phase's steps sit in Run.losses."""
    a, b = cfg.teacher_steps, cfg.teacher_steps + cfg.student_steps
    return {
        "teacher": slice(0, a),
        "student": slice(a, b),
        "LM student": slice(b, b + cfg.lm_steps),
    }
