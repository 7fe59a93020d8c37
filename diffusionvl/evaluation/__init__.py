"""Evaluation of saved models: `metrics` (exact match, token F1) and `minivl` (the `diffusionvl eval` command on
MiniVL's test split, for DiffusionVL and autoregressive Qwen2.5-VL checkpoints alike)."""
