"""SmolLM2-135M-Instruct translated to a block-diffusion chat model: source, prompts, recipe."""
