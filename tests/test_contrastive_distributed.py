"""The contrastive family on torch.distributed: pykernels.nn.InfoNCELoss (gather and
ring modes) and pykernels.nn.ClipLoss (open_clip's modes).

Real process groups: the gloo backend on this CPU machine, 2 and 4 processes. One launch
per world size runs every distributed check (importing torch in each process is the
slow part) and records each check's outcome per rank; the tests below report them one
by one. Every check computes what one process would compute on the global batch, in
float64 with explicit logits and F.cross_entropy (independent of pykernels), and
compares loss and gradients on every rank.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import pykernels
from pykernels import distributed as pkd
from pykernels.nn import ClipLoss, InfoNCELoss

from ._distributed import init_gloo, outcomes_fixture, report, run_checks
from ._fuzz import logit_rounding_limit
from .helpers import TOLERANCE, peak_cpu_bytes, rel_err

WORLD_SIZES = (2, 4)
N_LOCAL, DIM = 3, 5  # n = 3 with chunk_size 2 also exercises a ragged last tile


# ----------------------------------------------------------------------------- the single-process truth
def global_loss(img, txt, scale, bias=None, *, symmetric=True, reduction="mean", normalize=False):
    """InfoNCE on the whole batch, the plain way: explicit logits and F.cross_entropy."""
    if normalize:
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = scale * img @ txt.T
    if bias is not None:
        logits = logits + bias
    labels = torch.arange(img.shape[0])
    i2t = F.cross_entropy(logits, labels, reduction=reduction)
    if not symmetric:
        return i2t
    return (i2t + F.cross_entropy(logits.T, labels, reduction=reduction)) / 2


def open_clip_rank_loss(img, txt, scale, bias, rank, world, local_loss, gather_with_grad):
    """open_clip's ClipLoss as rank `rank` computes it, re-stated on the global tensors:
    gathered blocks are constants unless gather_with_grad, except this rank's own slot
    for the global loss; local_loss scores this rank's rows against everything with
    positives at rank * n + arange(n)."""
    n = img.shape[0] // world

    def gathered(x):
        if gather_with_grad:
            return x
        blocks = [b.detach() for b in x.split(n)]
        if not local_loss:
            blocks[rank] = x[rank * n : (rank + 1) * n]
        return torch.cat(blocks)

    all_img, all_txt = gathered(img), gathered(txt)
    if local_loss:
        mine = slice(rank * n, (rank + 1) * n)
        per_image, per_text = scale * img[mine] @ all_txt.T, scale * txt[mine] @ all_img.T
        labels = torch.arange(n) + rank * n
    else:
        per_image = scale * all_img @ all_txt.T
        per_text = per_image.T
        labels = torch.arange(img.shape[0])
    if bias is not None:
        per_image, per_text = per_image + bias, per_text + bias
    return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


# ----------------------------------------------------------------------------- data and comparisons
def global_inputs(seed, world, dtype=torch.float64, bias=True):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(world * N_LOCAL, DIM, generator=gen, dtype=torch.float64).to(dtype)
    txt = torch.randn(world * N_LOCAL, DIM, generator=gen, dtype=torch.float64).to(dtype)
    scale = torch.tensor(3.0, dtype=dtype)
    b = torch.tensor(-2.0, dtype=dtype) if bias else None
    return img, txt, scale, b


def leaves(*xs):
    return [None if x is None else x.detach().clone().requires_grad_() for x in xs]


def local_block(x, rank):
    return x[rank * N_LOCAL : (rank + 1) * N_LOCAL]


def check_close(out, ref, dtype, what):
    err = rel_err(out, ref)
    assert err <= TOLERANCE[dtype], (
        f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]:.3g} ({dtype})"
    )


def check_bias_grad(out, ref, dtype):
    """Softmax cross entropy ignores a shift of all logits: the exact gradient is 0, so
    compare absolutely (a relative error of two round-off values means nothing)."""
    for name, g in (("logit_bias grad", out), ("reference logit_bias grad", ref)):
        assert g is not None and abs(float(g)) <= TOLERANCE[dtype], (
            f"{name} = {float(g) if g is not None else g}"
        )


def check_info_nce(
    rank,
    world,
    *,
    mode,
    dtype=torch.float64,
    bias=True,
    group=None,
    members=None,
    seed=0,
    chunk_size=1024,
    backend=None,
    **options,
):
    """InfoNCELoss on this rank's block == the global loss; grads == the global grads' slice."""
    members = list(range(world)) if members is None else members
    if rank not in members:
        return
    gr, gw = members.index(rank), len(members)
    img, txt, scale, b = global_inputs(seed, gw, dtype, bias)
    # truth: float64 on the (already rounded) inputs
    g_img, g_txt, g_scale, g_b = leaves(
        *(None if x is None else x.double() for x in (img, txt, scale, b))
    )
    ref = global_loss(g_img, g_txt, g_scale, g_b, **options)
    ref.backward()
    l_img, l_txt, l_scale, l_b = leaves(local_block(img, gr), local_block(txt, gr), scale, b)
    out = InfoNCELoss(group, mode, chunk_size=chunk_size, backend=backend, **options)(
        l_img, l_txt, l_scale, l_b
    )
    out.backward()
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), out.dtype
    check_close(out, ref, dtype, "loss")
    check_close(l_img.grad, local_block(g_img.grad, gr), dtype, "image_features grad")
    check_close(l_txt.grad, local_block(g_txt.grad, gr), dtype, "text_features grad")
    check_close(l_scale.grad, g_scale.grad, dtype, "logit_scale grad")
    if bias:
        check_bias_grad(l_b.grad, g_b.grad, dtype)


def check_clip(rank, world, *, local_loss, gather_with_grad, bias=True, cache_labels=False, seed=1):
    img, txt, scale, b = global_inputs(seed, world, bias=bias)
    g_img, g_txt, g_scale, g_b = leaves(img, txt, scale, b)
    ref = open_clip_rank_loss(g_img, g_txt, g_scale, g_b, rank, world, local_loss, gather_with_grad)
    params = [g_scale] + ([g_b] if bias else [])
    ref_param_grads = torch.autograd.grad(ref, params, retain_graph=True)
    # feature grads: all_gather's backward sums every rank's gradient of its copy
    feature_objective = (
        ref
        if not gather_with_grad
        else sum(
            open_clip_rank_loss(g_img, g_txt, g_scale, g_b, q, world, local_loss, True)
            for q in range(world)
        )
    )
    ref_img_grad, ref_txt_grad = torch.autograd.grad(feature_objective, (g_img, g_txt))

    loss_fn = ClipLoss(
        local_loss=local_loss,
        gather_with_grad=gather_with_grad,
        cache_labels=cache_labels,
        rank=rank,
        world_size=world,
    )
    for call in range(2 if cache_labels else 1):  # the second call uses the cached labels
        l_img, l_txt, l_scale, l_b = leaves(
            local_block(img, rank), local_block(txt, rank), scale, b
        )
        out = loss_fn(l_img, l_txt, l_scale, l_b, output_dict=True)["contrastive_loss"]
        out.backward()
        check_close(out, ref, torch.float64, f"loss (call {call})")
        check_close(
            l_img.grad, local_block(ref_img_grad, rank), torch.float64, "image_features grad"
        )
        check_close(
            l_txt.grad, local_block(ref_txt_grad, rank), torch.float64, "text_features grad"
        )
        check_close(l_scale.grad, ref_param_grads[0], torch.float64, "logit_scale grad")
        if bias:
            check_bias_grad(l_b.grad, ref_param_grads[1], torch.float64)
    if cache_labels and local_loss:
        assert len(loss_fn.labels) == 1 and loss_fn.prev_num_logits == N_LOCAL


def check_clip_vs_open_clip(rank, world):
    """Optional: pykernels' ClipLoss against open_clip's own (when it is installed)."""
    try:
        from open_clip.loss import ClipLoss as OpenClipLoss
    except ImportError:
        return "skip: open_clip is not installed"
    for local_loss in (False, True):
        for gather_with_grad in (False, True):
            img, txt, scale, b = global_inputs(2, world)
            kw = dict(
                local_loss=local_loss,
                gather_with_grad=gather_with_grad,
                rank=rank,
                world_size=world,
            )
            results = []
            for module in (ClipLoss(**kw), OpenClipLoss(**kw)):
                l_img, l_txt, l_scale, l_b = leaves(
                    local_block(img, rank), local_block(txt, rank), scale, b
                )
                out = module(l_img, l_txt, l_scale, l_b)
                out.backward()
                results.append((out, l_img.grad, l_txt.grad, l_scale.grad))
            for ours, theirs, what in zip(
                *results, ("loss", "image grad", "text grad", "logit_scale grad")
            ):
                check_close(ours, theirs, torch.float64, f"{what} {kw}")
    return None


def check_size_mismatch(rank, world, *, mode):
    """One rank passes a different n: every rank raises the same ValueError (no hang)."""
    n = N_LOCAL + (1 if rank == 0 else 0)
    img, txt = torch.randn(n, DIM, dtype=torch.float64), torch.randn(n, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match="same n and D on all ranks"):
        InfoNCELoss(mode=mode)(img, txt, torch.tensor(1.0, dtype=torch.float64))


def check_deterministic(rank, world, *, mode):
    img, txt, scale, b = global_inputs(3, world, torch.float32)
    runs = []
    for _ in range(2):
        l_img, l_txt, l_scale = leaves(local_block(img, rank), local_block(txt, rank), scale)
        out = InfoNCELoss(mode=mode)(l_img, l_txt, l_scale)
        out.backward()
        runs.append([out, l_img.grad, l_txt.grad, l_scale.grad])
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_), "two identical runs differ"


def check_ring_memory(rank, world):
    """The ring's peak memory (forward + backward) stays a few local blocks whatever the
    number of ranks (measured: 5.3 blocks at W = 2, 6.3 at W = 3, 4 and 6), while
    gather mode's grows with W (it holds the gathered features)."""
    n, d = 64, 256
    block = n * d * 4
    img, txt = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    scale = torch.tensor(2.0, requires_grad=True)
    peaks = {}
    for mode in ("ring", "gather"):

        def step():
            pkd.info_nce_loss(
                img, txt, scale, mode=mode, chunk_size=16, check_sizes=False
            ).backward()

        step()  # the .grad tensors exist before the measured call
        peaks[mode] = peak_cpu_bytes(step) / block
    assert peaks["ring"] <= 7, f"ring peak {peaks['ring']:.2f} local blocks"
    assert peaks["gather"] >= 2 * world, (
        f"gather peak {peaks['gather']:.2f} blocks: measurement broken?"
    )


