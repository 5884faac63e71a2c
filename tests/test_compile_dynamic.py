"""torch.compile(fullgraph=True, dynamic=True) of every public op: traced once with
symbolic shapes (fakes that follow symbolic sizes), then called with a second shape
without a recompile, outputs and gradients equal to eager. aot_eager on CPU, Inductor on
a GPU (tests/helpers.py compile_backend). The generator variants of the random ops are
not here: a torch.Generator argument is not traceable; their `noise=` forms are. Nor is
make_schedule: it builds a host-side table from Python numbers (dynamo would unroll its
loop over the timesteps); build it once, outside the compiled function."""

import pytest
import torch
import torch._dynamo
import torch.fx.experimental._config

from .helpers import COMPILE_BACKENDS, backend_device, compile_backend, randn
from .op_cases import CASES, NO_BACKEND


def _params():
    out = []
    for case in CASES:
        if case.random or case.name == "make_schedule":
            continue
        for p in COMPILE_BACKENDS:
            if case.name in NO_BACKEND and p.id != "reference":
                continue
            out.append(pytest.param(case, p.values[0], id=f"{case.name}-{p.id}", marks=p.marks))
    return out


def _outputs_and_grads(fn, case, inputs):
    outs = fn(**inputs)
    leaves = [inputs[k] for k in case.grads]
    floating = [o for o in outs if o.is_floating_point() and o.requires_grad]
    grads = []
    if leaves and floating:
        ws = [
            randn(*o.shape, dtype=o.dtype, device=o.device, seed=9 + k)
            for k, o in enumerate(floating)
        ]
        grads = torch.autograd.grad(floating, leaves, ws, allow_unused=True)
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("case,backend", _params())
def test_compiled_dynamic_matches_eager(case, backend):
    device = backend_device(backend)
    be = None if case.name in NO_BACKEND else backend

    def call(**inputs):
        return case(be, inputs)

    torch._dynamo.reset()
    compiled = torch.compile(call, fullgraph=True, dynamic=True, backend=compile_backend(device))
    # No duck sizing: "small" has equal sizes (H = W = 16) that "other" does not; with it,
    # dynamo would guard on their equality and recompile (PyTorch's behaviour, not ours).
    with (
        torch._dynamo.config.patch(error_on_recompile=True),
        torch.fx.experimental._config.patch(use_duck_shape=False),
    ):
        for seed, size in enumerate(("small", "other")):
            inputs = case.inputs(device=device, size=size, seed=seed)
            got, got_g = _outputs_and_grads(compiled, case, inputs)
            inputs = case.inputs(device=device, size=size, seed=seed)
            want, want_g = _outputs_and_grads(call, case, inputs)
            for k, (g, w) in enumerate(zip(got, want)):
                assert g.shape == w.shape and g.dtype == w.dtype, f"{case.name} {size}: output {k}"
                torch.testing.assert_close(
                    g, w, rtol=1e-5, atol=1e-6, msg=lambda m: f"{case.name} {size} out {k}: {m}"
                )
            for name, g, w in zip(case.grads, got_g, want_g):
                torch.testing.assert_close(
                    g,
                    w,
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda m: f"{case.name} {size} grad of '{name}': {m}",
                )
