# Runs before any test module imports triton: without a GPU, Triton kernels run on CPU
# tensors through the interpreter.
import os

if os.environ.get("TRITON_INTERPRET") is None:
    try:
        import torch

        gpu = torch.cuda.is_available()
    except Exception:
        gpu = False
    if not gpu:
        os.environ["TRITON_INTERPRET"] = "1"

if os.environ.get("TRITON_INTERPRET") == "1":
    try:
        import triton  # noqa: F401
    except ImportError:
        triton = None
    if triton is not None:
        # The interpreter truncates float32 -> bfloat16; GPUs round to nearest even.
        from tests._interpreter_rounding import round_bf16_to_nearest

        round_bf16_to_nearest()