def _subgroup_members(world):
    return [world - 1, 0] if world > 2 else [1, 0]  # not in rank order: group ranks != global ranks


CHECKS = {}
for _mode in ("gather", "ring"):
    CHECKS[f"{_mode}-f64-symmetric-mean-bias"] = dict(fn=check_info_nce, mode=_mode)
    CHECKS[f"{_mode}-f64-i2t-sum"] = dict(
        fn=check_info_nce, mode=_mode, bias=False, symmetric=False, reduction="sum"
    )
    CHECKS[f"{_mode}-f64-symmetric-sum"] = dict(fn=check_info_nce, mode=_mode, reduction="sum")
    CHECKS[f"{_mode}-f64-normalize"] = dict(fn=check_info_nce, mode=_mode, normalize=True)
    CHECKS[f"{_mode}-f32"] = dict(fn=check_info_nce, mode=_mode, dtype=torch.float32)
    CHECKS[f"{_mode}-bf16"] = dict(fn=check_info_nce, mode=_mode, dtype=torch.bfloat16)
    CHECKS[f"{_mode}-subgroup"] = dict(fn=check_info_nce, mode=_mode, subgroup=True)
    CHECKS[f"{_mode}-size-mismatch"] = dict(fn=check_size_mismatch, mode=_mode)
    CHECKS[f"{_mode}-deterministic"] = dict(fn=check_deterministic, mode=_mode)
