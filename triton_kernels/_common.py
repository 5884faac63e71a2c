"""Helpers shared by the Triton launchers of every family."""

import math

import numpy as np
import torch
import triton
import triton.language as tl


def tl_acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype for a torch input dtype (float64 stays float64)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def row_blocks(D: int, elem_bytes: int, on_cpu: bool) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D) for row-wise kernels: a [BLOCK_R, BLOCK_D] tile per step.

    A tile covers ~16 KB of each input on a GPU; small D packs several rows per program.
    Under the interpreter, fewer and larger programs run faster.
    """
    cap = 16384 // elem_bytes
    block_d = min(triton.next_power_of_2(max(D, 1)), cap)
    block_r = max(1, min(64, cap // block_d))
    if on_cpu:
        block_r = max(block_r, 16)
    return block_r, block_d


def rows_of(x: torch.Tensor) -> tuple[int, int]:
    """(rows, D) of a contiguous [..., D] tensor."""
    D = x.shape[-1]
    return (x.numel() // D if D else 0), D


def sample_blocks(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(N, D, C, BLOCK) for per-sample kernels over x [N, ...]: D elements per sample in C
    blocks of BLOCK elements. Under the interpreter, fewer and larger programs run faster."""
    N = x.shape[0]
    D = x.numel() // N if N else 0
    cap = 65536 if x.device.type == "cpu" else 4096
    block = min(triton.next_power_of_2(max(D, 16)), cap)
    return N, D, triton.cdiv(D, block), block


def dot_upcast(dtype: torch.dtype, device: torch.device) -> bool:
    """True where tl.dot inputs must be upcast to float32 first: the Triton interpreter's
    bfloat16 tl.dot returns wrong values (Triton 3.8). On a GPU bf16 stays on tensor cores."""
    return device.type == "cpu" and dtype == torch.bfloat16


def f32_arg(x: float) -> float:
    """A float kernel argument as a GPU receives it: float32, below float32's smallest
    normal number 0. (A launch types every Python float as float32; the interpreter types
    one outside float32's normal range as float64, which then promotes the arithmetic and
    its float64 -> bfloat16 stores come out as integers: a beta of 1.2e-76 gave a gradient
    of 0; test_distillation.py::test_beta_below_float32_range.)"""
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as the cast gives
        x = float(np.float32(x))
    return x if abs(x) >= np.finfo(np.float32).tiny or not math.isfinite(x) else 0.0
