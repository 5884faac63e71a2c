"""Pure-PyTorch references: the readable specification of every op.

Each function computes in the accumulation dtype (float32, or float64 for float64
inputs) and returns what the fused op returns; autograd comes from PyTorch."""