CHECKS["ring-memory"] = dict(fn=check_ring_memory)
# the ring's PyTorch tiles (backend="reference"), several row chunks per tile
CHECKS["ring-reference-f64-chunked"] = dict(
    fn=check_info_nce, mode="ring", backend="reference", chunk_size=2
)
CHECKS["ring-reference-f64-i2t-sum"] = dict(
    fn=check_info_nce,
    mode="ring",
    backend="reference",
    bias=False,
    symmetric=False,
    reduction="sum",
)
CHECKS["ring-reference-bf16"] = dict(
    fn=check_info_nce, mode="ring", backend="reference", dtype=torch.bfloat16
)
for _local in (False, True):
    for _with_grad in (False, True):
        CHECKS[f"clip-local{int(_local)}-withgrad{int(_with_grad)}"] = dict(
            fn=check_clip, local_loss=_local, gather_with_grad=_with_grad
        )
CHECKS["clip-local1-nobias-cached"] = dict(
    fn=check_clip, local_loss=True, gather_with_grad=False, bias=False, cache_labels=True
)
CHECKS["clip-vs-open_clip"] = dict(fn=check_clip_vs_open_clip)


# ----------------------------------------------------------------------------- the launch
def _worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    members = _subgroup_members(world)
    subgroup = dist.new_group(members)  # every rank must take part in creating it
    run_checks(CHECKS, rank, world, out_dir, group=subgroup, members=members)


