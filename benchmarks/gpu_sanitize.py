"""A small run of every CUDA kernel (forward and backward, tiny shapes) for
compute-sanitizer (gpu_check.sh runs it under --tool memcheck and --tool racecheck).
pytest under the sanitizer is too slow for the GPU budget; this is the same op calls as
the tests (tests/op_cases.py) without the framework.

    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py
PYTORCH_NO_CUDA_MEMORY_CACHING=1 (set by gpu_check.sh) gives every tensor its own
allocation, so an access past a tensor's end is one the sanitizer can see."""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from tests.op_cases import CASES, NO_BACKEND  # noqa: E402


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "cuda" if device == "cuda" else "cpu"
    for case in CASES:
        if case.name in NO_BACKEND:
            continue
        for dtype in (torch.float32, torch.bfloat16):
            inputs = case.inputs(dtype=dtype, device=device, size="tiny")
            if case.random:
                inputs["generator"] = torch.Generator(device).manual_seed(0)
            outs = [o for o in case(backend, inputs) if o.is_floating_point() and o.requires_grad]
            leaves = [inputs[k] for k in case.grads]
            if outs and leaves:
                torch.autograd.grad(
                    outs, leaves, [torch.ones_like(o) for o in outs], allow_unused=True
                )
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"ran {case.name}", flush=True)
    print("sanitize run done")


if __name__ == "__main__":
    main()
