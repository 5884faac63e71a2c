"""Distillation family: the KD loss (temperature softmax, soft + hard targets, beta
divergences), cross entropy, and soft-target cross entropy.

One kernel per backend serves the three ops (csrc/cpu/distillation_kernels.h,
csrc/cuda/distillation.cu, triton_kernels/distillation.py). Each op returns per-row losses
and, computed in the same pass over the logits, the gradient of grad_scale * (each row's
loss) w.r.t. the inputs whose grad_* flag is set (decided here from requires_grad, which is
static under torch.compile). grad_scale is the weight the reduction gives each row where it
is known on the host (_grad_scale). The autograd backward only scales the saved gradient by
the upstream gradient of each row over grad_scale (pykernels::distillation_scale_grad): the
logits are never read again, and a plain loss.backward() finds the gradient ready. When
nothing can read the saved gradient afterwards (an eager backward without retain_graph) it
is scaled in place (distillation_scale_grad_inplace), so the op's extra memory is one
gradient plus per-row values. The math is in pykernels/reference/distillation.py.
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import distillation as ref
from ._registry import op, register_autograd, register_cpp, triton_available

REDUCTIONS = ("batchmean", "sum", "none")
CE_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------- checks
def _check_logits(fn: str, name: str, x) -> None:
    chk.tensor(fn, name, x, min_dim=1)
    if x.shape[-1] == 0:
        raise ValueError(
            f"{fn}: argument '{name}' must have at least one class (last dim), "
            f"got shape {tuple(x.shape)}"
        )


def _check_like(fn: str, name: str, x, ref_name: str, ref_x) -> None:
    chk.tensor(fn, name, x, min_dim=1)
    chk.same_device(fn, (ref_name, ref_x), (name, x))
    chk.same_dtype(fn, (ref_name, ref_x), (name, x))
    chk.same_shape(fn, (ref_name, ref_x), (name, x))


def _check_labels(fn: str, labels, logits_name: str, logits, what: str = "the logits'") -> None:
    """labels: int64 [...] of `logits` [..., V] (`what` names it in the message)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"{fn}: argument 'labels' must be a torch.Tensor, got {type(labels).__name__}"
        )
    if labels.dtype != torch.int64:
        raise TypeError(f"{fn}: argument 'labels' must be int64, got {labels.dtype}")
    chk.same_device(fn, (logits_name, logits), ("labels", labels))
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: argument 'labels' must have shape {tuple(logits.shape[:-1])} "
            f"({what} shape without the last dim), got {tuple(labels.shape)}"
        )


