"""Make Triton's CPU interpreter round float32 -> bfloat16 to nearest, as GPUs do.

The test suite runs the Triton kernels on CPU tensors through the interpreter to judge
what they compute on a GPU. Triton's interpreter (3.8 checked) converts float32 to
bfloat16 by truncating the mantissa, whatever rounding the cast asks for, while a GPU's
conversion (cvt.rn.bf16.f32) rounds to nearest even: under the interpreter every bf16
value a kernel writes was off by up to twice a rounding's bound, and always toward zero
(a pairwise-cosine gradient with two features: 2.9% off truncated, 1.8% rounded). This
wraps the interpreter's float conversion for that one case and checks, through a kernel,
that the wrap took: a Triton version that converts elsewhere fails loudly here instead
of quietly truncating again.
"""

import numpy as np
import torch


def _f32_to_bf16_bits(x) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)  # no wrap-around for the carry
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # a quiet NaN of the same sign (the carry could overflow a payload)
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r.reshape(x.shape)


def round_bf16_to_nearest() -> None:
    import triton
    import triton.language as tl
    from triton.runtime import interpreter

    convert = interpreter._convert_float
    if getattr(convert, "rounds_bf16_to_nearest", False):
        return

    def _convert_float(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            return _f32_to_bf16_bits(input)
        return convert(input, input_dtype, output_dtype, rounding_mode)

    _convert_float.rounds_bf16_to_nearest = True
    interpreter._convert_float = _convert_float

    @triton.jit
    def _to_bf16(X, Y, N: tl.constexpr):
        o = tl.arange(0, N)
        x = tl.load(X + o)
        tl.store(Y + o, x.to(tl.bfloat16))  # an explicit cast
        tl.store(Y + N + o, x * 1.0)  # a store's implicit one

    x = torch.tensor(
        [
            1 + 2.0**-8 + 2.0**-12,
            -(1 + 2.0**-7 + 2.0**-8),
            3.0000002,
            -7.9999995,
            1 + 2.0**-8,
            1 + 3 * 2.0**-8,
            float("inf"),
            float("nan"),
        ],
        dtype=torch.float32,
    )
    y = torch.empty(2 * x.numel(), dtype=torch.bfloat16)
    _to_bf16[(1,)](x, y, N=x.numel())
    want = x.to(torch.bfloat16).repeat(2)
    same = (y.view(torch.int16) == want.view(torch.int16)) | (
        y.isnan() & want.isnan()
    )  # any NaN's bits
    if not same.all():
        raise RuntimeError(
            f"Triton's interpreter ({triton.__version__}) still converts float32 to bfloat16 "
            f"otherwise than a GPU: got {y.tolist()}, want {want.tolist()} "
            "(see tests/_interpreter_rounding.py)"
        )
