import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every op accumulates in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
