"""Shared pieces of the property-based tests (tests/test_fuzz_<family>.py).

Strategies draw a *description* of each tensor (shape, dtype, layout, value scale, seed);
`Spec.make` turns it into a leaf tensor plus the strided view an op is called with, so
the same view can be rebuilt on the float64 copy the reference runs on. `compare` runs a
backend and checks every output and every gradient against the float64 reference,
with the idiomatic same-precision composition as the baseline (pykernels/_precision.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from hypothesis import assume, note
from hypothesis import strategies as st

from .helpers import (
    ALL_BACKENDS,
    TOLERANCE,
    assert_close,
    backend_device,
    dtypes_for,
    poisoned,
    rel_err,
)

BACKENDS = ALL_BACKENDS  # cuda params skip without a GPU

# ----------------------------------------------------------------------------- strategies
# Sizes: 1, primes, and one past the power-of-two blocks the CPU kernels vectorise and
# tile by. Triton runs under the interpreter here, one program at a time: tiny sizes.
CPU_SIZES = (1, 2, 3, 5, 7, 8, 13, 17, 31, 33, 64, 65, 127, 129, 257)
CPU_BIG_SIZES = (511, 1025, 4097)
TRITON_SIZES = (1, 2, 3, 5, 7, 16, 17, 33)
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")


def on_triton(backend: str) -> bool:
    return backend == "triton" and backend_device(backend).type == "cpu"


def sizes(backend: str, *, big: bool = False, lo: int = 1):
    """One dimension's size. `big` adds sizes past the CPU kernels' larger blocks."""
    pool = TRITON_SIZES if on_triton(backend) else CPU_SIZES + (CPU_BIG_SIZES if big else ())
    return st.sampled_from([s for s in pool if s >= lo])


def rows(backend: str, hi: int = 9):
    """A small count of rows (batch, samples): the kernels' row split, not their inner loop."""
    return st.integers(1, 4 if on_triton(backend) else hi)


def dtypes(backend: str):
    return st.sampled_from(dtypes_for(backend))


def scales(dtype: torch.dtype, hi: float = 1e4):
    """Value magnitudes: tiny (1e-30; 1e-4 for float16, whose range ends near 6e-8),
    small, unit, large and huge, capped at `hi`."""
    tiny = 1e-4 if dtype == torch.float16 else 1e-30
    return st.sampled_from([s for s in (tiny, 1e-3, 1.0, 30.0, 1e4) if s <= hi])


@dataclasses.dataclass(frozen=True)
class Spec:
    """A float tensor to draw: logical shape, dtype, memory layout, value scale, seed.

    values "normal": randn * scale (mixed signs); "wide": each element also times
    10^u, u uniform in [-3, 0] (magnitudes spread over three decades); "positive": |randn|;
    "probs": softmax(randn * scale) over the view's last dim (a sliced view takes a
    subset of each distribution)."""

    shape: tuple
    dtype: torch.dtype
    layout: str = "contiguous"
    scale: float = 1.0
    values: str = "normal"
    seed: int = 0
    stream: int = 0  # the k-th tensor of a case: equal seeds still give different values

    def _leaf_shape_and_view(self):
        shape, r = list(self.shape), len(self.shape)
        if self.layout == "transposed" and r >= 2:
            shape[-1], shape[-2] = shape[-2], shape[-1]
            return shape, lambda x: x.transpose(-1, -2)
        if self.layout == "sliced":
            shape[-1] *= 2
            if r >= 2:
                shape[0] *= 3  # rows 1, 4, 7, ...: a storage offset and a row step
                return shape, lambda x: x[1::3][..., ::2]
            return shape, lambda x: x[..., ::2]
        if self.layout == "expanded" and r >= 2:  # dim 0: never the last dim ops reduce over
            full = tuple(self.shape)
            shape[0] = 1  # every row the same storage: stride 0
            return shape, lambda x: _moved_rows(x, x.expand(full))
        return shape, lambda x: x

    def values64(self) -> torch.Tensor:
        leaf_shape, _ = self._leaf_shape_and_view()
        g = torch.Generator().manual_seed(self.seed + (self.stream << 31))
        x = torch.randn(leaf_shape, generator=g, dtype=torch.float64)
        if self.values == "wide":
            x = x * 10 ** (-3 * torch.rand(leaf_shape, generator=g, dtype=torch.float64))
        elif self.values == "positive":
            x = x.abs()
        elif self.values == "probs":  # rows of the view are distributions; scale sets how sharp
            view_last = -2 if self.layout == "transposed" and len(self.shape) >= 2 else -1
            return torch.softmax(x * self.scale, dim=view_last)
        return x * self.scale

    def leaf(self, device, requires_grad: bool = True) -> torch.Tensor:
        """The leaf in `dtype` on `device`. An expanded half-precision leaf takes no gradient:
        autograd sums its rows' gradients, each rounded to the half dtype by whoever made
        it, and a sum that cancels turns those roundings into any relative error (5.6% on four
        rows of a bfloat16 x0, test_fuzz_diffusion). That sum is autograd's; the kernels'
        gradients of the same inputs are checked in every other layout."""
        summed = self.layout == "expanded" and len(self.shape) >= 2 and self.shape[0] > 1
        requires_grad = requires_grad and not (
            summed and self.dtype in (torch.float16, torch.bfloat16)
        )
        return self.values64().to(device=device, dtype=self.dtype).requires_grad_(requires_grad)

    def view(self, leaf: torch.Tensor) -> torch.Tensor:
        return self._leaf_shape_and_view()[1](leaf)