outcomes = outcomes_fixture(WORLD_SIZES, _worker, __name__)


@pytest.mark.parametrize("check", list(CHECKS))
def test_distributed(outcomes, check):
    report(outcomes, check)


# ----------------------------------------------------------------------------- single process
def test_info_nce_without_process_group_is_the_global_loss():
    img, txt, scale, b = global_inputs(4, 2)
    for mode in ("gather", "ring"):
        ref_leaves = leaves(img, txt, scale)
        ref = global_loss(*ref_leaves, b)
        ref.backward()
        ours = leaves(img, txt, scale)
        out = InfoNCELoss(mode=mode)(*ours, b)
        out.backward()
        check_close(out, ref, torch.float64, f"{mode} loss")
        for x, y in zip(ours, ref_leaves):
            check_close(x.grad, y.grad, torch.float64, f"{mode} grad")


@pytest.mark.parametrize("bias", [False, True])
def test_clip_loss_single_process(bias):
    img, txt, scale, b = global_inputs(5, 2, bias=bias)
    ref_leaves = leaves(img, txt, scale)
    ref = open_clip_rank_loss(*ref_leaves, b, 0, 1, False, False)
    ref.backward()
    check_close(ref, global_loss(img, txt, scale, b), torch.float64, "re-statement vs formula")
    ours = leaves(img, txt, scale)
    out = ClipLoss()(*ours, b)
    out.backward()
    check_close(out, ref, torch.float64, "loss")
    for x, y in zip(ours, ref_leaves):
        check_close(x.grad, y.grad, torch.float64, "grad")
    assert ClipLoss()(img, txt, scale, output_dict=True).keys() == {"contrastive_loss"}


def test_ring_tiles_reference_chunks_match_fused_without_process_group():
    img, txt, scale, _ = global_inputs(6, 3)
    runs = []
    for backend, chunk in (("cpu", 1024), ("reference", 2), ("reference", 4096)):
        if backend != "reference" and backend not in pykernels.backends.available("cpu"):
            continue
        x = leaves(img, txt, scale)
        out = pkd.info_nce_loss(*x, mode="ring", chunk_size=chunk, backend=backend)
        out.backward()
        runs.append([out] + [v.grad for v in x])
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            check_close(a, b, torch.float64, "ring tiles")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mode="tree"), ValueError, "'mode'"),
        (dict(reduction="none"), ValueError, "'reduction'"),
        (dict(chunk_size=0), ValueError, "'chunk_size'"),
        (dict(scale_shape=(2,)), ValueError, "'logit_scale' must be a scalar"),
        (dict(scale_shape=(1, 1)), ValueError, "'logit_scale' must be a scalar"),
        (dict(bias_shape=(3,)), ValueError, "'logit_bias' must be a scalar"),
        (dict(text_dim=DIM + 1), ValueError, "same shape"),
        (dict(text_rows=N_LOCAL + 1), ValueError, "same shape"),
        (dict(image_dims=3), ValueError, "'image_features' must be \\[n, D\\]"),
        (dict(text_dtype=torch.float32), TypeError, "'text_features' must have the same dtype"),
        (dict(image_dtype=torch.int64), TypeError, "'image_features' must be float"),
    ],
)
def test_bad_input(kwargs, error, match):
    kwargs = dict(kwargs)
    img_shape = (N_LOCAL, DIM) if kwargs.pop("image_dims", 2) == 2 else (1, N_LOCAL, DIM)
    img = torch.ones(img_shape, dtype=kwargs.pop("image_dtype", torch.float64))
    txt = torch.randn(
        kwargs.pop("text_rows", N_LOCAL),
        kwargs.pop("text_dim", DIM),
        dtype=kwargs.pop("text_dtype", torch.float64),
    )
    scale = torch.ones(kwargs.pop("scale_shape", ()), dtype=torch.float64)
    bias_shape = kwargs.pop("bias_shape", None)
    bias = None if bias_shape is None else torch.zeros(bias_shape, dtype=torch.float64)
    with pytest.raises(error, match=match):
        pkd.info_nce_loss(img, txt, scale, logit_bias=bias, **kwargs)


