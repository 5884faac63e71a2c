"""Argument checks for the public API. Every message names the function, the argument,
what was expected and what came. They only look at metadata (dtype, shape, device) and
Python scalars, so they cost nothing on the GPU and trace under torch.compile."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def tensor(fn: str, name: str, x, *, floating: bool = True, min_dim: int = 0) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a torch.Tensor, got {type(x).__name__}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: argument '{name}' must be float32, float64, float16 or bfloat16, got {x.dtype}"
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"{fn}: argument '{name}' must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}"
        )


def same_device(fn: str, *named: tuple[str, torch.Tensor]) -> None:
    (first, x0), rest = named[0], named[1:]
    for name, x in rest:
        if x.device != x0.device:
            raise ValueError(
                f"{fn}: argument '{name}' must be on the same device as '{first}' ({x0.device}), got {x.device}"
            )


def same_dtype(fn: str, *named: tuple[str, torch.Tensor]) -> None:
    (first, x0), rest = named[0], named[1:]
    for name, x in rest:
        if x.dtype != x0.dtype:
            raise TypeError(
                f"{fn}: argument '{name}' must have the same dtype as '{first}' ({x0.dtype}), got {x.dtype}"
            )


def same_shape(fn: str, *named: tuple[str, torch.Tensor]) -> None:
    (first, x0), rest = named[0], named[1:]
    for name, x in rest:
        if x.shape != x0.shape:
            raise ValueError(
                f"{fn}: argument '{name}' must have the same shape as '{first}' {tuple(x0.shape)}, got {tuple(x.shape)}"
            )


def samples(fn: str, *named: tuple[str, torch.Tensor]) -> None:
    """Float tensors [N, ...] of one shape, dtype and device (the first one leads): a batch
    of samples and the tensors paired with it element by element."""
    for name, x in named:
        tensor(fn, name, x, min_dim=1)
    same_device(fn, *named)
    same_dtype(fn, *named)
    same_shape(fn, *named)


def grad(fn: str, g, shape, like: torch.Tensor, name: str = "grad") -> None:
    """The upstream gradient a backward op is called with: a float tensor of `shape` on
    `like`'s device (any float dtype: the op converts it)."""
    tensor(fn, name, g)
    same_device(fn, ("the inputs", like), (name, g))
    if tuple(g.shape) != tuple(shape):
        raise ValueError(
            f"{fn}: argument '{name}' must have shape {tuple(shape)}, got {tuple(g.shape)}"
        )


def positive(fn: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: argument '{name}' must be a number, got {type(value).__name__}")
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{fn}: argument '{name}' must be > 0, got {value}")


def choice(fn: str, name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{fn}: argument '{name}' must be one of {choices}, got {value!r}")


def dim_index(fn: str, name: str, dim, ndim: int) -> int:
    """`dim` wrapped into [0, ndim), as PyTorch wraps negative dims."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{fn}: argument '{name}' must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise IndexError(f"{fn}: argument '{name}' must be in [{-ndim}, {ndim - 1}], got {dim}")
    return dim % ndim


def broadcast_shapes(fn: str, *named: tuple[str, torch.Tensor | torch.Size]) -> torch.Size:
    """The broadcast of the named tensors' (or shapes') shapes."""
    shapes = [x.shape if isinstance(x, torch.Tensor) else torch.Size(x) for _, x in named]
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        shapes = ", ".join(f"'{n}' {tuple(s)}" for (n, _), s in zip(named, shapes))
        raise ValueError(f"{fn}: arguments must broadcast together, got {shapes}") from None


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def autocast_rule(*names: str):
    """Decorator for a public op: under torch.autocast (for the device of its first tensor
    argument), the floating tensors among `names` are cast to the widest of their dtypes
    (so an autocast bf16 model output meets an fp32 target as PyTorch's type promotion
    would), and the op runs with autocast off, so every backend (the reference's matmuls
    too) computes exactly what it computes outside autocast: nothing is cast down; losses
    accumulate in fp32 and return fp32, element-wise outputs keep the (promoted) input
    dtype. Outside autocast, mixed dtypes stay a TypeError."""
    import functools

    def deco(f):
        code = f.__code__
        params = code.co_varnames[: code.co_argcount]
        positions = [(params.index(n), n) for n in names if n in params]

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), None)
            # autocast exists for a few device types only (asking about "meta" raises);
            # other devices go straight to the op, whose checks name the argument.
            if device not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device):
                return f(*args, **kwargs)
            args, kwargs = list(args), dict(kwargs)
            slots = [(args, i) for i, _ in positions if i < len(args)] + [
                (kwargs, n) for n in names if n in kwargs
            ]
            slots = [
                (c, k)
                for c, k in slots
                if isinstance(c[k], torch.Tensor) and c[k].is_floating_point()
            ]
            if slots:
                wide = slots[0][0][slots[0][1]].dtype
                for c, k in slots[1:]:
                    wide = torch.promote_types(wide, c[k].dtype)
                for c, k in slots:
                    c[k] = c[k].to(wide)
            with torch.autocast(device, enabled=False):
                return f(*args, **kwargs)

        return wrapper

    return deco
