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