def test_module_rejects_bad_mode_at_construction():
    with pytest.raises(ValueError, match="'mode'"):
        InfoNCELoss(mode="allreduce")


def test_process_group_without_init_is_an_error():
    if dist.is_initialized():
        pytest.skip("a default process group is initialised in this process")
    x = torch.randn(N_LOCAL, DIM)
    with pytest.raises(RuntimeError, match="not initialised"):
        InfoNCELoss(process_group=object())(x, x, torch.tensor(1.0))


def test_public_names():
    assert pykernels.nn.ClipLoss is ClipLoss and pykernels.nn.InfoNCELoss is InfoNCELoss


def test_ring_ignores_an_enclosing_autocast():
    img, txt, scale, _ = global_inputs(7, 2, torch.float32)
    plain = pkd.info_nce_loss(img, txt, scale, mode="ring")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = pkd.info_nce_loss(img, txt, scale, mode="ring")
    assert autocast.dtype == torch.float32 and torch.equal(plain, autocast)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_ring_fused_tiles_float32_single_process(backend):
    """The ring's fused-tile path on each CPU-runnable backend (Triton: the interpreter)."""
    if backend not in pykernels.backends.available("cpu"):
        pytest.skip(f"{backend} does not run on cpu here")
    img, txt, scale, b = global_inputs(8, 2, torch.float32)
    ours = leaves(img, txt, scale, b)
    out = pkd.info_nce_loss(*ours[:3], logit_bias=ours[3], mode="ring", backend=backend)
    out.backward()
    ref_leaves = leaves(*(x.double() for x in (img, txt, scale, b)))
    ref = global_loss(*ref_leaves)
    ref.backward()
    check_close(out, ref, torch.float32, "loss")
    for x, y, what in zip(
        ours[:3], ref_leaves[:3], ("image grad", "text grad", "logit_scale grad")
    ):
        check_close(x.grad, y.grad, torch.float32, what)
    check_bias_grad(ours[3].grad, ref_leaves[3].grad, torch.float32)


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_ring_small_loss_under_large_logits_keeps_float32_precision(backend):
    """Logits ~3e3 with a clear positive (mean loss 5e-5). The ring forms its loss as
    lse - positive from the merged log-sum-exps: they are float64, and the positive is the
    logit they were taken over. Before, a float32 lse (|lse| eps = 2.4e-4) and a positive
    from a separate dot product (rounded differently by as much) gave errors of 1.5 to
    1.7 relative where PyTorch's float32 loss has 1.6e-4."""
    if backend != "reference" and backend not in pykernels.backends.available("cpu"):
        pytest.skip(f"{backend} does not run on cpu here")
    from pykernels.reference import contrastive as ref

    g = torch.Generator().manual_seed(7)
    base = torch.randn(1, 8, generator=g, dtype=torch.float64)
    img = F.normalize(base + 0.1 * torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.003 * torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(3e3, dtype=torch.float64)
    want = ref.info_nce_loss(img, txt, scale)
    assert want < 1e-4
    base32 = ref.info_nce_loss(img.float(), txt.float(), scale.float())
    got = pkd.info_nce_loss(
        img.float(), txt.float(), scale.float(), mode="ring", chunk_size=4, backend=backend
    )
    assert got.dtype == torch.float32
    limit = max(TOLERANCE[torch.float32], 2 * rel_err(base32, want), logit_rounding_limit(3e3))
    assert rel_err(got, want) <= limit, f"{rel_err(got, want):.3g} > {limit:.3g}"


@pytest.mark.parametrize("mode", ["gather", "ring"])
def test_non_contiguous_features(mode):
    img, txt, scale, _ = global_inputs(9, 2)
    strided = [x.T.contiguous().T for x in (img, txt)]  # same values, column-major
    ours = leaves(*strided, scale)
    assert not ours[0].is_contiguous() and not ours[1].is_contiguous()
    out = InfoNCELoss(mode=mode)(*ours)
    out.backward()
    ref_leaves = leaves(img, txt, scale)
    ref = global_loss(*ref_leaves)
    ref.backward()
    check_close(out, ref, torch.float64, "loss")
    for x, y in zip(ours, ref_leaves):
        check_close(x.grad, y.grad, torch.float64, "grad")
