"""The parts of the block-diffusion wrapper, below everything else: its config (`config`), special tokens
(`tokens`), block-causal masks and positions (`masks`), the noising of a batch (`noise`) and the loss (`loss`),
the wrapped architectures (`backbones`, `composite`, `compat`), the attention kernel (`attention`), LoRA
(`lora`), and the processor with its image loading (`processing`, `images`). `DiffusionVL` (model.py) assembles
them."""