def _number(fn: str, name: str, value, lo=None, hi=None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: argument '{name}' must be a number, got {type(value).__name__}")
    if not -math.inf < value < math.inf:  # math.isfinite fails on a SymFloat under torch.compile
        raise ValueError(f"{fn}: argument '{name}' must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{fn}: argument '{name}' must be in [{lo}, {hi}], got {value}")


def _integer(fn: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: argument '{name}' must be an int, got {type(value).__name__}")


def _temperature(fn: str, value) -> None:
    chk.positive(fn, "temperature", value)
    _number(fn, "temperature", value)


def _check_distillation_settings(
    fn: str, labels, temperature, soft_weight, hard_weight, beta, label_smoothing
) -> None:
    """The hyperparameter checks of distillation_loss (public function and Triton op), in
    the order of the C++ op's."""
    _temperature(fn, temperature)
    _number(fn, "soft_weight", soft_weight)
    _number(fn, "hard_weight", hard_weight)
    _number(fn, "beta", beta, 0, 1)
    _number(fn, "label_smoothing", label_smoothing, 0, 1)
    if hard_weight != 0 and labels is None:
        raise ValueError(
            f"{fn}: argument 'hard_weight' must be 0 when no labels are given "
            f"(pass 'labels'), got {hard_weight}"
        )


def _check_distillation_args(
    fn: str,
    labels,
    logits_name: str,
    logits,
    temperature,
    soft_weight,
    hard_weight,
    beta,
    label_smoothing,
    *,
    what: str = "the logits'",
    public: bool,
) -> None:
    """The optional labels of `logits` and the hyperparameters of distillation_loss. A public
    function names 'labels' when hard_weight != 0 comes without them; an op names
    'hard_weight' (the C++ op's message)."""
    if labels is not None:
        _check_labels(fn, labels, logits_name, logits, what)
    if public and hard_weight != 0 and labels is None:
        raise ValueError(
            f"{fn}: argument 'labels' is required when hard_weight != 0 "
            f"(got hard_weight={hard_weight})"
        )
    _check_distillation_settings(
        fn, labels, temperature, soft_weight, hard_weight, beta, label_smoothing
    )


def _check_values(fn: str, backend: str, labels, ignore_index: int, V: int, *logits) -> None:
    """Value checks on CPU tensors for the backends that do not make them themselves (the
    cpu kernels raise the same errors): labels in range, and no counted row of logits all
    -inf. On a GPU such rows are nan instead (checking would synchronise); see
    docs/distillation.md."""
    if backend == "cpu" or torch.compiler.is_compiling():
        return
    if labels is not None:
        ref.check_labels(labels, V, ignore_index, fn)
    for name, x in logits:
        ref.check_masked_rows(x, labels, ignore_index, fn, name)


def _wants_grad(x: Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


def _grad_scale(reduction: str, logits: Tensor, labels, ignore_index: int) -> float:
    """The weight the reduction gives each row's loss, where the host knows it without a
    device synchronisation: 1 / (counted rows) for "batchmean" / "mean" on CPU tensors, as
    the division in the accumulation dtype that the reduction's autograd makes (so that the
    upstream gradient of a plain loss.backward() equals it exactly); else 1."""
    if reduction in ("none", "sum") or logits.device.type != "cpu" or torch.compiler.is_compiling():
        return 1.0
    rows = logits.numel() // logits.shape[-1]
    count = rows if labels is None else int((labels != ignore_index).sum())
    one = torch.ones((), dtype=acc_dtype(logits.dtype))
    return float(one / count) if count > 0 else 1.0


# ----------------------------------------------------------------------------- C++ ops
def _grad_like(x: Tensor, wanted: bool) -> Tensor:
    return x.new_empty(x.shape) if wanted else x.new_empty((0,))


def _rows_like(x: Tensor) -> Tensor:
    return x.new_empty(x.shape[:-1], dtype=acc_dtype(x.dtype))


def _distillation_loss_fake(
    student_logits,
    teacher_logits,
    labels,
    temperature,
    soft_weight,
    hard_weight,
    beta,
    ignore_index,
    label_smoothing,
    grad_student_logits,
    grad_teacher_logits,
    grad_scale,
):
    return (
        _rows_like(student_logits),
        _grad_like(student_logits, grad_student_logits),
        _grad_like(student_logits, grad_teacher_logits),
    )


def _cross_entropy_fake(logits, labels, ignore_index, label_smoothing, grad_logits, grad_scale):
    return _rows_like(logits), _grad_like(logits, grad_logits)


def _soft_target_cross_entropy_fake(
    logits, target_probs, temperature, grad_logits, grad_target_probs, grad_scale
):
    return (
        _rows_like(logits),
        _grad_like(logits, grad_logits),
        _grad_like(logits, grad_target_probs),
    )


register_cpp("distillation_loss", _distillation_loss_fake)
register_cpp("cross_entropy", _cross_entropy_fake)
register_cpp("soft_target_cross_entropy", _soft_target_cross_entropy_fake)
register_cpp("distillation_scale_grad", lambda grad, x: x.new_empty(x.shape))
register_cpp("distillation_scale_grad_inplace", lambda grad, x: None)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import distillation as tk

    @triton_op("pykernels::distillation_loss_triton", mutates_args=())
    def _distillation_loss_triton(
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None,
        temperature: float,
        soft_weight: float,
        hard_weight: float,
        beta: float,
        ignore_index: int,
        label_smoothing: float,
        grad_student_logits: bool,
        grad_teacher_logits: bool,
        grad_scale: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::distillation_loss_triton"
        _check_logits(fn, "student_logits", student_logits)
        _check_like(fn, "teacher_logits", teacher_logits, "student_logits", student_logits)
        _check_distillation_args(
            fn,
            labels,
            "student_logits",
            student_logits,
            temperature,
            soft_weight,
            hard_weight,
            beta,
            label_smoothing,
            public=False,
        )
        _number(fn, "grad_scale", grad_scale)
        return tk.distillation_rows(
            student_logits,
            teacher_logits,
            labels,
            temperature=temperature,
            soft_weight=soft_weight,
            hard_weight=hard_weight,
            beta=beta,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            grad_logits=grad_student_logits,
            grad_teacher=grad_teacher_logits,
            grad_scale=grad_scale,
        )

    @triton_op("pykernels::cross_entropy_triton", mutates_args=())
    def _cross_entropy_triton(
        logits: Tensor,
        labels: Tensor,
        ignore_index: int,
        label_smoothing: float,
        grad_logits: bool,
        grad_scale: float,
    ) -> tuple[Tensor, Tensor]:
        fn = "pykernels::cross_entropy_triton"
        _check_logits(fn, "logits", logits)
        _check_labels(fn, labels, "logits", logits)
        _number(fn, "label_smoothing", label_smoothing, 0, 1)
        _number(fn, "grad_scale", grad_scale)
        loss, grad, _ = tk.distillation_rows(
            logits,
            None,
            labels,
            hard_weight=1.0,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            grad_logits=grad_logits,
            grad_scale=grad_scale,
        )
        return loss, grad

    @triton_op("pykernels::soft_target_cross_entropy_triton", mutates_args=())
    def _soft_target_cross_entropy_triton(
        logits: Tensor,
        target_probs: Tensor,
        temperature: float,
        grad_logits: bool,
        grad_target_probs: bool,
        grad_scale: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        fn = "pykernels::soft_target_cross_entropy_triton"
        _check_logits(fn, "logits", logits)
        _check_like(fn, "target_probs", target_probs, "logits", logits)
        _temperature(fn, temperature)
        _number(fn, "grad_scale", grad_scale)
        return tk.distillation_rows(
            logits,
            target_probs,
            None,
            temperature=temperature,
            target_probs=True,
            grad_logits=grad_logits,
            grad_teacher=grad_target_probs,
            grad_scale=grad_scale,
        )

    def _check_scale_grad(fn: str, grad, x) -> None:
        """x: a saved per-row gradient [..., V]; grad: one upstream value per row (the kernel
        reads grad[r] for every row r of x), as check_scale_grad in distillation_args.h."""
        chk.tensor(fn, "x", x, min_dim=1)
        chk.grad(fn, grad, x.shape[:-1], x)

    @triton_op("pykernels::distillation_scale_grad_triton", mutates_args=())
    def _distillation_scale_grad_triton(grad: Tensor, x: Tensor) -> Tensor:
        _check_scale_grad("pykernels::distillation_scale_grad_triton", grad, x)
        return tk.scale_grad(grad, x)

    @triton_op("pykernels::distillation_scale_grad_inplace_triton", mutates_args=("x",))
    def _distillation_scale_grad_inplace_triton(grad: Tensor, x: Tensor) -> None:
        fn = "pykernels::distillation_scale_grad_inplace_triton"
        _check_scale_grad(fn, grad, x)
        if not x.is_contiguous():
            raise ValueError(f"{fn}: argument 'x' must be contiguous (it is scaled in place)")
        tk.scale_grad(grad, x, out=x)


# ----------------------------------------------------------------------------- autograd
_CALLER = threading.local()


@contextlib.contextmanager
def _gradient_outputs_dropped():
    """Around an op call whose caller drops the op's gradient outputs (the public functions
    below): only then may the backward scale them in place. A direct caller of
    torch.ops.pykernels.* keeps them, and they stay as the forward wrote them."""
    before = getattr(_CALLER, "drops_outputs", False)
    _CALLER.drops_outputs = True
    try:
        yield
    finally:
        _CALLER.drops_outputs = before


def _saved_grad_is_dead(saved: Tensor) -> bool:
    """True when this backward is the last use of `saved`: an eager backward that frees the
    graph after it (no retain_graph / create_graph), on a real tensor (not traced)."""
    return (
        not torch.compiler.is_compiling()
        and type(saved) is torch.Tensor
        and not torch._C._autograd._get_current_graph_task_keep_graph()
    )


def _upstream(grad_rows: Tensor, grad_scale: float) -> Tensor | None:
    """The factor each saved gradient row still needs: grad_rows / grad_scale, or None when
    that is 1 for every row (a plain loss.backward() of a "batchmean" or "sum" loss on CPU,
    checked on the host only where that is no device synchronisation)."""
    if (
        not torch.compiler.is_compiling()
        and type(grad_rows) is torch.Tensor  # not traced
        and grad_rows.device.type == "cpu"
        and bool((grad_rows == grad_scale).all())
    ):
        return None
    return grad_rows if grad_scale == 1.0 else grad_rows / grad_scale


def _register_scaled_grad_autograd(name: str, slots) -> None:
    """Autograd of op `name`: the saved gradient outputs, which are those of
    grad_scale * (row loss), scaled by the upstream gradient of each row over grad_scale (the
    op's last argument). slots: (input index, index of its grad_* flag, index of its saved
    gradient among the outputs) for each differentiable input."""

    def setup_context(ctx, inputs, output):
        # The gradient outputs get no upstream gradient; materialising one would allocate
        # (and zero) a [rows, V] tensor per output in every backward.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*output[1:])
        ctx.flags = [inputs[flag] for _, flag, _ in slots]
        ctx.grad_scale = inputs[-1]
        ctx.in_place = getattr(_CALLER, "drops_outputs", False)
        ctx.n_inputs = len(inputs)

    def backward(ops, ctx, grad_rows, *unused):
        saved = ctx.saved_tensors
        grads = [None] * ctx.n_inputs
        if grad_rows is None:  # the loss itself was not used
            return tuple(grads)
        factor = _upstream(grad_rows, ctx.grad_scale)
        for (i, _, o), computed in zip(slots, ctx.flags):
            if ctx.needs_input_grad[i]:
                if not computed:
                    raise RuntimeError(
                        f"pykernels::{name}: input {i} requires grad but its grad flag was False"
                    )
                grads[i] = _scaled(ops, factor, saved[o - 1], ctx.in_place)
        return tuple(grads)

    register_autograd(name, setup_context, backward)


def _scaled(ops, factor: Tensor | None, x: Tensor, in_place: bool) -> Tensor:
    """x scaled by factor per row (None: by 1), in place when nothing reads x afterwards."""
    if in_place and _saved_grad_is_dead(x):
        if factor is not None:
            ops("distillation_scale_grad_inplace")(factor, x)
        return x
    return x.clone() if factor is None else ops("distillation_scale_grad")(factor, x)


_register_scaled_grad_autograd("distillation_loss", [(0, 9, 1), (1, 10, 2)])
_register_scaled_grad_autograd("cross_entropy", [(0, 4, 1)])
_register_scaled_grad_autograd("soft_target_cross_entropy", [(0, 3, 1), (1, 4, 2)])


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("student_logits", "teacher_logits")
def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
    beta: float = 0.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
    backend: str | None = None,
) -> Tensor:
    """Knowledge-distillation loss over rows of [..., V] logits.

    loss = soft_weight * T^2 * D_beta(p_T || p_S) + hard_weight * CE(student, labels), with
    p = softmax(logits / T). beta = 0: KL(p_T || p_S) (Hinton); beta = 1: KL(p_S || p_T);
    0 < beta < 1: generalised Jensen-Shannon. The hard term is cross entropy at T = 1 with
    label smoothing. Rows labelled ignore_index drop out of both terms. reduction:
    "batchmean" (sum / counted rows), "sum" or "none" (per row). A teacher logit of -inf is
    a probability of 0 whose terms are 0 (masked vocabularies; docs/distillation.md).
    Gradients go to the student logits and, when they require grad, to the teacher logits.
    Returns float32 (float64 for float64 inputs)."""
    fn = "pykernels.distillation_loss"
    _check_logits(fn, "student_logits", student_logits)
    _check_like(fn, "teacher_logits", teacher_logits, "student_logits", student_logits)
    kd = (temperature, soft_weight, hard_weight, beta)  # the op's order
    _check_distillation_args(
        fn, labels, "student_logits", student_logits, *kd, label_smoothing, public=True
    )
    _integer(fn, "ignore_index", ignore_index)
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    name = backends.resolve(backend, student_logits.device, fn)
    _check_values(
        fn,
        name,
        labels,
        ignore_index,
        student_logits.shape[-1],
        ("student_logits", student_logits),
        ("teacher_logits", teacher_logits),
    )
    if name == "reference":
        return ref.distillation_loss(
            student_logits,
            teacher_logits,
            temperature,
            labels,
            soft_weight,
            hard_weight,
            beta,
            ignore_index,
            label_smoothing,
            reduction,
        )
    w = _grad_scale(reduction, student_logits, labels, ignore_index)
    with _gradient_outputs_dropped():
        rows, _, _ = op("distillation_loss", name)(
            student_logits,
            teacher_logits,
            labels,
            *[float(x) for x in kd],
            ignore_index,
            float(label_smoothing),
            _wants_grad(student_logits),
            _wants_grad(teacher_logits),
            w,
        )
    return ref.reduce(rows, reduction, ref.counted_rows(labels, ignore_index, rows.dtype))


@chk.autocast_rule("logits")
def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    backend: str | None = None,
) -> Tensor:
    """torch.nn.functional.cross_entropy for [..., V] logits (classes last) and int64 labels
    [...]: same values, label smoothing, ignore_index, and "mean" over the counted rows
    (nan when every row is ignored, as torch gives). -inf logits at classes other than the
    label (a masked vocabulary) are fine. Returns float32 (float64 for float64)."""
    fn = "pykernels.cross_entropy"
    _check_logits(fn, "logits", logits)
    _check_labels(fn, labels, "logits", logits)
    _number(fn, "label_smoothing", label_smoothing, 0, 1)
    _integer(fn, "ignore_index", ignore_index)
    chk.choice(fn, "reduction", reduction, CE_REDUCTIONS)
    name = backends.resolve(backend, logits.device, fn)
    _check_values(fn, name, labels, ignore_index, logits.shape[-1], ("logits", logits))
    if name == "reference":
        return ref.cross_entropy(logits, labels, ignore_index, label_smoothing, reduction)
    w = _grad_scale(reduction, logits, labels, ignore_index)
    with _gradient_outputs_dropped():
        rows, _ = op("cross_entropy", name)(
            logits, labels, ignore_index, float(label_smoothing), _wants_grad(logits), w
        )
    return ref.reduce(rows, reduction, ref.counted_rows(labels, ignore_index, rows.dtype))


@chk.autocast_rule("logits", "target_probs")
def soft_target_cross_entropy(
    logits: Tensor,
    target_probs: Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    backend: str | None = None,
) -> Tensor:
    """-sum_j q_j log softmax(logits / T)_j per row of [..., V] logits against given
    probabilities q (soft labels). "batchmean" divides by the number of rows. A class with
    q = 0 and a logit of -inf is no term at all. Gradients go to the logits and, when it
    requires grad, to target_probs."""
    fn = "pykernels.soft_target_cross_entropy"
    _check_logits(fn, "logits", logits)
    _check_like(fn, "target_probs", target_probs, "logits", logits)
    _temperature(fn, temperature)
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    name = backends.resolve(backend, logits.device, fn)
    _check_values(fn, name, None, -100, logits.shape[-1], ("logits", logits))
    if name == "reference":
        return ref.soft_target_cross_entropy(logits, target_probs, temperature, reduction)
    w = _grad_scale(reduction, logits, None, -100)
    with _gradient_outputs_dropped():
        rows, _, _ = op("soft_target_cross_entropy", name)(
            logits,
            target_probs,
            float(temperature),
            _wants_grad(logits),
            _wants_grad(target_probs),
            w,
        )
    return ref.reduce(rows, reduction)
