"""Cosine family: cosine similarity, pairwise cosine similarity, feature distillation loss.

feature_distillation_loss belongs here because its kernel is a row-wise distance of two
feature rows (|s - t|^2 or 1 - cos(s, t)), the same pass as cosine_similarity's.

Public functions validate, pick a backend, and call one op; the ops are registered
below (fake implementations, autograd, Triton ops). Every op f(x1, x2, *extra) has a
backward op f_backward(grad, x1, x2, *extra, output_mask) that returns the gradient of
each input (an empty tensor where output_mask is False). The math is in
pykernels/reference/cosine.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks as chk
from .. import backends
from .._precision import acc_dtype
from ..reference import cosine as ref
from ._registry import op, register_autograd, register_cpp, triton_available

KINDS = ("mse", "cosine")
REDUCTIONS = ("mean", "sum", "none")


def _check_pair(fn: str, n1: str, x1, n2: str, x2, *, same_shape: bool = True) -> None:
    chk.tensor(fn, n1, x1, min_dim=1)
    chk.tensor(fn, n2, x2, min_dim=1)
    chk.same_device(fn, (n1, x1), (n2, x2))
    chk.same_dtype(fn, (n1, x1), (n2, x2))
    if same_shape:
        chk.same_shape(fn, (n1, x1), (n2, x2))


def _check_pairwise(fn: str, a, b) -> None:
    _check_pair(fn, "a", a, "b", b, same_shape=False)
    for name, x in (("a", a), ("b", b)):
        if x.dim() < 2:
            raise ValueError(
                f"{fn}: argument '{name}' must have shape [..., rows, D], got {tuple(x.shape)}"
            )
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{fn}: arguments 'a' and 'b' must have the same feature size D (last "
            f"dim), got {a.shape[-1]} and {b.shape[-1]}"
        )


# ----------------------------------------------------------------------------- C++ ops
def _cosine_similarity_fake(x1, x2, eps):
    return x1.new_empty(x1.shape[:-1])


def _feature_distillation_loss_fake(student, teacher, kind, eps):
    return student.new_empty(student.shape[:-1], dtype=acc_dtype(student.dtype))


def _pairwise_fake(a, b, eps):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]))


def _pair_grads_fake(grad, x1, x2, *extra_and_mask):
    mask = extra_and_mask[-1]
    return tuple(x.new_empty(x.shape if want else (0,)) for x, want in zip((x1, x2), mask))


OPS = {  # op name -> its fake
    "cosine_similarity": _cosine_similarity_fake,
    "feature_distillation_loss": _feature_distillation_loss_fake,
    "pairwise_cosine_similarity": _pairwise_fake,
}
for _name, _fake in OPS.items():
    register_cpp(_name, _fake, _pair_grads_fake)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import cosine as tk

    def _check_rowwise_op(fn: str, n1: str, x1, n2: str, x2, eps, kind=None) -> None:
        """The checks of a row-wise op and of its backward (as the C++ ops make them)."""
        _check_pair(fn, n1, x1, n2, x2)
        if kind is not None:
            chk.choice(fn, "kind", kind, KINDS)
        chk.positive(fn, "eps", eps)

    def _check_mask(fn: str, output_mask) -> tuple[bool, bool]:
        if len(output_mask) != 2:
            raise ValueError(
                f"{fn}: argument 'output_mask' must have 2 elements (one per input), "
                f"got {len(output_mask)}"
            )
        return bool(output_mask[0]), bool(output_mask[1])

    @triton_op("pykernels::cosine_similarity_triton", mutates_args=())
    def _cosine_similarity_triton(x1: Tensor, x2: Tensor, eps: float) -> Tensor:
        _check_rowwise_op("pykernels::cosine_similarity_triton", "x1", x1, "x2", x2, eps)
        return tk.rowwise_forward(x1, x2, eps, tk.MODE_COS)

    @triton_op("pykernels::cosine_similarity_backward_triton", mutates_args=())
    def _cosine_similarity_backward_triton(
        grad: Tensor, x1: Tensor, x2: Tensor, eps: float, output_mask: list[bool]
    ) -> tuple[Tensor, Tensor]:
        fn = "pykernels::cosine_similarity_backward_triton"
        _check_rowwise_op(fn, "x1", x1, "x2", x2, eps)
        chk.grad(fn, grad, x1.shape[:-1], x1)  # the kernel reads one value per row
        return tk.rowwise_backward(grad, x1, x2, eps, tk.MODE_COS, _check_mask(fn, output_mask))

    @triton_op("pykernels::feature_distillation_loss_triton", mutates_args=())
    def _feature_distillation_loss_triton(
        student: Tensor, teacher: Tensor, kind: str, eps: float
    ) -> Tensor:
        _check_rowwise_op(
            "pykernels::feature_distillation_loss_triton",
            "student",
            student,
            "teacher",
            teacher,
            eps,
            kind,
        )
        return tk.rowwise_forward(student, teacher, eps, _triton_mode(kind))

    @triton_op("pykernels::feature_distillation_loss_backward_triton", mutates_args=())
    def _feature_distillation_loss_backward_triton(
        grad: Tensor,
        student: Tensor,
        teacher: Tensor,
        kind: str,
        eps: float,
        output_mask: list[bool],
    ) -> tuple[Tensor, Tensor]:
        fn = "pykernels::feature_distillation_loss_backward_triton"
        _check_rowwise_op(fn, "student", student, "teacher", teacher, eps, kind)
        chk.grad(fn, grad, student.shape[:-1], student)
        return tk.rowwise_backward(
            grad, student, teacher, eps, _triton_mode(kind), _check_mask(fn, output_mask)
        )

    def _triton_mode(kind: str) -> int:
        return tk.MODE_SQDIST if kind == "mse" else tk.MODE_ONE_MINUS_COS

    @triton_op("pykernels::pairwise_cosine_similarity_triton", mutates_args=())
    def _pairwise_triton(a: Tensor, b: Tensor, eps: float) -> Tensor:
        _check_pairwise_op("pykernels::pairwise_cosine_similarity_triton", a, b, eps)
        # Inverse norms first (N + M floats), then one matmul whose epilogue scales
        # rows and columns: the normalised inputs are never written out.
        _, inv_a = tk.normalize(a, eps, write_y=False)
        _, inv_b = tk.normalize(b, eps, write_y=False)
        return tk.scaled_matmul(
            a, b.transpose(1, 2), inv_a, inv_b, allow_tf32=torch.backends.cuda.matmul.allow_tf32
        )

    @triton_op("pykernels::pairwise_cosine_similarity_backward_triton", mutates_args=())
    def _pairwise_backward_triton(
        grad: Tensor, a: Tensor, b: Tensor, eps: float, output_mask: list[bool]
    ) -> tuple[Tensor, Tensor]:
        # out = a_hat b_hat^T: grad a_hat = G b_hat, grad b_hat = G^T a_hat, then through
        # the normalisation of each row. grad a_hat / b_hat stay in the accumulation dtype:
        # rounded to a half type as well, they cost bf16 gradients 1% (test_fuzz_cosine).
        fn = "pykernels::pairwise_cosine_similarity_backward_triton"
        _check_pairwise_op(fn, a, b, eps)
        chk.grad(fn, grad, (a.shape[0], a.shape[1], b.shape[1]), a)
        want_a, want_b = _check_mask(fn, output_mask)
        grad = grad.to(a.dtype)  # the matmuls take one dtype; any float grad is accepted
        tf32 = torch.backends.cuda.matmul.allow_tf32
        acc = acc_dtype(a.dtype)
        ga, gb = a.new_empty(0), b.new_empty(0)
        if want_a:
            b_hat, _ = tk.normalize(b, eps, write_y=True)
            ga_hat = tk.scaled_matmul(grad, b_hat, allow_tf32=tf32, out_dtype=acc)
            ga = tk.normalize_backward(ga_hat, a, eps)
        if want_b:
            a_hat, _ = tk.normalize(a, eps, write_y=True)
            gb_hat = tk.scaled_matmul(grad.transpose(1, 2), a_hat, allow_tf32=tf32, out_dtype=acc)
            gb = tk.normalize_backward(gb_hat, b, eps)
        return ga, gb

    def _check_pairwise_op(fn: str, a, b, eps) -> None:
        """The op takes [B, N, D] x [B, M, D] (the public function flattens the batch), as
        the C++ op."""
        _check_pairwise(fn, a, b)
        for name, x in (("a", a), ("b", b)):
            if x.dim() != 3:
                raise ValueError(
                    f"{fn}: argument '{name}' must have 3 dimension(s), got shape {tuple(x.shape)}"
                )
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"{fn}: arguments 'a' [B, N, D] and 'b' [B, M, D] must agree in B, "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        chk.positive(fn, "eps", eps)


def _pair_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.extra = inputs[2:]


def _pair_backward(name: str):
    """d(x1, x2) of an op f(x1, x2, *extra): its backward op, asked only for the gradients
    autograd needs (a detached teacher costs no teacher gradient)."""

    def backward(ops, ctx, grad):
        x1, x2 = ctx.saved_tensors
        mask = [bool(m) for m in ctx.needs_input_grad[:2]]
        g1, g2 = ops(name + "_backward")(grad, x1, x2, *ctx.extra, mask)
        return (g1 if mask[0] else None, g2 if mask[1] else None) + (None,) * len(ctx.extra)

    return backward


for _name in OPS:
    register_autograd(_name, _pair_setup_context, _pair_backward(_name))


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("x1", "x2")
def cosine_similarity(
    x1: Tensor, x2: Tensor, dim: int = -1, eps: float = 1e-8, *, backend: str | None = None
) -> Tensor:
    """Cosine similarity along `dim`, with torch.nn.functional.cosine_similarity's values
    and broadcasting: x1 . x2 / (max(|x1|, eps) max(|x2|, eps)). Note the default
    dim=-1 (features last), where torch's default is dim=1."""
    fn = "pykernels.cosine_similarity"
    _check_pair(fn, "x1", x1, "x2", x2, same_shape=False)
    chk.positive(fn, "eps", eps)
    shape = chk.broadcast_shapes(fn, ("x1", x1), ("x2", x2))
    d = chk.dim_index(fn, "dim", dim, len(shape))
    name = backends.resolve(backend, x1.device, fn)
    if name == "reference":
        return ref.cosine_similarity(x1, x2, d, eps)
    if _half_broadcast_grad((x1, shape), (x2, shape)):
        # A broadcast input's gradient is a sum over the broadcast dims. In half precision
        # each term would be rounded before autograd sums them, and terms of mixed sign
        # cancel (a few % error): run in float32 so the sum is taken in float32, and round
        # the result once (test_broadcast_input_gradient_in_half_precision).
        return cosine_similarity(x1.float(), x2.float(), dim, eps, backend=name).to(x1.dtype)
    x1, x2 = x1.expand(shape).movedim(d, -1), x2.expand(shape).movedim(d, -1)
    return op("cosine_similarity", name)(x1, x2, eps)


