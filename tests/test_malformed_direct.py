"""Malformed input to the C++ and Triton ops called directly: torch.ops.pykernels.<op> (cpu,
cuda) and <op>_triton (triton) check their own inputs too, with the exception types of
test_malformed.py. The good arguments in schema order are malformed_direct.DIRECT. Here: the
rows every direct op gets; each family's own rows are in test_malformed_<family>.py.
"""

from __future__ import annotations

import pytest

from .helpers import FUSED_BACKENDS
from .malformed import Row
from .malformed_direct import DIRECT, call_direct, direct_generic_rows, direct_tests

test_direct_op = direct_tests([row for op in DIRECT for row in direct_generic_rows(op)])


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_direct_good_arguments_run(backend):
    for op in DIRECT:
        row = Row(op, "good", {}, None, "")
        call_direct(row, backend)