@st.composite
def specs(
    draw,
    shape,
    dtype,
    *,
    hi: float = 1e4,
    layouts=LAYOUTS,
    values=("normal", "wide"),
    stream: int = 0,
):
    """A Spec of `shape` and `dtype` with a drawn layout, scale and seed. Give each input
    of a case its own `stream`, so that two inputs never shrink to the same values (equal
    inputs make cosines 1 and divergences 0: gradients that are zero in exact math)."""
    return Spec(
        tuple(shape),
        dtype,
        draw(st.sampled_from(layouts)),
        draw(scales(dtype, hi)),
        draw(st.sampled_from(values)),
        draw(st.integers(0, 2**31 - 1)),
        stream,
    )


def seeds():
    return st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- checking
def _as_tuple(x):
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def upstream(out: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed random upstream gradient for `out`, in out's dtype (its float64 copy is the
    exact same numbers, so every run weighs the outputs identically)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(
        device=out.device, dtype=out.dtype
    )


def _flush(x: torch.Tensor, ref: torch.Tensor, tiny) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, ref) as float64 CPU copies with the elements where both are below `tiny` (the
    dtype's smallest normal number; a number or a per-element tensor) set to 0:
    subnormal results carry no relative accuracy (1e-30 inputs give cosines of 1e-44,
    which one float32 formulation keeps as a subnormal and another flushes to zero).
    Both, not each: an element on either side of the threshold stays a small difference,
    not a whole element of error (float16 gradients of ~1e-4 next to 6.1e-5, each flushed
    on its own, would give 0.48% against 0.22%)."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    both = (x.abs() < tiny) & (ref.abs() < tiny)
    return x.masked_fill(both, 0.0), ref.masked_fill(both, 0.0)


def _moved_rows(leaf: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """An expanded view; for a leaf that _perturbed moved, every row moved on its own. A
    kernel rounds each row of an expanded input on its own (equal texts' logits came out a
    rounding apart: 2.4e-4 of a loss at float32 logits of 2.6e4, test_fuzz_contrastive), which
    moving the one stored row, keeping the rows equal, cannot show."""
    move = getattr(leaf, "_pk_move", None)
    return rows if move is None else rows * move(rows)


def _perturbed(dtype: torch.dtype, flip: bool = False):
    """A cast for the reference's leaves: float64, each element moved by one rounding of
    the accumulation dtype (eps relative, a fixed random sign; flip: the opposite signs,
    for where the first move leaves the op's domain). How far that moves the
    float64 answer is the problem's own sensitivity to the rounding any float32 (float64)
    computation makes: a backward-stable kernel is off by a small multiple of it (logits
    of 1e8 in float64, 120 in float32: errors of 6e-9 and 2.2e-5 against tolerances of
    1e-10 and 1e-5, where the inputs' rounding alone moves the answer that far)."""
    eps = _acc_eps(dtype)
    g = torch.Generator().manual_seed(12345)

    def factor(like):  # 1 + eps * (random sign) per element of `like`
        sign = (torch.randint(0, 2, like.shape, generator=g, dtype=torch.float64) * 2 - 1) * (
            -1 if flip else 1
        )
        return (1 + eps * sign).to(like.device)

    def cast(x):
        x64 = x.detach().double().cpu()
        moved = (x64 * factor(x64)).to(x.device).requires_grad_(x.requires_grad)
        moved._pk_move = factor  # an expanded view of it moves each row (_moved_rows)
        return moved

    return cast


def _sensitivity(moved, ref64) -> float:
    """How far the moved reruns (_perturbed) are from the reference: the larger finite one
    (0.0 when neither is finite)."""
    errs = [e for e in (rel_err(m, ref64) for m in moved) if math.isfinite(e)]
    return max(errs, default=0.0)


def _acc_eps(dtype: torch.dtype) -> float:
    """The unit roundoff of the dtype the kernels accumulate `dtype` in."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def _terms_floor(terms, ref64, dtype) -> float:
    """The error a sum makes when its terms are rounded in the accumulation dtype, relative
    to the reference (rel_err's units): 4 roundings of ||terms||, the element-wise
    magnitudes of the terms each element is summed from. A gradient that cancels to far
    below its terms (features of 1e-30 whose float32 logits underflow to 0: every float32
    run, PyTorch's included, gives 5 * fl(0.2) - 1 of them where the exact answer is
    1e-47) has no relative accuracy in that dtype; this bounds its absolute error instead."""
    if terms is None:
        return 0.0
    denom = ref64.norm().item()
    size = 4 * _acc_eps(dtype) * terms.detach().double().cpu().norm().item()
    return size if denom == 0 else size / denom


def _close(out, ref64, dtype, baseline, what, tol=None, leaf_dtypes=None, cond=0.0, terms=None):
    """assert_close on copies flushed (see _flush) below the smallest normal number of the
    output's dtype (leaf_dtypes: the dtype of each element, for a joint gradient), with
    the tolerance on top of the error of the float64 reference rounded to that dtype: no
    result in that dtype can be closer, and on a vector of a few bf16 elements that
    rounding alone is up to 2^-9 = 0.2% of the 1% tolerance. (Triton's interpreter rounds
    to bfloat16 as a GPU does: tests/_interpreter_rounding.py.)"""
    rounded = ref64.detach().cpu().double()
    if leaf_dtypes is None:
        rounded, tiny = rounded.to(out.dtype), torch.finfo(out.dtype).tiny
    else:
        parts = list(zip(rounded.split(leaf_dtypes[1]), leaf_dtypes[0]))
        rounded = torch.cat([r.to(d) for r, d in parts])
        tiny = torch.cat([torch.full_like(r, torch.finfo(d).tiny) for r, d in parts])
    floor = rel_err(*_flush(rounded, ref64, tiny))
    base_err = rel_err(*_flush(baseline, ref64, tiny))
    out, ref64 = _flush(out, ref64, tiny)
    # A case whose same-precision reference overflows where float64 does not says
    # nothing about the kernel (any answer would pass): draw another.
    assume(base_err != math.inf)
    limit = TOLERANCE[dtype] if tol is None else tol
    # the problem's conditioning (see _perturbed): 4 roundings' worth of it
    cond = 4 * cond if math.isfinite(cond) else 0.0
    limit = max(limit, 2 * base_err, cond, _terms_floor(terms, ref64, dtype)) + (
        floor if math.isfinite(floor) else 0.0
    )
    assert_close(out, ref64, dtype, tol=limit, what=what)


def _vjp(outs, leaves, ws):
    """The leaves' gradients under upstream weights ws (None: not weighted). An output
    that does not require grad contributes nothing: the reference's formula may not use
    an input the fused op still marks differentiable (diffusion_loss's x0 under
    "epsilon", when no other input takes a gradient); its gradient must then be 0."""
    pairs = [(o, w) for o, w in zip(outs, ws) if w is not None and o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in leaves]
    gs = torch.autograd.grad(
        [o for o, _ in pairs], leaves, [w for _, w in pairs], allow_unused=True
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, leaves)]


def compare(
    fused,
    reference,
    leaves,
    dtype,
    *,
    backend,
    exact=(),
    what="op",
    grad_tol=None,
    grads=True,
    baseline=None,
    grad_terms=None,
):
    """Run `fused(*leaves)` (poisoned memory) and check it against `reference(*leaves64)`.

    leaves: the tensors the calls take (those with requires_grad get gradients checked).
    Outputs: shape and dtype as the same-precision reference; float outputs within the
    dtype's tolerance of the float64 reference or twice the same-precision reference's
    error; integer outputs and outputs listed in `exact` (copies: gathers, masks) equal
    to the same-precision reference bit for bit. Gradients: the joint gradient of every
    leaf under a fixed upstream weight, then each leaf's on its own where it carries a
    non-negligible part (>= 1e-3) of the joint norm (below that its relative error is
    noise on noise). grad_tol: the gradients' tolerance (default the dtype's), or a list
    of one per leaf that requires grad (None: the dtype's), the joint gradient then held to their
    mix weighted by each leaf's share of its norm (the errors add up to at most that).
    grads=False: outputs only. baseline: the same-precision run when it is not
    `reference` (a backend whose documented precision differs, e.g. half-precision
    operands of its products). backend: the backend `fused` runs. grad_terms: (float64
    leaves, float64 upstream weights) -> for each leaf that requires grad, the element-wise
    magnitude of the terms its gradient is summed from (see _terms_floor), for ops whose
    gradients cancel.
    Returns the fused outputs."""
    with poisoned():
        outs = _as_tuple(fused(*leaves))
    grad_leaves = (
        [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad] if grads else []
    )
    ws = [upstream(o, 1000 + k) if o.requires_grad else None for k, o in enumerate(outs)]
    if grad_leaves and any(w is not None for w in ws):
        with poisoned():
            got = _vjp(outs, grad_leaves, ws)
    r64, want = _rerun(
        leaves, lambda x: x.detach().double().requires_grad_(x.requires_grad), reference
    )
    rb, base = _rerun(
        leaves, lambda x: x.detach().clone().requires_grad_(x.requires_grad), baseline or reference
    )
    # Two opposite moves: one may leave the domain (a DDIM step with eta > 0 to the same
    # alpha moved towards more noise is NaN by design) where the other does not.
    moved = [_rerun(leaves, _perturbed(dtype, flip), reference) for flip in (False, True)]
    _check_outputs(outs, want, base, moved, dtype, exact, what)
    if not grad_leaves or all(w is None for w in ws):
        return outs
    want_g, want_gp, base_g, terms = _reference_grads(r64, rb, want, base, moved, ws, grad_terms)
    _check_grads(got, grad_leaves, want_g, want_gp, base_g, terms, dtype, grad_tol, what)
    return outs


def _rerun(leaves, cast, f):
    """f on the leaves with each float tensor cast (float64 copies, same-precision copies,
    perturbed copies): the cast leaves and f's outputs."""
    xs = [cast(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in leaves]
    return xs, _as_tuple(f(*xs))


def _check_outputs(outs, want, base, moved, dtype, exact, what):
    """Checks the fused outputs: as many as the reference's; each with the same-precision
    reference's shape, dtype and device; integer outputs and those in `exact` equal to it
    bit for bit; float outputs within the contract against the float64 reference `want`
    (the perturbed runs `moved` give the problem's conditioning)."""
    assert len(outs) == len(want), f"{what}: {len(outs)} outputs, reference has {len(want)}"
    for k, (o, w, b) in enumerate(zip(outs, want, base)):
        name = f"{what} output {k}"
        assert o.shape == b.shape, f"{name}: shape {tuple(o.shape)} != reference {tuple(b.shape)}"
        assert o.dtype == b.dtype, f"{name}: dtype {o.dtype} != reference {b.dtype}"
        assert o.device == b.device, f"{name}: device {o.device} != reference {b.device}"
        if k in exact or not o.is_floating_point():
            assert torch.equal(o.cpu(), b.cpu()), f"{name}: not equal to the reference"
            continue
        _close(o, w, dtype, b, name, cond=_sensitivity([wp[k] for _, wp in moved], w))


def _reference_grads(r64, rb, want, base, moved, ws, grad_terms):
    """The gradients the fused ones are checked against, under the same upstream weights:
    float64 (want_g), float64 of each perturbed run (want_gp, for the conditioning), same
    precision (base_g), and grad_terms' magnitudes (None without grad_terms)."""
    ws64 = [None if w is None else w.double() for w in ws]

    def needs_grad(xs):
        return [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]

    want_g = _vjp(want, needs_grad(r64), ws64)
    want_gp = [_vjp(wp, needs_grad(rp), ws64) for rp, wp in moved]
    base_g = _vjp(base, needs_grad(rb), ws)
    terms = grad_terms(r64, ws64) if grad_terms else None
    return want_g, want_gp, base_g, terms


def _check_grads(got, grad_leaves, want_g, want_gp, base_g, terms, dtype, grad_tol, what):
    """Checks the fused gradients: each leaf's with its dtype and shape; the joint gradient
    of every leaf within the contract against float64; then each leaf's on its own where it
    carries a non-negligible part (>= 1e-3) of the joint norm."""
    for k, (g, x) in enumerate(zip(got, grad_leaves)):
        assert g.dtype == x.dtype and g.shape == x.shape, (
            f"{what} grad {k}: {g.dtype} {tuple(g.shape)}"
        )
    tols, share, joint_tol = _grad_tolerances(grad_tol, dtype, want_g)
    _close(
        _joint(got),
        _joint(want_g),
        dtype,
        _joint(base_g),
        f"{what} joint grad",
        joint_tol,
        leaf_dtypes=([x.dtype for x in grad_leaves], [x.numel() for x in grad_leaves]),
        cond=_sensitivity([_joint(gp) for gp in want_gp], _joint(want_g)),
        terms=None if terms is None else _joint(terms),
    )
    for k, (g, w, b) in enumerate(zip(got, want_g, base_g)):
        if len(got) > 1 and share[k] >= 1e-3:
            _close(
                g,
                w,
                dtype,
                b,
                f"{what} grad {k}",
                tols[k],
                cond=_sensitivity([gp[k] for gp in want_gp], w),
                terms=None if terms is None else terms[k],
            )


def _joint(gs):
    """The gradients of every leaf as one float64 vector (_close flushes it at each leaf's
    own precision)."""
    return torch.cat([g.detach().double().cpu().reshape(-1) for g in gs])


def _grad_tolerances(grad_tol, dtype, want_g):
    """Sizes the gradient checks: each leaf's tolerance (grad_tol, one per
    leaf, or the dtype's), each leaf's share of the joint gradient's norm, and the joint
    gradient's tolerance (with one per leaf: their mix weighted by those shares)."""
    total = _joint(want_g).norm().item()
    per_leaf = isinstance(grad_tol, (list, tuple))
    tols = [
        TOLERANCE[dtype] if t is None else t
        for t in (grad_tol if per_leaf else [grad_tol] * len(want_g))
    ]
    share = [w.double().norm().item() / total if total > 0 else 1.0 for w in want_g]
    joint_tol = (
        grad_tol
        if not per_leaf
        else sum(t * f for t, f in zip(tols, share))
        if total > 0
        else max(tols)
    )
    return tols, share, joint_tol


def confident_row_tolerance(row_losses64: torch.Tensor, dtype: torch.dtype) -> float:
    """A gradient tolerance for softmax cross entropies: the dtype's, or eps / (smallest
    row loss) when that is larger. A row whose loss l is tiny has a target class of
    softmax 1 - l, and its gradient softmax - 1 = -l is known in the accumulation dtype
    (eps) only to eps / l relative: every formulation that forms the softmax and then
    subtracts 1, PyTorch's included, loses those digits (info_nce 3.5% at
    l = 2e-6 in float32 against PyTorch's 0.9%; cross_entropy 0.68% at l = 7.3e-6 against
    PyTorch's 0.1%). The joint gradient's error is at most about that of its worst row.
    row_losses64: the float64 reference's losses of the rows that count (not ignored)."""
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    smallest = row_losses64.abs().min().item() if row_losses64.numel() else 1.0
    # capped at 1: a row with l below eps has a target of softmax exactly 1 and a
    # gradient of pure rounding; NaN, Inf, a wrong shape or a wrong size still fail
    return max(TOLERANCE[dtype], min(1.0, eps / smallest if smallest > 0 else 1.0))


def describe(**kw) -> str:
    """One line per case for hypothesis.note: everything needed to rebuild it."""
    text = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    note(text)
    return text


def logit_rounding_limit(scale: float) -> float:
    """The relative error of a softmax cross entropy's small loss l whose logits are
    scale * <a, b> of unit vectors, each logit rounded once in float32 (|dL| <= eps * scale):
    l moves by up to 2 * eps * scale * l (at scale 3e3: 7.2e-4). A limit of twice PyTorch's
    own float32 error alone would depend on how the machine's BLAS happens to round (PyTorch's
    mm 4.6e-5 off, the Triton kernel 1.1e-4, the ring 3.6e-4 on one machine, each within
    one rounding of the logits)."""
    return 2 * torch.finfo(torch.float32).eps * scale


__all__ = [
    "BACKENDS",
    "Spec",
    "compare",
    "confident_row_tolerance",
    "describe",
    "dtypes",
    "on_triton",
    "rows",
    "scales",
    "seeds",
    "sizes",
    "specs",
    "upstream",
    "TOLERANCE",
    "backend_device",
    "logit_rounding_limit",
]
