"""Fused LM-head losses for Hugging Face causal language models, without the [tokens, V]
logits.

    from pykernels.integrations.transformers import causal_lm_loss
    loss = causal_lm_loss(model, input_ids, labels, attention_mask=attention_mask)
    loss.backward()                      # the same loss and gradients as
                                         # model(input_ids, labels=labels).loss

The recipe: run the decoder stack (`model.model(...)`) for the hidden states, then
`pykernels.fused_linear_cross_entropy` with `model.lm_head.weight` (and its bias, if any)
and transformers' causal label shift (the label of position i is the token at i + 1; the last
position gets ignore_index). `num_items_in_batch` (an int or a 0-dim tensor) divides the
summed loss as transformers' Trainer does under gradient accumulation; a model config's
`final_logit_softcapping` (Gemma-2) becomes the softcap. `causal_lm_distillation_loss`
does the same for a student and a teacher with `pykernels.fused_linear_distillation_loss`.

transformers is optional: importing this module without it raises ImportError; nothing else
in pykernels imports it.
"""

from __future__ import annotations

import torch

try:
    import transformers  # noqa: F401  (the models this module takes come from it)
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "pykernels.integrations.transformers needs the optional dependency "
        f"transformers (pip install transformers): {exc}"
    ) from exc

from ..ops.fused_linear import fused_linear_cross_entropy, fused_linear_distillation_loss


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """transformers' causal shift: out[..., i] = labels[..., i + 1], ignore_index at the end."""
    pad = torch.full_like(labels[..., :1], ignore_index)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def hidden_states(model, input_ids=None, **model_kwargs) -> torch.Tensor:
    """The last hidden states of a causal LM's decoder stack (`model.model`), [..., H]:
    the input of `model.lm_head`."""
    out = model.model(input_ids=input_ids, **model_kwargs)
    return out[0]


def _softcap(model):
    return getattr(model.config, "final_logit_softcapping", None)


def causal_lm_loss(
    model,
    input_ids,
    labels,
    *,
    num_items_in_batch=None,
    ignore_index=-100,
    chunk_size=None,
    backend=None,
    **model_kwargs,
) -> torch.Tensor:
    """model(input_ids, labels=labels, **model_kwargs).loss, with the LM head and its cross
    entropy fused (no logits)."""
    hidden = hidden_states(model, input_ids, **model_kwargs)
    head = model.lm_head
    return fused_linear_cross_entropy(
        hidden,
        head.weight,
        shift_labels(labels, ignore_index).to(hidden.device),
        bias=head.bias,
        ignore_index=ignore_index,
        softcap=_softcap(model),
        num_items_in_batch=num_items_in_batch,
        chunk_size=chunk_size,
        backend=backend,
    )


def causal_lm_distillation_loss(
    student,
    teacher,
    input_ids,
    labels=None,
    *,
    temperature=1.0,
    beta=0.0,
    soft_weight=1.0,
    hard_weight=0.0,
    ignore_index=-100,
    num_items_in_batch=None,
    chunk_size=None,
    backend=None,
    **model_kwargs,
) -> torch.Tensor:
    """pykernels.distillation_loss(student logits, teacher logits, labels=shifted labels,
    ...) of two causal LMs on the same tokens, with both heads fused (no logits). The
    teacher runs under torch.no_grad(). Without labels every position counts."""
    hidden = hidden_states(student, input_ids, **model_kwargs)
    with torch.no_grad():
        teacher_hidden = hidden_states(teacher, input_ids, **model_kwargs)
    y = None if labels is None else shift_labels(labels, ignore_index).to(hidden.device)
    return fused_linear_distillation_loss(
        hidden,
        student.lm_head.weight,
        teacher_hidden,
        teacher.lm_head.weight,
        labels=y,
        student_bias=student.lm_head.bias,
        teacher_bias=teacher.lm_head.bias,
        temperature=temperature,
        beta=beta,
        soft_weight=soft_weight,
        hard_weight=hard_weight,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
        chunk_size=chunk_size,
        backend=backend,
    )
