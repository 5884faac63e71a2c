"""The public ops, one module per family. FAMILIES lists them, in the order the command
line, the self-check and the benchmarks show them."""

FAMILIES = (
    "cosine",
    "distillation",
    "fused_linear",
    "contrastive",
    "sigmoid_contrastive",
    "mae",
    "diffusion",
    "flow_matching",
)
