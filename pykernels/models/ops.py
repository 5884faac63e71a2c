"""The ``ops=`` switch of the reference models: one object whose attributes are the ops.

    ops = get_ops("reference")   # plain PyTorch (pykernels.models.reference_ops)
    ops = get_ops("fused")       # the public pykernels.* functions, default backend
    loss = ops.distillation_loss(s, t, temperature=4.0, labels=y, soft_weight=0.7, hard_weight=0.3)

A model takes ``ops`` and calls nothing else that differs between the two modes.
"""

from __future__ import annotations

import functools

from . import reference_ops


class FusedOps:
    """``ops.<name>`` is ``pykernels.<name>``, with ``backend=`` bound when one is given."""

    name = "fused"

    def __init__(self, backend: str | None = None):
        self.backend = backend

    def __getattr__(self, name: str):
        import pykernels

        fn = getattr(pykernels, name, None)
        if fn is None:
            raise AttributeError(
                f"pykernels has no public op {name!r}: this installation lacks its family"
            )
        if (
            self.backend is None or name == "make_schedule"
        ):  # make_schedule builds a table, no backend
            return fn
        return functools.partial(fn, backend=self.backend)


def get_ops(ops="reference"):
    """ "reference", "fused", "fused:<backend>" (e.g. "fused:triton"), or an ops object."""
    if not isinstance(ops, str):
        return ops
    if ops == "reference":
        return reference_ops
    if ops == "fused" or ops.startswith("fused:"):
        return FusedOps(ops.partition(":")[2] or None)
    raise ValueError(
        f"pykernels.models: ops must be 'reference', 'fused' or 'fused:<backend>', got {ops!r}"
    )
