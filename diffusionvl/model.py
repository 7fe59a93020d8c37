"""DiffusionVL: any transformers causal LM, made block-diffusion through its mask, position and cache seams.

The wrapped model's modeling code is untouched. Training sees `[x_t ; x_0]` with the mask of `masks.py`;
inference sees the clean stream with a block-causal mask. The model knows nothing about sampling.
"""

from dataclasses import dataclass
from functools import cached_property

import torch
from transformers import AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .compat import check_block_diffusion_support
from .config import DiffusionVLConfig
from .generation_config import DecodingConfig
from .loss import diffusion_loss
from .masks import block_causal_mask, positions_from_padding
from .noise import IGNORE, NoisyBatch, align_to_blocks, apply_noise, sample_noise_levels, two_stream_layout
from .tokens import SpecialTokens, resolve_eot_token, resolve_mask_token, resolve_pad_token


class CheckpointLayoutError(ValueError):
    """A checkpoint does not have the layout the loader expects."""


@dataclass
class DiffusionOutput(ModelOutput):
    """Training output. `noise_level` is the mean t over supervised blocks, `num_masked` the masked positions."""

    loss: torch.Tensor | None = None
    noise_level: torch.Tensor | None = None
    num_masked: torch.Tensor | None = None


class DiffusionVL(PreTrainedModel):
    """A block-diffusion model wrapping an autoregressive causal LM (`self.model`)."""

    config_class = DiffusionVLConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: DiffusionVLConfig, model: PreTrainedModel | None = None):
        super().__init__(config)
        self.model = model if model is not None else AutoModelForCausalLM.from_config(config.base_config)
        self._no_split_modules = self.model._no_split_modules
        self.post_init()

    @classmethod
    def from_autoregressive(
        cls, model: PreTrainedModel, tokenizer=None, *, block_size: int = 8, mask_token_id: int | None = None, **options
    ) -> "DiffusionVL":
        """Wrap a pretrained causal LM. `options` are further `DiffusionVLConfig` fields (e.g. noisy_stream).

        The mask token is `mask_token_id` if given, else `<|mask|>` found in or added to the tokenizer (the
        embedding matrix grows only if the new id has no row yet). Remember to save the tokenizer too.
        """
        config = DiffusionVLConfig(
            base_config=model.config,
            block_size=block_size,
            attn_implementation=model.config._attn_implementation,
            **options,
        )
        check_block_diffusion_support(model)
        config.mask_token_id = resolve_mask_token(model, tokenizer, mask_token_id)
        config.eot_token_id = resolve_eot_token(model, tokenizer)
        config.pad_token_id = resolve_pad_token(model, tokenizer, config.eot_token_id)
        wrapped = cls(config, model)
        wrapped.special_tokens  # validates the ids against the vocabulary now, not at the first forward
        return wrapped

    @cached_property
    def special_tokens(self) -> SpecialTokens:
        config = self.config
        rows = self.model.get_input_embeddings().weight.shape[0]
        if config.mask_token_id is None or config.eot_token_id is None:
            raise ValueError("the config names no mask or end-of-turn token; build the model with from_autoregressive.")
        pad = config.eot_token_id if config.pad_token_id is None else config.pad_token_id
        return SpecialTokens(config.mask_token_id, config.eot_token_id, pad, rows)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        labels=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        generator: torch.Generator | None = None,
        **kwargs,
    ):
        """With `labels`: the block-diffusion loss (a fresh noise draw; fix it with `generator`).

        Without: block-causal logits of the clean sequence. A 2-D `attention_mask` (N, past + L) marks padding
        and may be left-padded; a 4-D mask is used as given (then pass `position_ids`).
        """
        if labels is not None:
            noisy = self.add_noise(input_ids, labels, attention_mask, generator)
            return self.diffusion_loss(noisy)
        if attention_mask is None or attention_mask.dim() == 2:
            attention_mask, position_ids = self._block_causal_inputs(
                input_ids if input_ids is not None else inputs_embeds[..., 0], attention_mask, past_key_values
            )
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )

    def _block_causal_inputs(self, reference: torch.Tensor, attention_mask, past_key_values):
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        n, length = reference.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(n, past + length, dtype=torch.long, device=reference.device)
        if attention_mask.shape[1] != past + length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} positions but the cache holds {past} and the input "
                f"{length}; pass a mask over cached and new tokens."
            )
        valid = attention_mask.bool()
        k_pos = positions_from_padding(attention_mask)
        q_pos, q_valid = k_pos[:, past:], valid[:, past:]
        mask = block_causal_mask(q_pos, q_valid, k_pos, valid, self.block_size, self.dtype)
        return mask, q_pos

    def add_noise(self, input_ids, labels, attention_mask=None, generator=None) -> NoisyBatch:
        """Block-align the batch (supervised EOT padding) and apply one noise draw."""
        tokens, config = self.special_tokens, self.config
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}.")
        if not bool((labels != IGNORE).any()):
            raise ValueError("every label is -100, so nothing is supervised: label the answer tokens you want learnt.")
        ids, labels, valid = align_to_blocks(input_ids, labels, attention_mask, self.block_size, tokens.eot, tokens.pad)
        supervised_blocks = (labels != IGNORE).view(labels.shape[0], -1, self.block_size).any(-1)
        t = sample_noise_levels(
            supervised_blocks, config.noise_eps_min, config.noise_eps_max, config.antithetic_noise, generator
        )
        return apply_noise(ids, labels, valid, t, self.block_size, tokens.mask, generator)

    def diffusion_loss(self, batch: NoisyBatch, noisy_stream: str | None = None) -> DiffusionOutput:
        """The loss of SPEC §2 on a noised batch; `noisy_stream` overrides the config ("cheap" or "full")."""
        cheap = (noisy_stream or self.config.noisy_stream) == "cheap"
        layout = two_stream_layout(batch, cheap, self.dtype)
        hidden = self.model.base_model(
            input_ids=layout.input_ids,
            attention_mask=layout.attention_mask,
            position_ids=layout.position_ids,
            use_cache=False,
        ).last_hidden_state
        noisy_width = layout.noisy_positions.shape[1]
        take = batch.masked.gather(1, layout.noisy_positions) & layout.noisy_valid  # (N, Ln)
        head = self.model.get_output_embeddings()
        logits = head(hidden[:, :noisy_width][take])  # (M, V): only masked positions ever reach the head
        targets = batch.clean_ids.gather(1, layout.noisy_positions)[take]
        t = batch.noise_level.gather(1, layout.noisy_positions)[take]
        sample = torch.arange(take.shape[0], device=take.device)[:, None].expand_as(take)[take]
        num_supervised = (batch.labels != IGNORE).sum(1)
        loss = diffusion_loss(logits, targets, t, sample, num_supervised)
        if logits.shape[0] == 0:  # nothing masked this draw: keep every weight in the graph for DDP
            loss = loss + 0.0 * head(hidden[:, :1]).sum()
        mean_t = batch.block_noise[batch.supervised_blocks].mean()
        return DiffusionOutput(loss=loss, noise_level=mean_t.detach(), num_masked=take.sum())

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs: torch.Tensor | None = None,
        generation_config: DecodingConfig | None = None,
        streamer=None,
        tokenizer=None,
        generator: torch.Generator | None = None,
        return_dict_in_generate: bool = False,
        **options,
    ):
        """Block decoding (SPEC §3). `options` are `DecodingConfig` fields (max_new_tokens or gen_length, steps,
        remasking_strategy, confidence_threshold, temperature, top_k, top_p, stop_strings, use_cache, commit).

        Returns the new tokens (N, T), pad after each row's end, or a `DecodingOutput` with
        `return_dict_in_generate=True`. `streamer` (e.g. `TextIteratorStreamer`) gets one chunk per block.
        """
        from .engine import generate

        config = DecodingConfig.from_options(generation_config, **options)
        ids = input_ids if input_ids is not None else inputs
        out = generate(self, ids, attention_mask, config, streamer, tokenizer, generator)
        return out if return_dict_in_generate else out.sequences

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Strict loading: any missing, unexpected or mis-shaped weight is an error, never a random init."""
        if not isinstance(kwargs.get("config"), DiffusionVLConfig):
            _check_model_type(pretrained_model_name_or_path, kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = {key: sorted(info[key])[:5] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            raise CheckpointLayoutError(
                f"{pretrained_model_name_or_path} does not match the DiffusionVL layout: {problems}. "
                "Was it saved by DiffusionVL.save_pretrained from the same architecture?"
            )
        return (model, info) if want_info else model


def _check_model_type(path, kwargs) -> None:
    hub_keys = ("cache_dir", "revision", "token", "local_files_only", "subfolder")
    config_dict, _ = PreTrainedConfig.get_config_dict(path, **{k: kwargs[k] for k in hub_keys if k in kwargs})
    found = config_dict.get("model_type")
    if found != DiffusionVLConfig.model_type:
        raise CheckpointLayoutError(
            f"{path} holds a {found!r} checkpoint, not a DiffusionVL one. To translate an autoregressive model, "
            f"load it with AutoModelForCausalLM.from_pretrained and call DiffusionVL.from_autoregressive(model, tokenizer)."
        )
