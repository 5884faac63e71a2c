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
