"""Configuration of a DiffusionVL model: the wrapped AR model's config plus the diffusion settings."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class DiffusionVLConfig(PreTrainedConfig):
    """Everything block diffusion adds to an autoregressive model.

    Fields:
        base_config: config of the wrapped causal LM (any `AutoModelForCausalLM` architecture).
        block_size: tokens per diffusion block B. Blocks are aligned at absolute position 0: block j covers
            positions [jB, (j+1)B). Bidirectional attention inside a block, causal across blocks.
        mask_token_id: the `[MASK]` token (a vocabulary row; no new weights).
        eot_token_id: the end-of-turn token. It pads the last block of every training sample and ends generation.
        pad_token_id: fills padding positions; never attended to. Falls back to `eot_token_id`.
        noise_eps_min, noise_eps_max: per-block noise levels t are drawn from U[eps_min, eps_max].
        antithetic_noise: stratify the noise levels of a batch's blocks (lower variance); `noise_strata` says which
            blocks share the strata and in which order.
        noise_strata: which blocks share the noise draws. "supervised_shuffled" (default): only the supervised
            blocks of the batch, strata in random order. "all_blocks_ordered": the original DiffusionVL/BD3-LM
            rule, every block of the block-aligned batch (prompt and image blocks too), row-major, block k gets
            stratum k. Either way only supervised positions are masked.
        noise_pattern: which positions of a block its noise level masks. "independent" (default, SPEC §2.2): each
            supervised position with probability t. "suffix": the same number, always the block's last ones, so a
            block's known tokens are a prefix, as in left-to-right drafting (speculative decoding, which redrafts
            a block's rest after its accepted prefix); training capacity goes to those layouts alone.
        loss_average: "supervised_rows" (default) averages the per-sample losses over the samples that hold
            supervised tokens; "all_rows" (the original code) over every sample of the batch, a sample without
            supervision adding 0.
        noisy_stream: "cheap" keeps only blocks holding supervised tokens in the noisy stream (same loss, less
            work); "full" is the reference two-stream layout of BD3-LM with every block duplicated.
        position_mode: for Qwen2.5-VL, "1d" (the sequence index on all M-RoPE axes, as the released DiffusionVL
            checkpoints were trained) or "mrope" (Qwen's 3-D image positions). Text models always use "1d".
        logit_shift: the hidden state at position i - 1 predicts token i, as in the AR source, instead of the
            hidden state at i. The first position of a block is then predicted from the previous block's last
            clean position, so with block size 1 the model starts out exactly as its AR source; a translation
            keeps more of what the source knows. Off by default (the released checkpoints are unshifted).
        context_attention: how the clean (context) tokens attend. "block_causal" (default, the released
            checkpoints): to their own block and every earlier one. "causal": token-causally, exactly as the AR
            source does (Fast-dVLM's causal context); a noisy block still attends bidirectionally within itself and
            to every clean token before it. With logit_shift, the clean stream of an untrained translation is then
            the source itself, and so are the K/V that decoding commits.
        image_token_id: the placeholder token whose embeddings image features replace (vision models only).
        lora: LoRA adapters inside the wrapped model (peft LoraConfig fields), or None for plain weights.
        lora_scope: which tokens the LoRA adapters act on. "all" (default): every token, like any LoRA. "noisy":
            the noisy stream only (draft-only adapters, modeling/lora.py): the clean stream, its committed K/V and
            the causal mode stay exactly the base model's. Never merged into the weights.
    """

    model_type = "diffusionvl"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2")}

    base_config: dict | PreTrainedConfig | None = None
    block_size: int = 8
    mask_token_id: int | None = None
    eot_token_id: int | None = None
    pad_token_id: int | None = None
    noise_eps_min: float = 1e-3
    noise_eps_max: float = 1.0
    antithetic_noise: bool = True
    noise_strata: Literal["supervised_shuffled", "all_blocks_ordered"] = "supervised_shuffled"
    noise_pattern: Literal["independent", "suffix"] = "independent"
    loss_average: Literal["supervised_rows", "all_rows"] = "supervised_rows"
    noisy_stream: Literal["cheap", "full"] = "cheap"
    position_mode: Literal["1d", "mrope"] = "1d"
    logit_shift: bool = False
    context_attention: Literal["block_causal", "causal"] = "block_causal"
    image_token_id: int | None = None
    lora: dict | None = None
    lora_scope: Literal["all", "noisy"] = "all"

    # The Literal fields are checked by @strict itself (its error names the field and the allowed values).
    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"block_size must be a positive integer (e.g. 8), got {self.block_size!r}.")
        if not 0.0 < self.noise_eps_min <= self.noise_eps_max <= 1.0:
            raise ValueError(
                f"noise levels need 0 < noise_eps_min <= noise_eps_max <= 1, got "
                f"[{self.noise_eps_min}, {self.noise_eps_max}]; the defaults are [1e-3, 1]."
            )
