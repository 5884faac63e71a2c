"""Cosine family: cosine similarity, pairwise cosine similarity, feature distillation.

Public functions validate, pick a backend, and call one op; the ops are registered
below (fake implementations, autograd, Triton ops). The math is in
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
from ._registry import op, register_cpp, register_pair_autograd, triton_available

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
            raise ValueError(f"{fn}: argument '{name}' must have shape [..., rows, D], got {tuple(x.shape)}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{fn}: arguments 'a' and 'b' must have the same feature size D (last dim), got {a.shape[-1]} and {b.shape[-1]}"
        )


# ----------------------------------------------------------------------------- C++ ops
def _rows_fake(x1, x2, eps):
    return x1.new_empty(x1.shape[:-1])


def _distance_fake(s, t, kind, eps):
    return s.new_empty(s.shape[:-1], dtype=acc_dtype(s.dtype))


def _pairwise_fake(a, b, eps):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]))


def _pair_grads_fake(grad, x1, x2, *extra):
    return torch.empty_like(x1), torch.empty_like(x2)


for _name, _fake in (
    ("cosine_similarity", _rows_fake),
    ("feature_distance", _distance_fake),
    ("pairwise_cosine_similarity", _pairwise_fake),
):
    register_cpp(_name, _fake, _pair_grads_fake)

# ----------------------------------------------------------------------------- Triton ops
if triton_available():
    from torch.library import triton_op

    from ..triton_kernels import cosine as tk

    @triton_op("pykernels::cosine_similarity_triton", mutates_args=())
    def _cosine_similarity_triton(x1: Tensor, x2: Tensor, eps: float) -> Tensor:
        _check_rowwise_op("pykernels::cosine_similarity_triton", "x1", x1, "x2", x2, eps)
        return tk.rowwise_forward(x1, x2, eps, tk.MODE_COS)

    @triton_op("pykernels::cosine_similarity_backward_triton", mutates_args=())
    def _cosine_similarity_backward_triton(grad: Tensor, x1: Tensor, x2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        fn = "pykernels::cosine_similarity_backward_triton"
        _check_rowwise_op(fn, "x1", x1, "x2", x2, eps)
        chk.grad(fn, grad, x1.shape[:-1], x1)  # the kernel reads one value per row
        return tk.rowwise_backward(grad, x1, x2, eps, tk.MODE_COS)

    @triton_op("pykernels::feature_distance_triton", mutates_args=())
    def _feature_distance_triton(student: Tensor, teacher: Tensor, kind: str, eps: float) -> Tensor:
        _check_rowwise_op("pykernels::feature_distance_triton", "student", student, "teacher", teacher, eps, kind)
        return tk.rowwise_forward(student, teacher, eps, _triton_mode(kind))

    @triton_op("pykernels::feature_distance_backward_triton", mutates_args=())
    def _feature_distance_backward_triton(grad: Tensor, student: Tensor, teacher: Tensor, kind: str,
                                          eps: float) -> tuple[Tensor, Tensor]:
        fn = "pykernels::feature_distance_backward_triton"
        _check_rowwise_op(fn, "student", student, "teacher", teacher, eps, kind)
        chk.grad(fn, grad, student.shape[:-1], student)
        return tk.rowwise_backward(grad, student, teacher, eps, _triton_mode(kind))

    def _check_rowwise_op(fn: str, n1: str, x1, n2: str, x2, eps, kind=None) -> None:
        """The checks of a row-wise op and of its backward (as the C++ ops make them)."""
        _check_pair(fn, n1, x1, n2, x2)
        if kind is not None:
            chk.choice(fn, "kind", kind, KINDS)
        chk.positive(fn, "eps", eps)

    def _triton_mode(kind: str) -> int:
        return tk.MODE_SQDIST if kind == "mse" else tk.MODE_ONE_MINUS_COS

    @triton_op("pykernels::pairwise_cosine_similarity_triton", mutates_args=())
    def _pairwise_triton(a: Tensor, b: Tensor, eps: float) -> Tensor:
        _check_pairwise_op("pykernels::pairwise_cosine_similarity_triton", a, b, eps)
        # Inverse norms first (N + M floats), then one matmul whose epilogue scales
        # rows and columns: the normalised inputs are never written out.
        _, inv_a = tk.normalize(a, eps, write_y=False)
        _, inv_b = tk.normalize(b, eps, write_y=False)
        return tk.scaled_matmul(a, b.transpose(1, 2), inv_a, inv_b,
                                allow_tf32=torch.backends.cuda.matmul.allow_tf32)

    @triton_op("pykernels::pairwise_cosine_similarity_backward_triton", mutates_args=())
    def _pairwise_backward_triton(grad: Tensor, a: Tensor, b: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        # out = a_hat b_hat^T: grad a_hat = G b_hat, grad b_hat = G^T a_hat, then through
        # the normalisation of each row. grad a_hat / b_hat stay in the accumulation dtype:
        # rounding them to a half type as well cost bf16 gradients 1% (fuzz found it).
        fn = "pykernels::pairwise_cosine_similarity_backward_triton"
        _check_pairwise_op(fn, a, b, eps)
        chk.grad(fn, grad, (a.shape[0], a.shape[1], b.shape[1]), a)
        grad = grad.to(a.dtype)  # the matmuls take one dtype; any float grad is accepted, as by the C++ op
        a_hat, _ = tk.normalize(a, eps, write_y=True)
        b_hat, _ = tk.normalize(b, eps, write_y=True)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        acc = acc_dtype(a.dtype)
        ga_hat = tk.scaled_matmul(grad, b_hat, allow_tf32=tf32, out_dtype=acc)
        gb_hat = tk.scaled_matmul(grad.transpose(1, 2), a_hat, allow_tf32=tf32, out_dtype=acc)
        return tk.normalize_backward(ga_hat, a, eps), tk.normalize_backward(gb_hat, b, eps)

    def _check_pairwise_op(fn: str, a, b, eps) -> None:
        """The op takes [B, N, D] x [B, M, D] (the public function flattens the batch), as the C++ op."""
        _check_pairwise(fn, a, b)
        for name, x in (("a", a), ("b", b)):
            if x.dim() != 3:
                raise ValueError(f"{fn}: argument '{name}' must have 3 dimension(s), got shape {tuple(x.shape)}")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"{fn}: arguments 'a' [B, N, D] and 'b' [B, M, D] must agree in B, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        chk.positive(fn, "eps", eps)

for _name, _n_extra in (("cosine_similarity", 1), ("feature_distance", 2), ("pairwise_cosine_similarity", 1)):
    register_pair_autograd(_name, _n_extra)


# ----------------------------------------------------------------------------- public API
@chk.autocast_rule("x1", "x2")
def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = -1, eps: float = 1e-8, *,
                      backend: str | None = None) -> Tensor:
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
        # cancel (a few % error, found by the fuzz tests): run in float32 so the sum is
        # taken in float32, and round the result once.
        return cosine_similarity(x1.float(), x2.float(), dim, eps, backend=name).to(x1.dtype)
    x1, x2 = x1.expand(shape).movedim(d, -1), x2.expand(shape).movedim(d, -1)
    return op("cosine_similarity", name)(x1, x2, eps)


def _half_broadcast_grad(*inputs: tuple[Tensor, tuple]) -> bool:
    """A half-precision call where an input that needs a gradient is broadcast to a larger
    shape: (input, the shape it is expanded to) pairs."""
    return (inputs[0][0].dtype in (torch.float16, torch.bfloat16) and torch.is_grad_enabled()
            and any(x.requires_grad and tuple(x.shape) != tuple(full) for x, full in inputs))


@chk.autocast_rule("a", "b")
def pairwise_cosine_similarity(a: Tensor, b: Tensor | None = None, eps: float = 1e-8, *,
                               backend: str | None = None) -> Tensor:
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
        # (float16 b [1, 3] against a [2, 4, 3]: 0.25% against the 0.2% tolerance, fuzz)
        return pairwise_cosine_similarity(a.float(), b.float(), eps, backend=name).to(a.dtype)
    Z = math.prod(batch)
    a3 = a.expand(*batch, N, D).reshape(Z, N, D)
    b3 = b.expand(*batch, M, D).reshape(Z, M, D)
    return op("pairwise_cosine_similarity", name)(a3, b3, eps).reshape(*batch, N, M)


@chk.autocast_rule("student", "teacher")
def feature_distillation_loss(student: Tensor, teacher: Tensor, kind: str = "mse", reduction: str = "mean",
                              *, eps: float = 1e-8, backend: str | None = None) -> Tensor:
    """Feature distillation loss over rows of [..., D] features.

    kind="mse": |f_S - f_T|^2 per row, so reduction="mean" is the seed's
    L_feature = 1/N sum_i |f_i^T - f_i^S|^2 (a mean over rows, not over elements);
    kind="cosine": 1 - cos(f_S, f_T) per row. Gradients flow to both inputs.
    Returns float32 (float64 for float64 inputs)."""
    fn = "pykernels.feature_distillation_loss"
    _check_pair(fn, "student", student, "teacher", teacher)
    chk.choice(fn, "kind", kind, KINDS)
    chk.choice(fn, "reduction", reduction, REDUCTIONS)
    chk.positive(fn, "eps", eps)
    name = backends.resolve(backend, student.device, fn)
    if name == "reference":
        return ref.feature_distillation_loss(student, teacher, kind, reduction, eps)
    return ref.reduce(op("feature_distance", name)(student, teacher, kind, eps), reduction)


# ----------------------------------------------------------------------------- self-check
def _rand_pair(shape):
    def make(device, dtype):
        return tuple(torch.randn(*shape, device=device).to(dtype).requires_grad_() for _ in range(2))
    return make


SELFCHECK = [
    ("cosine_similarity [64, 300]", _rand_pair((64, 300)), lambda be, a, b: cosine_similarity(a, b, backend=be)),
    ("feature_distillation_loss mse", _rand_pair((64, 300)), lambda be, a, b: feature_distillation_loss(a, b, backend=be)),
    ("feature_distillation_loss cosine", _rand_pair((64, 300)),
     lambda be, a, b: feature_distillation_loss(a, b, "cosine", backend=be)),
    ("pairwise_cosine_similarity [64, 96]", _rand_pair((64, 96)),
     lambda be, a, b: pairwise_cosine_similarity(a, b, backend=be)),
]
