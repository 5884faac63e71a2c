"""Malformed input to the public functions: every kind of bad argument a public op can get,
with the exact exception type and a message that names the argument, on every backend
(backend=...). Here: the rows every public op gets; each family's own rows are in
test_malformed_<family>.py, the building blocks in malformed.py, the direct op calls in
test_malformed_direct.py.

Decisions: NaN/Inf in data tensors (features, logits, samples, the alphas_cumprod table,
logit_scale) are not checked (that would read device memory) and propagate; NaN/Inf Python
scalars are rejected where the op has no meaning for them (test_edge_inputs.py).
"""

from __future__ import annotations

import pytest

from .helpers import ALL_BACKENDS
from .malformed import PUBLIC, Row, dev_for, generic_rows, on_other_device, public_tests


def _generic_rows() -> list[Row]:
    rows = []
    for op in PUBLIC:
        rows += generic_rows(op)
        if PUBLIC[op][2] and PUBLIC[op][3]:
            rows.append(on_other_device(op))
    return rows


test_public, test_reference_raises_what_the_fused_backends_raise = public_tests(_generic_rows())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_the_good_arguments_run(backend):
    """Every row changes one thing of arguments that work: without the change, no error."""
    d = dev_for(backend)
    for fn, good, takes_backend, _ in PUBLIC.values():
        if takes_backend:
            fn(**good(d), backend=backend)
        elif backend == "reference":
            fn(**good(d))


@pytest.mark.parametrize("op", [op for op, spec in PUBLIC.items() if spec[2]])
def test_bad_backend_name(op):
    fn, good, _, _ = PUBLIC[op]
    with pytest.raises(ValueError, match=r"argument 'backend' must be one of"):
        fn(**good(dev_for("reference")), backend="gpu")