def _half_broadcast_grad(*inputs: tuple[Tensor, tuple]) -> bool:
    """A half-precision call where an input that needs a gradient is broadcast to a larger
    shape: (input, the shape it is expanded to) pairs."""
    return (
        inputs[0][0].dtype in (torch.float16, torch.bfloat16)
        and torch.is_grad_enabled()
        and any(x.requires_grad and tuple(x.shape) != tuple(full) for x, full in inputs)
    )


@chk.autocast_rule("a", "b")
def pairwise_cosine_similarity(
    a: Tensor, b: Tensor | None = None, eps: float = 1e-8, *, backend: str | None = None
) -> Tensor:
    """[..., N, D] x [..., M, D] -> [..., N, M] cosine similarities of every row pair
    (b=None: a against itself). Leading dims broadcast. Never builds N x M x D."""
    fn = "pykernels.pairwise_cosine_similarity"
    b = a if b is None else b
    _check_pairwise(fn, a, b)
    chk.positive(fn, "eps", eps)
    batch = chk.broadcast_shapes(fn, ("a", a.shape[:-2]), ("b", b.shape[:-2]))
    name = backends.resolve(backend, a.device, fn)
    if name == "reference":
        return ref.pairwise_cosine_similarity(a, b, eps)
    (N, D), M = a.shape[-2:], b.shape[-2]
    if _half_broadcast_grad((a, (*batch, N, D)), (b, (*batch, M, D))):
        # as in cosine_similarity: the batch-broadcast input's gradient is summed in float32
        # (float16 b [1, 3] against a [2, 4, 3] was 0.25% off otherwise: test_fuzz_cosine)
        return pairwise_cosine_similarity(a.float(), b.float(), eps, backend=name).to(a.dtype)
    Z = math.prod(batch)
    a3 = a.expand(*batch, N, D).reshape(Z, N, D)
    b3 = b.expand(*batch, M, D).reshape(Z, M, D)
    return op("pairwise_cosine_similarity", name)(a3, b3, eps).reshape(*batch, N, M)


@chk.autocast_rule("student", "teacher")
def feature_distillation_loss(
    student: Tensor,
    teacher: Tensor,
    kind: str = "mse",
    reduction: str = "mean",
    *,
    eps: float = 1e-8,
    backend: str | None = None,
) -> Tensor:
    """Feature distillation loss over rows of [..., D] features.

    kind="mse": |f_S - f_T|^2 per row, so reduction="mean" is
    1/N sum_i |f_i^T - f_i^S|^2 (a mean over rows, not over elements);
    kind="cosine": 1 - cos(f_S, f_T) per row. Gradients flow to both inputs (only to
    those that require them). Returns float32 (float64 for float64 inputs)."""
    fn = "pykernels.feature_distillation_loss"
    _check_pair(fn, "student", student, "teacher", teacher)
    chk.choice(fn, "kind", kind, KINDS)
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    chk.positive(fn, "eps", eps)
    name = backends.resolve(backend, student.device, fn)
    if name == "reference":
        return ref.feature_distillation_loss(student, teacher, kind, reduction, eps)
    per_row = op("feature_distillation_loss", name)(student, teacher, kind, eps)
    return ref.reduce(per_row, reduction)
