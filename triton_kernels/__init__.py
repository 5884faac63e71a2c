"""Triton kernels and their launchers, installed as ``pykernels.triton_kernels``.

One module per op family. Launchers allocate outputs and launch through
``torch.library.wrap_triton`` so the ``triton_op`` registrations in
``pykernels/ops/<family>.py`` stay traceable by torch.compile. On CPU tensors the
kernels run under the Triton interpreter (``TRITON_INTERPRET=1``)."""
