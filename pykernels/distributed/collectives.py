"""Collectives with autograd and the ring exchange, shared by the distributed losses.

The losses in this package see one data-parallel batch spread over the ranks of a process
group; these helpers move features (and their gradients) between the ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


# ----------------------------------------------------------------------------- groups
def group_rank_and_size(group=None) -> tuple[int, int]:
    """(rank, world size) in `group`; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError(
                "pykernels.distributed: a process_group was given but "
                "torch.distributed is not initialised"
            )
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def global_rank(group, group_rank: int) -> int:
    """Point-to-point ops name peers by their rank in the default group."""
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def gather_shapes(image_features: Tensor, text_features: Tensor, group, world: int) -> list:
    """(image rows, image D, text rows, text D) of every rank: one tiny all-gather of the
    shapes (a host sync). The callers check them the same way on every rank, so a bad rank
    raises everywhere and leaves no rank waiting in a collective."""
    mine = torch.tensor(
        [*image_features.shape, *text_features.shape],
        dtype=torch.int64,
        device=image_features.device,
    )
    every = mine.new_empty(world, 4)
    dist.all_gather(list(every.unbind(0)), mine, group=group)
    return [tuple(r) for r in every.tolist()]


# ----------------------------------------------------------------------------- collectives
class AllGather(torch.autograd.Function):
    """cat of every rank's tensor along dim 0. Backward: each rank gets the sum over ranks
    of the gradient of its own slice (as torch.distributed.nn.all_gather)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        rank, world = group_rank_and_size(group)
        ctx.rank, ctx.world = rank, world
        out = x.new_empty((world * x.shape[0],) + tuple(x.shape[1:]))
        dist.all_gather(list(out.chunk(world)), x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            part = grad.new_empty(grad.shape[0] // ctx.world, *grad.shape[1:])
            dist.reduce_scatter(part, list(grad.chunk(ctx.world)), group=ctx.group)
            return part, None
        # gloo has no reduce-scatter: all-reduce the whole gradient, keep our slice
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.world)[ctx.rank].clone(), None


class AllReduceGrad(torch.autograd.Function):
    """Identity forward; backward sums the gradient over ranks (a parameter shared by
    every rank's partial loss gets the gradient of the sum of the partials)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class AllReduceSum(torch.autograd.Function):
    """Sum over ranks forward; identity backward (every rank back-propagates the same
    upstream gradient into its own partial)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def all_gather_with_grad(x: Tensor, group=None) -> Tensor:
    """[n, ...] on every rank -> [W * n, ...]; gradients are summed back to their owners."""
    return AllGather.apply(x, group)


# ----------------------------------------------------------------------------- ring
class Ring:
    """Point-to-point exchange with the ring neighbours: send to rank + 1, receive from
    rank - 1 (batched, so NCCL runs each step's sends and receives as one group)."""

    def __init__(self, group, rank, world):
        self.group = group
        self.next = global_rank(group, (rank + 1) % world)
        self.prev = global_rank(group, (rank - 1) % world)

    def start(
        self, tensors: list[Tensor], tag: int, pending: list, recv_rows: int | None = None
    ) -> list[Tensor]:
        """Post sends of `tensors` and receives of same-shaped ones (or, given recv_rows,
        of that many rows: blocks of unequal size), which are returned.
        Each message kind has its own tag so that messages in flight at the same time
        cannot be matched with one another. `pending` keeps the sent tensors alive until
        `finish`."""
        received = [
            torch.empty_like(t)
            if recv_rows is None
            else t.new_empty((recv_rows,) + tuple(t.shape[1:]))
            for t in tensors
        ]
        ops = [
            dist.P2POp(dist.isend, t, self.next, self.group, tag + i) for i, t in enumerate(tensors)
        ]
        ops += [
            dist.P2POp(dist.irecv, r, self.prev, self.group, tag + i)
            for i, r in enumerate(received)
        ]
        pending.append((dist.batch_isend_irecv(ops), tensors))
        return received

    @staticmethod
    def finish(pending: list) -> None:
        """Wait for the exchanges, then drop the sent tensors (a block we sent must not
        stay alive into the next step: that would be a third travelling block)."""
        for works, _ in pending:
            for w in works:
                w.wait()
        pending.clear()


# ----------------------------------------------------------------------------- open_clip gather
def gather_features(
    image_features: Tensor,
    text_features: Tensor,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
    group=None,
):
    """open_clip's feature gathering, with its gradient rules: with gather_with_grad the
    gathered tensors carry gradients back to their owners (summed over ranks); without,
    they are constants, except that for the global (not local) loss this rank's own slot
    is its live tensor."""
    if gather_with_grad:
        return (
            all_gather_with_grad(image_features, group),
            all_gather_with_grad(text_features, group),
        )
    gathered = []
    for x in (image_features, text_features):
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        if not local_loss:
            parts[rank] = x
        gathered.append(torch.cat(parts))
    return tuple(gathered)
