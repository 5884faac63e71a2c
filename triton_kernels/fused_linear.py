"""Triton backend of the fused linear + loss family: the chunk loop of
csrc/common/fused_linear.h in launcher code, with the distillation family's Triton row kernel
(triton_kernels/distillation.py, distillation_kernel) as the per-chunk epilogue.

Per chunk of rows (never the [rows, V] logits):
    logits   L = h W^T + b                torch.mm: cuBLAS on tensor cores on a GPU
    softcap  L = c tanh(L / c)            (cross entropy; 1 - tanh^2 applied to G afterwards)
    rows     the row kernel writes each row's loss and G = d(grad_scale * loss) / dL into
             buffers reused from chunk to chunk
    z-loss   + z lse^2, G += 2 z grad_scale lse softmax(L)
    weight   G *= row_weight (the backward of reduction "none")
    grads    dh = G W, dW += G^T h, db += sum_rows G, dW and db in fp32
On CPU tensors (the interpreter) the rows of ignore_index are gathered out first; on a GPU
that would need their count on the host (a synchronisation), so every row goes through and
the kernel gives ignored rows loss 0 and gradient 0.
"""

from __future__ import annotations

import dataclasses

import torch

from . import distillation as tk


def auto_chunk(rows: int, V: int, elem_size: int, on_cpu: bool) -> int:
    """Rows per chunk: as many as fit the budget per [chunk, V] buffer (64 MiB on the CPU,
    1 GiB on a GPU; csrc/common/fused_linear.h's auto_chunk takes the same)."""
    budget = (64 << 20) if on_cpu else (1 << 30)
    return max(1, min(rows, budget // max(1, V * elem_size)))


@dataclasses.dataclass
class Head:
    """One side's inputs, flattened: hidden [N, H], weight [V, H], bias [V] or None."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.weight.T
        return torch.mm(h, w) if self.bias is None else torch.addmm(self.bias, h, w)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _new_grads(heads, mask):
    """Zeroed gradients for the mask's (hidden, weight, bias) of each head; weight and bias in
    fp32 (float64 for float64) until the end."""
    out = []
    for k, want in enumerate(mask):
        head = heads[k // 3]
        x = (head.hidden, head.weight, head.bias)[k % 3]
        if not want or x is None:
            out.append(heads[0].hidden.new_empty((0,)))
        else:
            out.append(
                torch.zeros(
                    x.shape, dtype=x.dtype if k % 3 == 0 else _acc(x.dtype), device=x.device
                )
            )
    return out


def _put_rows(dst: torch.Tensor, rows: torch.Tensor, idx, begin: int) -> None:
    """The chunk's rows of dst = rows: the gathered rows idx, or rows begin onwards."""
    if idx is not None:
        dst.index_copy_(0, idx, rows)
    else:
        dst[begin : begin + rows.shape[0]].copy_(rows)


def _add_head_grads(head, h, G, idx, begin, grads, want):
    """grads dh = G W (the chunk's rows), dW += G^T h, db += sum_rows G."""
    if want[0]:
        _put_rows(grads[0], torch.mm(G, head.weight), idx, begin)
    if want[1]:
        grads[1].add_(torch.mm(G.T, h).to(grads[1].dtype))
    if want[2]:
        grads[2].add_(G.sum(0, dtype=grads[2].dtype))


def _counted_rows(labels, device: torch.device, ignore_index: int):
    """The indices of the rows whose label is not ignore_index, or None: every row."""
    # Ignored rows are compacted out on real CPU tensors (reading the labels is no device
    # sync there); a traced tensor keeps every row, so the trace stays free of data-dependent
    # sizes (test_triton_backward_checks_trace_with_symbolic_shapes).
    if device.type == "cpu" and labels is not None and type(labels) is torch.Tensor:
        return (labels != ignore_index).nonzero().squeeze(1)
    return None


def _split_grad_scale(dtype: torch.dtype, row_args: dict) -> tuple[float, dict]:
    """(post_scale, row_args): the row kernel takes grad_scale as a float32 argument;
    float64 inputs get it exactly from a multiplication afterwards."""
    if dtype == torch.float64 and row_args.get("grad_scale", 1.0) != 1.0:
        return row_args["grad_scale"], {**row_args, "grad_scale": 1.0}
    return 1.0, row_args


def _chunk_logits(head: Head, h: torch.Tensor, softcap: float):
    """(L, tanh(L0 / c) or None): L0 = h W^T + b, L = c tanh(L0 / c) when softcap c > 0."""
    L = head.logits(h)
    tanh_c = None
    if softcap > 0:
        tanh_c = torch.tanh(L / softcap)
        L = tanh_c * softcap
    return L, tanh_c


def _chunk_lse(L, acc, y, compacted: bool, ignore_index: int, want_probs: bool):
    """(lse, softmax(L) or None) in the accumulation dtype; lse is 0 on ignored rows (those
    left in, when the rows were not compacted)."""
    lse = torch.logsumexp(L.to(acc), 1)
    if not compacted and y is not None:
        lse = lse.masked_fill(y == ignore_index, 0.0)
    return lse, (torch.softmax(L.to(acc), 1) if want_probs else None)


def _scale_chunk_grads(G, Gt, tanh_c, post_scale: float, w, grad_s: bool, grad_t: bool):
    """G *= 1 - tanh^2 (the softcap's derivative); both gradients *= post_scale and the row
    weight w (the backward of reduction "none")."""
    if tanh_c is not None and grad_s:
        G.mul_(1 - tanh_c * tanh_c)
    if post_scale != 1.0:
        G.mul_(post_scale)
        Gt.mul_(post_scale)
    if w is not None:
        if grad_s:
            G.mul_(w)
        if grad_t:
            Gt.mul_(w)


def fused_linear_loop(
    s: Head,
    t: Head | None,
    labels,
    row_weight,
    *,
    mask,
    chunk_size=0,
    want_lse=False,
    softcap=0.0,
    z_loss=0.0,
    **row_args,
):
    """(loss [N], lse [N] or [0], six gradients: student hidden, weight, bias, teacher
    hidden, weight, bias, each empty where mask is False). row_args: the row kernel's
    settings (tk.distillation_rows' keywords)."""
    N, V = s.hidden.shape[0], s.weight.shape[0]
    dev, acc = s.hidden.device, _acc(s.hidden.dtype)
    loss = torch.zeros(N, dtype=acc, device=dev)
    lse_out = torch.zeros(N if want_lse else 0, dtype=acc, device=dev)
    heads = (s, t if t is not None else s)
    mask = [bool(m) and (t is not None or k < 3) for k, m in enumerate(mask)]
    grads = _new_grads(heads, mask)
    ii = row_args.get("ignore_index", -100)
    index = _counted_rows(labels, dev, ii)
    M = N if index is None else index.shape[0]
    grad_s, grad_t = any(mask[:3]), any(mask[3:])
    post_scale, row_args = _split_grad_scale(s.hidden.dtype, row_args)
    chunk = (
        min(chunk_size, max(M, 1))
        if chunk_size > 0
        else auto_chunk(M, V, s.hidden.element_size(), dev.type == "cpu")
    )
    bufs = {}
    for begin in range(0, M, chunk):
        m = min(chunk, M - begin)
        idx = None if index is None else index[begin : begin + m]

        def rows_of(x):
            return x.index_select(0, idx) if idx is not None else x[begin : begin + m]

        # 1. logits L = h W^T + b, softcapped L = c tanh(L / c)
        hs = rows_of(s.hidden)
        ht = rows_of(t.hidden) if t is not None else None
        L, tanh_c = _chunk_logits(s, hs, softcap)
        Lt = t.logits(ht) if t is not None else None
        y = rows_of(labels) if labels is not None else None
        lse = probs = None
        if want_lse or z_loss != 0:
            lse, probs = _chunk_lse(L, acc, y, idx is not None, ii, z_loss != 0 and grad_s)
        # 2. rows: each row's loss and G = d(grad_scale * loss) / dL
        out = (
            torch.empty(m, dtype=acc, device=dev),
            _buffer(bufs, "s", L, grad_s),
            _buffer(bufs, "t", L, grad_t),
        )
        row_loss, G, Gt = tk.distillation_rows(
            L, Lt, y, grad_logits=grad_s, grad_teacher=grad_t, out=out, **row_args
        )
        # 3. z-loss: + z lse^2, G += 2 z grad_scale lse softmax(L)
        if z_loss != 0:
            row_loss = row_loss + z_loss * lse * lse
            if grad_s:
                G.add_((2.0 * z_loss * row_args.get("grad_scale", 1.0) * lse)[:, None] * probs)
        # 4. softcap, float64 grad_scale and row weight: G *= (1 - tanh^2) post_scale w
        w = rows_of(row_weight)[:, None] if row_weight is not None else None
        _scale_chunk_grads(G, Gt, tanh_c, post_scale, w, grad_s, grad_t)
        _put_rows(loss, row_loss, idx, begin)
        if want_lse:
            _put_rows(lse_out, lse, idx, begin)
        # 5. grads: dh = G W, dW += G^T h, db += sum_rows G
        if grad_s:
            _add_head_grads(s, hs, G, idx, begin, grads[:3], mask[:3])
        if grad_t:
            _add_head_grads(t, ht, Gt, idx, begin, grads[3:], mask[3:])
    for k in (1, 2, 4, 5):
        if mask[k]:
            head = heads[k // 3]
            grads[k] = grads[k].to((head.weight if k % 3 == 1 else head.bias).dtype)
    return loss, lse_out, grads


def _buffer(bufs: dict, key: str, like: torch.Tensor, wanted: bool) -> torch.Tensor:
    """The chunk gradient buffer `key`, reused while the chunk's shape stays (the last chunk
    may be shorter: a view of the buffer's first rows)."""
    if not wanted:
        return like.new_empty((0,))
    b = bufs.get(key)
    if b is None or b.shape[0] < like.shape[0]:
        b = bufs[key] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    return b[: like.shape[0]]
