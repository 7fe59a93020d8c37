"""Speed benchmarks: `decoding` (`diffusionvl bench`: AR vs block decoding vs full-sequence diffusion on MiniVL),
`shapes` (`bench --shape`: cost at a real model's shape, random weights) and `training` (`diffusionvl
bench-train`). Serving has its own, `serving.load`."""
