"""Fused linear + loss family: an LM head's loss without its [tokens, V] logits.

fused_linear_cross_entropy and fused_linear_distillation_loss form the logits a chunk of
rows at a time (matmul), run the distillation family's row kernel on the chunk, and turn its
logit gradient straight into the gradients of the hidden states, weight and bias
(csrc/common/fused_linear.h, triton_kernels/fused_linear.py). Peak extra memory is a few
[chunk, V] buffers plus the fp32 weight gradient.

Reductions: for "mean" / "batchmean" / "sum" the op computes the gradients in the forward,
of grad_scale * (sum of the row losses), where grad_scale is the reduction's weight when the
host knows it (1 / counted rows on CPU tensors, 1 / num_items_in_batch for an int) and 1
otherwise (the public function then divides the loss by a device tensor, which autograd
turns into a scalar upstream gradient). The backward scales the saved gradients by that
scalar. For "none" nothing is computed early: the backward op recomputes the logits with
each row's own upstream gradient (so a per-row weighting of the losses is honoured).
The math is in pykernels/reference/fused_linear.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import distillation as ref_dist
from ..reference import fused_linear as ref
from . import distillation as dist
from ._registry import op, register_autograd, register_cpp, triton_available

CE_REDUCTIONS = ("mean", "sum", "none")
KD_REDUCTIONS = ("batchmean", "sum", "none")


# ----------------------------------------------------------------------------- checks
def _check_head(
    fn: str, hidden_name: str, hidden, weight_name: str, weight, bias_name: str, bias
) -> None:
    """hidden [..., H] float; weight [V, H] (V >= 1) of the same dtype and device; bias [V]."""
    chk.tensor(fn, hidden_name, hidden, min_dim=1)
    chk.tensor(fn, weight_name, weight)
    chk.same_device(fn, (hidden_name, hidden), (weight_name, weight))
    chk.same_dtype(fn, (hidden_name, hidden), (weight_name, weight))
    if weight.dim() != 2 or weight.shape[0] == 0 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{fn}: argument '{weight_name}' must have shape [V, "
            f"{hidden.shape[-1]}] with V >= 1 (H: the last dim of "
            f"'{hidden_name}'), got {tuple(weight.shape)}"
        )
    if bias is not None:
        chk.tensor(fn, bias_name, bias)
        chk.same_device(fn, (hidden_name, hidden), (bias_name, bias))
        chk.same_dtype(fn, (hidden_name, hidden), (bias_name, bias))
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"{fn}: argument '{bias_name}' must have shape "
                f"({weight.shape[0]},), got {tuple(bias.shape)}"
            )


def _check_labels(fn: str, labels, hidden_name: str, hidden) -> None:
    dist._check_labels(fn, labels, hidden_name, hidden, "the hidden states'")


def _check_ce_settings(fn, label_smoothing, softcap, z_loss, chunk_size) -> None:
    dist._number(fn, "label_smoothing", label_smoothing, 0, 1)
    dist._number(fn, "softcap", softcap, 0)
    dist._number(fn, "z_loss", z_loss)
    _chunk(fn, chunk_size)


def _chunk(fn, chunk_size) -> None:
    dist._integer(fn, "chunk_size", chunk_size)
    if chunk_size < 0:
        raise ValueError(
            f"{fn}: argument 'chunk_size' must be >= 0 (0: automatic), got {chunk_size}"
        )


def _check_teacher(fn, sh, sw, th, tw) -> None:
    chk.same_device(fn, ("student_hidden", sh), ("teacher_hidden", th))
    chk.same_dtype(fn, ("student_hidden", sh), ("teacher_hidden", th))
    if th.shape[:-1] != sh.shape[:-1]:
        raise ValueError(
            f"{fn}: argument 'teacher_hidden' must have the leading shape "
            f"{tuple(sh.shape[:-1])} of 'student_hidden', got {tuple(th.shape)}"
        )
    if tw.shape[0] != sw.shape[0]:
        raise ValueError(
            f"{fn}: argument 'teacher_weight' must have the vocabulary V = "
            f"{sw.shape[0]} of 'student_weight' (its first dim), "
            f"got {tuple(tw.shape)}"
        )


def _check_ce(fn, hidden, weight, labels, bias, label_smoothing, softcap, z_loss, chunk_size):
    """The checks of fused_linear_cross_entropy (public function and Triton ops)."""
    _check_head(fn, "hidden", hidden, "weight", weight, "bias", bias)
    _check_labels(fn, labels, "hidden", hidden)
    _check_ce_settings(fn, label_smoothing, softcap, z_loss, chunk_size)


def _check_kd(fn, sh, sw, th, tw, labels, sb, tb, *settings, chunk_size, public: bool):
    """The checks of fused_linear_distillation_loss (public function and Triton ops);
    settings: temperature, soft_weight, hard_weight, beta, label_smoothing."""
    _check_head(fn, "student_hidden", sh, "student_weight", sw, "student_bias", sb)
    _check_head(fn, "teacher_hidden", th, "teacher_weight", tw, "teacher_bias", tb)
    _check_teacher(fn, sh, sw, th, tw)
    dist._check_distillation_args(
        fn, labels, "student_hidden", sh, *settings, what="the hidden states'", public=public
    )
    _chunk(fn, chunk_size)


def _check_reduction(fn, ignore_index, reduction, reductions, num_items_in_batch) -> None:
    dist._integer(fn, "ignore_index", ignore_index)
    chk.choice(fn, "reduction", reduction, reductions)
    _check_num_items(fn, num_items_in_batch, reduction)


def _check_num_items(fn: str, num_items_in_batch, reduction: str) -> None:
    if num_items_in_batch is None:
        return
    if reduction not in ("mean", "batchmean"):
        raise ValueError(
            f"{fn}: argument 'num_items_in_batch' replaces the divisor of "
            f"reduction 'mean' / 'batchmean', got reduction={reduction!r}"
        )
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.dim() != 0:
            raise ValueError(
                f"{fn}: argument 'num_items_in_batch' must be a 0-dim tensor, "
                f"got shape {tuple(num_items_in_batch.shape)}"
            )
        return
    dist._integer(fn, "num_items_in_batch", num_items_in_batch)
    if num_items_in_batch <= 0:
        raise ValueError(
            f"{fn}: argument 'num_items_in_batch' must be > 0, got {num_items_in_batch}"
        )


# ----------------------------------------------------------------------------- reduction
def _reduction_scale(reduction: str, hidden: Tensor, labels, ignore_index: int, num_items_in_batch):
    """(grad_scale, divisor): the loss is grad_scale * (sum of rows), divided by the device
    tensor `divisor` when it is not None. grad_scale is 1 / (the divisor) where the host
    knows it without a synchronisation, as the division in the accumulation dtype."""
    acc = acc_dtype(hidden.dtype)
    if reduction == "sum":
        return 1.0, None
    if isinstance(num_items_in_batch, torch.Tensor):
        return 1.0, num_items_in_batch.to(device=hidden.device, dtype=acc)
    if num_items_in_batch is not None:
        count = num_items_in_batch
    elif labels is None:
        count = hidden.numel() // hidden.shape[-1]
    elif hidden.device.type == "cpu" and not torch.compiler.is_compiling():
        count = int((labels != ignore_index).sum())
    else:
        return 1.0, ref_dist.counted_rows(labels, ignore_index, acc)
    if count == 0 or torch.compiler.is_compiling():  # (a row count may be symbolic there)
        # count 0: 0 / 0 = nan, as F.cross_entropy gives for an all-ignored batch
        return 1.0, torch.full((), count, dtype=acc, device=hidden.device)
    return float(torch.ones((), dtype=acc) / count), None


def _reduction_args(reduction: str, hidden: Tensor, labels, ignore_index: int, num_items_in_batch):
    """(reduce, grad_scale, divisor) of the op call: "none" computes no gradient early."""
    if reduction == "none":
        return False, 1.0, None
    return (True, *_reduction_scale(reduction, hidden, labels, ignore_index, num_items_in_batch))


def _finish(loss: Tensor, divisor) -> Tensor:
    return loss if divisor is None else loss / divisor


def _wants(*xs) -> list[bool]:
    return [x is not None and x.requires_grad and torch.is_grad_enabled() for x in xs]


# ----------------------------------------------------------------------------- C++ ops
def _grads_fake(mask, *xs):
    return [
        x.new_empty(x.shape) if m and x is not None else xs[0].new_empty((0,))
        for m, x in zip(mask, xs)
    ]


def _ce_fake(
    hidden,
    weight,
    labels,
    bias,
    ignore_index,
    label_smoothing,
    softcap,
    z_loss,
    chunk_size,
    reduce,
    grad_scale,
    return_lse,
    grad_mask,
):
    acc = acc_dtype(hidden.dtype)
    loss = hidden.new_empty(() if reduce else hidden.shape[:-1], dtype=acc)
    lse = hidden.new_empty(hidden.shape[:-1] if return_lse else (0,), dtype=acc)
    grads = _grads_fake(grad_mask if reduce else [False] * 3, hidden, weight, bias)
    return (loss, lse, *grads)


def _ce_backward_fake(
    grad,
    hidden,
    weight,
    labels,
    bias,
    ignore_index,
    label_smoothing,
    softcap,
    z_loss,
    chunk_size,
    grad_mask,
):
    return tuple(_grads_fake(grad_mask, hidden, weight, bias))


def _kd_fake(
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    labels,
    student_bias,
    teacher_bias,
    temperature,
    soft_weight,
    hard_weight,
    beta,
    ignore_index,
    label_smoothing,
    chunk_size,
    reduce,
    grad_scale,
    grad_mask,
):
    acc = acc_dtype(student_hidden.dtype)
    loss = student_hidden.new_empty(() if reduce else student_hidden.shape[:-1], dtype=acc)
    grads = _grads_fake(
        grad_mask if reduce else [False] * 6,
        student_hidden,
        student_weight,
        student_bias,
        teacher_hidden,
        teacher_weight,
        teacher_bias,
    )
    return (loss, *grads)


def _kd_backward_fake(
    grad,
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    labels,
    student_bias,
    teacher_bias,
    temperature,
    soft_weight,
    hard_weight,
    beta,
    ignore_index,
    label_smoothing,
    chunk_size,
    grad_mask,
):
    return tuple(
        _grads_fake(
            grad_mask,
            student_hidden,
            student_weight,
            student_bias,
            teacher_hidden,
            teacher_weight,
            teacher_bias,
        )
    )


register_cpp("fused_linear_cross_entropy", _ce_fake, _ce_backward_fake)
register_cpp("fused_linear_distillation_loss", _kd_fake, _kd_backward_fake)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import fused_linear as tk

    def _ce_triton_checks(fn, args, grad_mask):
        """args: the op's arguments hidden .. chunk_size."""
        hidden, weight, labels, bias, _, label_smoothing, softcap, z_loss, chunk_size = args
        _check_ce(fn, hidden, weight, labels, bias, label_smoothing, softcap, z_loss, chunk_size)
        _check_mask(fn, grad_mask, 3)

    def _check_label_values(y, hidden, weight, ignore_index, op_name):
        """Label values are read on real CPU tensors only: a traced (fake) tensor has none, and
        the check must not make the trace data-dependent
        (test_triton_backward_checks_trace_with_symbolic_shapes)."""
        if y is not None and hidden.device.type == "cpu" and type(y) is torch.Tensor:
            ref_dist.check_labels(y, weight.shape[0], ignore_index, f"pykernels::{op_name}")

    def _reduced(rows, reduce, grad_scale, shape):
        """The forward op's loss output: grad_scale * (sum of rows), or the rows in `shape`."""
        return rows.sum() * grad_scale if reduce else rows.reshape(shape)

    def _check_mask(fn, grad_mask, n):
        if len(grad_mask) != n:
            raise ValueError(
                f"{fn}: argument 'grad_mask' must have {n} entries, got {len(grad_mask)}"
            )

    def _ce_loop(
        hidden,
        weight,
        labels,
        bias,
        ignore_index,
        label_smoothing,
        softcap,
        z_loss,
        chunk_size,
        row_weight,
        want_lse,
        mask,
        grad_scale,
    ):
        y = labels.reshape(-1)
        _check_label_values(y, hidden, weight, ignore_index, "fused_linear_cross_entropy_triton")
        head = tk.Head(hidden.reshape(-1, hidden.shape[-1]), weight, bias)
        return tk.fused_linear_loop(
            head,
            None,
            y,
            row_weight,
            mask=list(mask) + [False] * 3,
            chunk_size=chunk_size,
            want_lse=want_lse,
            softcap=softcap,
            z_loss=z_loss,
            hard_weight=1.0,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            grad_scale=grad_scale,
        )

    @triton_op("pykernels::fused_linear_cross_entropy_triton", mutates_args=())
    def _fused_linear_cross_entropy_triton(
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        bias: Tensor | None,
        ignore_index: int,
        label_smoothing: float,
        softcap: float,
        z_loss: float,
        chunk_size: int,
        reduce: bool,
        grad_scale: float,
        return_lse: bool,
        grad_mask: list[bool],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        fn = "pykernels::fused_linear_cross_entropy_triton"
        args = (
            hidden,
            weight,
            labels,
            bias,
            ignore_index,
            label_smoothing,
            softcap,
            z_loss,
            chunk_size,
        )
        _ce_triton_checks(fn, args, grad_mask)
        mask = [m and reduce for m in grad_mask]
        rows, lse, g = _ce_loop(*args, None, return_lse, mask, grad_scale)
        loss = _reduced(rows, reduce, grad_scale, labels.shape)
        lse = lse.reshape(labels.shape) if return_lse else lse
        return loss, lse, g[0].reshape(hidden.shape) if mask[0] else g[0], g[1], g[2]

    @triton_op("pykernels::fused_linear_cross_entropy_backward_triton", mutates_args=())
    def _fused_linear_cross_entropy_backward_triton(
        grad: Tensor,
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        bias: Tensor | None,
        ignore_index: int,
        label_smoothing: float,
        softcap: float,
        z_loss: float,
        chunk_size: int,
        grad_mask: list[bool],
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::fused_linear_cross_entropy_backward_triton"
        args = (
            hidden,
            weight,
            labels,
            bias,
            ignore_index,
            label_smoothing,
            softcap,
            z_loss,
            chunk_size,
        )
        _ce_triton_checks(fn, args, grad_mask)
        chk.grad(fn, grad, labels.shape, hidden)
        w = grad.reshape(-1).to(acc_dtype(hidden.dtype))
        _, _, g = _ce_loop(*args, w, False, grad_mask, 1.0)
        return g[0].reshape(hidden.shape) if grad_mask[0] else g[0], g[1], g[2]

    def _kd_triton_checks(fn, args, label_smoothing, chunk_size, grad_mask):
        """args: the op's arguments student_hidden .. beta."""
        _check_kd(fn, *args, label_smoothing, chunk_size=chunk_size, public=False)
        _check_mask(fn, grad_mask, 6)

    def _kd_loop(
        sh,
        sw,
        th,
        tw,
        labels,
        sb,
        tb,
        temperature,
        soft_weight,
        hard_weight,
        beta,
        ignore_index,
        label_smoothing,
        chunk_size,
        row_weight,
        mask,
        grad_scale,
    ):
        y = labels.reshape(-1) if labels is not None else None
        _check_label_values(y, sh, sw, ignore_index, "fused_linear_distillation_loss_triton")
        s = tk.Head(sh.reshape(-1, sh.shape[-1]), sw, sb)
        t = tk.Head(th.reshape(-1, th.shape[-1]), tw, tb)
        return tk.fused_linear_loop(
            s,
            t,
            y,
            row_weight,
            mask=mask,
            chunk_size=chunk_size,
            temperature=temperature,
            soft_weight=soft_weight,
            hard_weight=hard_weight if y is not None else 0.0,
            beta=beta,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            grad_scale=grad_scale,
        )

    def _shaped(g, sh, th, mask):
        g = list(g)
        if mask[0]:
            g[0] = g[0].reshape(sh.shape)
        if mask[3]:
            g[3] = g[3].reshape(th.shape)
        return g

    @triton_op("pykernels::fused_linear_distillation_loss_triton", mutates_args=())
    def _fused_linear_distillation_loss_triton(
        student_hidden: Tensor,
        student_weight: Tensor,
        teacher_hidden: Tensor,
        teacher_weight: Tensor,
        labels: Tensor | None,
        student_bias: Tensor | None,
        teacher_bias: Tensor | None,
        temperature: float,
        soft_weight: float,
        hard_weight: float,
        beta: float,
        ignore_index: int,
        label_smoothing: float,
        chunk_size: int,
        reduce: bool,
        grad_scale: float,
        grad_mask: list[bool],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        fn = "pykernels::fused_linear_distillation_loss_triton"
        args = (
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels,
            student_bias,
            teacher_bias,
            temperature,
            soft_weight,
            hard_weight,
            beta,
        )
        _kd_triton_checks(fn, args, label_smoothing, chunk_size, grad_mask)
        mask = [m and reduce for m in grad_mask]
        rows, _, g = _kd_loop(
            *args, ignore_index, label_smoothing, chunk_size, None, mask, grad_scale
        )
        loss = _reduced(rows, reduce, grad_scale, student_hidden.shape[:-1])
        return (loss, *_shaped(g, student_hidden, teacher_hidden, mask))

    @triton_op("pykernels::fused_linear_distillation_loss_backward_triton", mutates_args=())
    def _fused_linear_distillation_loss_backward_triton(
        grad: Tensor,
        student_hidden: Tensor,
        student_weight: Tensor,
        teacher_hidden: Tensor,
        teacher_weight: Tensor,
        labels: Tensor | None,
        student_bias: Tensor | None,
        teacher_bias: Tensor | None,
        temperature: float,
        soft_weight: float,
        hard_weight: float,
        beta: float,
        ignore_index: int,
        label_smoothing: float,
        chunk_size: int,
        grad_mask: list[bool],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        fn = "pykernels::fused_linear_distillation_loss_backward_triton"
        args = (
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels,
            student_bias,
            teacher_bias,
            temperature,
            soft_weight,
            hard_weight,
            beta,
        )
        _kd_triton_checks(fn, args, label_smoothing, chunk_size, grad_mask)
        chk.grad(fn, grad, student_hidden.shape[:-1], student_hidden)
        w = grad.reshape(-1).to(acc_dtype(student_hidden.dtype))
        _, _, g = _kd_loop(
            *args, ignore_index, label_smoothing, chunk_size, w, list(grad_mask), 1.0
        )
        return tuple(_shaped(g, student_hidden, teacher_hidden, grad_mask))


# ----------------------------------------------------------------------------- autograd
def _scaled(x: Tensor, g: Tensor) -> Tensor:
    """A saved gradient times the scalar upstream gradient g; an exact 0 stays 0 (an
    all-ignored batch's 0 / 0 sends an inf upstream), and g == 1 (a plain loss.backward()
    of a loss whose weight the forward knew, checked on the host only for CPU tensors) is
    no pass at all."""
    if (
        not torch.compiler.is_compiling()
        and type(g) is torch.Tensor
        and g.device.type == "cpu"
        and bool(g == 1)
    ):
        return x
    return torch.where(x == 0, x, x * g.to(x.dtype))


def _register_fused_autograd(name: str, grad_inputs: list[int], n_outputs_before: int) -> None:
    """Autograd of op `name` (inputs ..., chunk_size, reduce, grad_scale, [return_lse,]
    grad_mask). grad_inputs: the input index of each grad_mask entry. With reduce, the
    forward's gradient outputs (after the first n_outputs_before outputs) are scaled by
    the loss's upstream gradient; without, the backward op recomputes them with each row's
    upstream gradient."""
    n_tail = 4 if name == "fused_linear_cross_entropy" else 3  # reduce .. grad_mask

    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.reduce = inputs[-n_tail]
        ctx.mask = list(inputs[-1])
        ctx.n_inputs = len(inputs)
        if ctx.reduce:
            ctx.save_for_backward(*output[n_outputs_before:])
            return
        args = list(inputs[:-n_tail])
        ctx.tensor_at = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        ctx.save_for_backward(*[args[i] for i in ctx.tensor_at])
        ctx.args = [None if isinstance(a, Tensor) else a for a in args]

    def backward(ops, ctx, grad_loss, *unused):
        grads = [None] * ctx.n_inputs
        if grad_loss is None:
            return tuple(grads)
        for k, i in enumerate(grad_inputs):  # reduce: only the forward's gradients exist
            if ctx.reduce and ctx.needs_input_grad[i] and not ctx.mask[k]:
                raise RuntimeError(
                    f"pykernels::{name}: input {i} requires grad but its grad_mask entry was False"
                )
        if ctx.reduce:
            computed = [_scaled(x, grad_loss) for x in ctx.saved_tensors]
        else:
            args = list(ctx.args)
            for i, x in zip(ctx.tensor_at, ctx.saved_tensors):
                args[i] = x
            mask = [ctx.needs_input_grad[i] for i in grad_inputs]
            computed = ops(name + "_backward")(grad_loss, *args, mask)
        for k, i in enumerate(grad_inputs):
            if ctx.needs_input_grad[i]:
                grads[i] = computed[k]
        return tuple(grads)

    register_autograd(name, setup_context, backward)


_register_fused_autograd("fused_linear_cross_entropy", [0, 1, 3], 2)
_register_fused_autograd("fused_linear_distillation_loss", [0, 1, 5, 2, 3, 6], 1)


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("hidden", "weight", "bias")
def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    num_items_in_batch=None,
    return_lse: bool = False,
    backend: str | None = None,
):
    """F.cross_entropy(hidden @ weight.T + bias, labels) over rows of hidden [..., H]
    (weight [V, H], labels [...] int64), never forming the [rows, V] logits.

    softcap: logits = softcap * tanh(logits / softcap) first (Gemma-2). z_loss: adds
    z_loss * logsumexp(logits)^2 per row, averaged like the loss (PaLM). reduction "mean"
    divides by num_items_in_batch when given (an int or a 0-dim tensor: the tokens of the
    whole accumulated batch, as transformers passes it), else by the counted rows.
    chunk_size: rows per chunk (None: chosen from the rows, V and the device). return_lse:
    also return the per-row logsumexp (float32, 0 for ignored rows, no gradient). Gradients
    go to hidden, weight and bias. Returns float32 (float64 for float64 inputs)."""
    fn = "pykernels.fused_linear_cross_entropy"
    softcap = 0.0 if softcap is None else softcap
    _check_ce(fn, hidden, weight, labels, bias, label_smoothing, softcap, z_loss, chunk_size or 0)
    _check_reduction(fn, ignore_index, reduction, CE_REDUCTIONS, num_items_in_batch)
    if not isinstance(return_lse, bool):
        raise TypeError(
            f"{fn}: argument 'return_lse' must be a bool, got {type(return_lse).__name__}"
        )
    name = backends.resolve(backend, hidden.device, fn)
    if name != "cpu" and not torch.compiler.is_compiling():
        ref_dist.check_labels(labels, weight.shape[0], ignore_index, fn)
    if name == "reference":
        return ref.fused_linear_cross_entropy(
            hidden,
            weight,
            labels,
            bias,
            ignore_index,
            label_smoothing,
            softcap,
            z_loss,
            reduction,
            num_items_in_batch,
            return_lse,
        )
    reduce, scale, divisor = _reduction_args(
        reduction, hidden, labels, ignore_index, num_items_in_batch
    )
    loss, lse, *_ = op("fused_linear_cross_entropy", name)(
        hidden,
        weight,
        labels,
        bias,
        ignore_index,
        float(label_smoothing),
        float(softcap),
        float(z_loss),
        int(chunk_size or 0),
        reduce,
        scale,
        return_lse,
        _wants(hidden, weight, bias),
    )
    loss = _finish(loss, divisor)
    return (loss, lse.detach()) if return_lse else loss


@chk.autocast_rule(
    "student_hidden",
    "student_weight",
    "teacher_hidden",
    "teacher_weight",
    "student_bias",
    "teacher_bias",
)
def fused_linear_distillation_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    labels: Tensor | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.0,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
    chunk_size: int | None = None,
    num_items_in_batch=None,
    backend: str | None = None,
) -> Tensor:
    """pykernels.distillation_loss(student_hidden @ student_weight.T + student_bias,
    teacher_hidden @ teacher_weight.T + teacher_bias, ...) with the same keywords, never
    forming either [rows, V] logits. The teacher's width may differ (teacher_weight
    [V, H_t]); V must match. "batchmean" divides by num_items_in_batch when given, else by
    the counted rows. Gradients go to the student's hidden, weight and bias, and to the
    teacher's tensors that require grad."""
    fn = "pykernels.fused_linear_distillation_loss"
    sh, sw, th, tw = heads = (student_hidden, student_weight, teacher_hidden, teacher_weight)
    biases = (student_bias, teacher_bias)
    kd = (temperature, soft_weight, hard_weight, beta)  # the op's order
    _check_kd(
        fn, *heads, labels, *biases, *kd, label_smoothing, chunk_size=chunk_size or 0, public=True
    )
    _check_reduction(fn, ignore_index, reduction, KD_REDUCTIONS, num_items_in_batch)
    name = backends.resolve(backend, sh.device, fn)
    if labels is not None and name != "cpu" and not torch.compiler.is_compiling():
        ref_dist.check_labels(labels, sw.shape[0], ignore_index, fn)
    if name == "reference":
        return ref.fused_linear_distillation_loss(
            *heads,
            labels,
            *biases,
            temperature,
            beta,
            soft_weight,
            hard_weight,
            ignore_index,
            label_smoothing,
            reduction,
            num_items_in_batch,
        )
    reduce, scale, divisor = _reduction_args(
        reduction, sh, labels, ignore_index, num_items_in_batch
    )
    loss, *_ = op("fused_linear_distillation_loss", name)(
        *heads,
        labels,
        *biases,
        *[float(x) for x in kd],
        ignore_index,
        float(label_smoothing),
        int(chunk_size or 0),
        reduce,
        scale,
        _wants(sh, sw, student_bias, th, tw, teacher_bias),
    )
    return _finish(loss, divisor)
