"""DiffusionVL: any transformers causal LM, made block-diffusion through its mask, position and cache seams.

The wrapped model's modeling code is untouched. Training sees `[x_t ; x_0]` with the mask of `masks.py`;
inference sees the clean stream with a block-causal mask. The model knows nothing about sampling.
"""

import logging
from contextlib import nullcontext
from functools import cached_property

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .checkpoints.folders import RELEASED_TYPES, check_checkpoint, local_folder, resolve_model
from .decoding.config import DecodingConfig
from .errors import CheckpointLayoutError, DiffusionVLError
from .modeling.attention import ATTENTION, use_shared_kv_heads
from .modeling.backbones import CompositeBackbone, Qwen2_5_VLBackbone, TextBackbone, VisionInputs
from .modeling.compat import check_block_diffusion_support, check_wrappable
from .modeling.composite import VisionLanguageModel
from .modeling.config import DiffusionVLConfig
from .modeling.loss import Objective
from .modeling.masks import block_causal_mask, positions_from_padding
from .modeling.noise import IGNORE, NoisyBatch, align_to_blocks, apply_noise, sample_noise_levels
from .modeling.streams import DiffusionOutput, two_stream_loss
from .modeling.tokens import SpecialTokens, resolve_eot_token, resolve_mask_token, resolve_pad_token


VISION_LANGUAGE_TYPES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
# DiffusionVLConfig fields `from_autoregressive(**options)` may set; the special ids have arguments of their own.
WRAP_OPTIONS = set(DiffusionVLConfig.__annotations__) - {
    "base_config", "block_size", "mask_token_id", "eot_token_id", "pad_token_id"}


def vision_inputs(pixel_values=None, image_grid_thw=None, images=None, image_grid_thws=None) -> VisionInputs | None:
    """Images from transformers' names (`pixel_values`, `image_grid_thw`) or the released code's (`images`, ...)."""
    pixel_values = pixel_values if pixel_values is not None else images
    image_grid_thw = image_grid_thw if image_grid_thw is not None else image_grid_thws
    if pixel_values is None:
        return None
    return VisionInputs(pixel_values, image_grid_thw)


def _build_base(config: DiffusionVLConfig) -> PreTrainedModel:
    base = config.base_config
    if base.model_type in VISION_LANGUAGE_TYPES:
        return AutoModelForImageTextToText.from_config(base)
    return AutoModelForCausalLM.from_config(base)


class DiffusionVL(PreTrainedModel):
    """A block-diffusion model wrapping an autoregressive (vision-)language model (`self.model`)."""

    config_class = DiffusionVLConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: DiffusionVLConfig, model: PreTrainedModel | None = None):
        super().__init__(config)
        self.model = model if model is not None else _build_base(config)
        if model is None and config.lora:
            from .modeling.lora import inject_lora

            inject_lora(self.model, config.lora)  # the checkpoint holds adapters: build them before loading
        self._no_split_modules = self.model._no_split_modules
        self.trained_embedding_rows: list[int] | None = None  # set by training when a hook keeps the other rows fixed
        self.post_init()
        use_shared_kv_heads(self.backbone.decoder.config)  # the attention kernel, chosen once (attention.py)

    @classmethod
    def from_autoregressive(
        cls, model: PreTrainedModel, tokenizer=None, *, block_size: int = 8, mask_token_id: int | None = None,
        eot_token_id: int | None = None, pad_token_id: int | None = None, **options
    ) -> "DiffusionVL":
        """Wrap a pretrained causal LM or Qwen2.5-VL. `options` are further `DiffusionVLConfig` fields
        (e.g. noisy_stream, position_mode); an unknown name is a TypeError. `tokenizer` may be a processor.

        The mask token is `mask_token_id` if given, else `<|mask|>` found in or added to the tokenizer (the
        embedding matrix grows only if the new id has no row yet). `eot_token_id` and `pad_token_id` override
        what the tokenizer and config say. Remember to save the tokenizer too.
        """
        check_wrappable(model)
        unknown = sorted(set(options) - WRAP_OPTIONS)
        if unknown:
            raise TypeError(f"from_autoregressive got unknown option(s) {unknown}; valid ones are "
                            f"{sorted(WRAP_OPTIONS | {'block_size', 'mask_token_id', 'eot_token_id', 'pad_token_id'})}.")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        try:
            config = DiffusionVLConfig(
                base_config=model.config,
                block_size=block_size,
                attn_implementation="sdpa" if model.config._attn_implementation == ATTENTION else
                model.config._attn_implementation,
                image_token_id=getattr(model.config, "image_token_id", None),
                **options,
            )
        except StrictDataclassError as error:  # a field of the wrong type or an unknown choice; the text names it
            raise DiffusionVLError(str(error)) from error
        limit = _max_positions(config.base_config)
        if limit is not None and block_size > limit:
            raise ValueError(f"block_size={block_size} is larger than the model's {limit} positions; choose a block "
                             f"size of at most {limit} (8 is typical).")
        check_block_diffusion_support(model, _backbone(model, config))
        config.mask_token_id = resolve_mask_token(model, tokenizer, mask_token_id)
        config.eot_token_id = eot_token_id if eot_token_id is not None else resolve_eot_token(model, tokenizer)
        config.pad_token_id = pad_token_id if pad_token_id is not None else resolve_pad_token(
            model, tokenizer, config.eot_token_id)
        wrapped = cls(config, model)
        wrapped.special_tokens  # validates the ids against the vocabulary now, not at the first forward
        return wrapped

    @cached_property
    def special_tokens(self) -> SpecialTokens:
        config = self.config
        rows = self.model.get_input_embeddings().weight.shape[0]
        if config.mask_token_id is None or config.eot_token_id is None:
            raise CheckpointLayoutError(
                "the config names no mask or end-of-turn token (mask_token_id, eot_token_id): set them in the config, "
                "or wrap the AR model with DiffusionVL.from_autoregressive.")
        pad = config.eot_token_id if config.pad_token_id is None else config.pad_token_id
        return SpecialTokens(config.mask_token_id, config.eot_token_id, pad, rows)

    @cached_property
    def backbone(self):
        """The family adapter: embeddings (with images), decoder, head and rope positions (backbones.py)."""
        return _backbone(self.model, self.config)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def max_positions(self) -> int | None:
        return _max_positions(self.config.base_config)

    def noisy_gate(self):
        """The gate of draft-only adapters (config.lora_scope="noisy", modeling/lora.py), None for every other model.
        Built at first use, since adapters may be added after __init__; from then on a forward outside `adapters_on`
        runs the base model alone (inference.causal_model builds it before handing the base out)."""
        if self.config.lora_scope != "noisy" or not self.config.lora:
            return None
        if getattr(self, "_noisy_gate", None) is None:
            from .modeling.lora import NoisyOnlyGate

            self._noisy_gate = NoisyOnlyGate(self.model)
        return self._noisy_gate

    def adapters_on(self, noisy: torch.Tensor):
        """Context for one forward whose columns `noisy` ((Q,) bool) are the noisy stream: with draft-only adapters
        the LoRA deltas act there only, so every other column runs the base model. A no-op for every other model."""
        gate = self.noisy_gate()
        return nullcontext() if gate is None else gate.on(noisy)

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
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        pixel_values=None,
        image_grid_thw=None,
        generator: torch.Generator | None = None,
        autoregressive: bool = False,
        denoising: bool = False,
        objective: Objective | None = None,
        **kwargs,
    ):
        """With `labels`: the block-diffusion loss (a fresh noise draw; fix it with `generator`); with
        `autoregressive=True` as well, the wrapped model's own next-token loss (stage 1 of the modality shift).
        `objective`: terms added to the block-diffusion loss to keep the source (loss.Objective; none by default).

        Without: block-causal logits of the clean sequence. A 2-D `attention_mask` (N, past + L) marks padding
        and may be left-padded; a 4-D mask is used as given (then pass `position_ids`). `denoising`: the last
        block_size columns are the block being denoised, which matters with causal context only (that block then
        attends bidirectionally; every other token causally).
        """
        vision = vision_inputs(pixel_values, image_grid_thw, kwargs.pop("images", None), kwargs.pop("image_grid_thws", None))
        if autoregressive:
            images = {} if vision is None else vision.as_kwargs()
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **images)
        if labels is not None:
            noisy = self.add_noise(input_ids, labels, attention_mask, generator)
            return self.diffusion_loss(noisy, vision, objective=objective)
        if inputs_embeds is None:
            inputs_embeds = self.backbone.embed(input_ids, vision)
        if attention_mask is None or attention_mask.dim() == 2:
            attention_mask, position_ids = self._block_causal_inputs(input_ids, attention_mask, cache, vision,
                                                                     self.block_size if denoising else 0)
        elif position_ids is not None and position_ids.dim() == 2:
            position_ids = position_ids[None]
        if self.config.logit_shift and cache is not None and cache.get_seq_length():
            raise DiffusionVLError(
                "with logit_shift the first new token is predicted from the last cached position, whose hidden state "
                "the cache does not keep; run the whole sequence without a cache, or use generate().")
        noisy = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        with self.adapters_on(noisy >= inputs_embeds.shape[1] - (self.block_size if denoising else 0)):
            hidden = self.backbone.decode(inputs_embeds, attention_mask, position_ids, cache, bool(use_cache))
        return CausalLMOutputWithPast(logits=self.backbone.head(self.to_token_positions(hidden)), cache=cache)

    def to_token_positions(self, states: torch.Tensor) -> torch.Tensor:
        """Per-position states (N, L, ...) -> the states that predict token i at index i. Without logit_shift
        they are the same; with it, index i takes position i - 1 (index 0, always a prompt token, keeps its own)."""
        if not self.config.logit_shift:
            return states
        return torch.cat([states[:, :1], states[:, :-1]], dim=1)

    def _block_causal_inputs(self, input_ids, attention_mask, cache, vision, noisy: int = 0):
        """4-D block-causal mask and (A, N, L) rope positions of a sequence after `past` cached tokens; its last
        `noisy` columns are a block being denoised."""
        past = cache.get_seq_length() if cache is not None else 0
        n, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(n, past + length, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape[1] != past + length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} positions but the cache holds {past} and the input "
                f"{length}; pass a mask over cached and new tokens."
            )
        if past and self.backbone.position_axes > 1:
            raise ValueError("with M-RoPE and a cache, pass position_ids; the model cannot infer them from the cache.")
        valid = attention_mask.bool()
        index = positions_from_padding(attention_mask)
        mask = block_causal_mask(index[:, past:], valid[:, past:], index, valid, self.block_size, self.dtype,
                                 self.config.context_attention == "causal", noisy)
        return mask, self.backbone.positions(input_ids, index[:, past:], valid[:, past:], vision)

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
            supervised_blocks, config.noise_eps_min, config.noise_eps_max, config.antithetic_noise, generator,
            strata=config.noise_strata,
        )
        return apply_noise(ids, labels, valid, t, self.block_size, tokens.mask, generator, config.noise_pattern)

    def diffusion_loss(
        self, batch: NoisyBatch, vision: VisionInputs | None = None, noisy_stream: str | None = None,
        objective: Objective | None = None, clean_first: bool | None = None,
    ) -> DiffusionOutput:
        """The loss of SPEC §2 on a noised batch; `noisy_stream` overrides the config ("cheap" or "full");
        `objective` adds the terms that keep the source (see `modeling.objective.source_terms`); `clean_first`
        False forces the one-pass reference where a frozen clean stream would run first (modeling/streams.py)."""
        cheap = (noisy_stream or self.config.noisy_stream) == "cheap"
        return two_stream_loss(self, batch, vision, cheap, objective, clean_first)

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
        verifier=None,
        **options,
    ):
        """Block decoding (SPEC §3). `options` are `DecodingConfig` fields (max_new_tokens or gen_length, steps,
        remasking_strategy, confidence_threshold, temperature, top_k, top_p, stop_strings, use_cache, commit),
        and images: `pixel_values` + `image_grid_thw` (or the released code's `images` + `image_grid_thws`).

        Returns the new tokens (N, T), pad after each row's end, or a `DecodingOutput` with
        `return_dict_in_generate=True`. `streamer` (e.g. `TextIteratorStreamer`) gets one chunk per block.
        `verifier`: with remasking_strategy="speculative", an autoregressive model (e.g. this model's source) that
        checks the drafts instead of this model's own causal mode: the answer is its greedy answer (as_verifier).
        """
        from .decoding.engine import generate

        if verifier is not None:
            verifier = self.as_verifier(verifier)

        vision = vision_inputs(
            options.pop("pixel_values", None), options.pop("image_grid_thw", None),
            options.pop("images", None), options.pop("image_grid_thws", None),
        )
        config = DecodingConfig.from_options(generation_config, **options)
        ids = input_ids if input_ids is not None else inputs
        out = generate(self, ids, attention_mask, config, streamer, tokenizer, generator, vision, verifier)
        return out if return_dict_in_generate else out.sequences

    def as_verifier(self, model) -> "DiffusionVL":
        """`model`, an autoregressive model sharing this model's tokenizer, as a verifier of this model's
        speculative drafts: wrapped as an untrained causal translation with logit shift and this model's block size
        and special tokens, so its clean stream is `model` itself (its own weights, no copy) and the engine's cache,
        masks and positions serve it. A DiffusionVL is returned as it is (it must have a causal mode). The wrapper
        is kept for the next call with the same model."""
        if isinstance(model, DiffusionVL):
            return model
        kept = self.__dict__.get("_verifier")  # (model, wrapper); not a submodule, so never saved with this model
        if kept is not None and kept[0] is model:
            return kept[1]
        tokens = self.special_tokens
        wrapper = DiffusionVL.from_autoregressive(model, block_size=self.block_size, mask_token_id=tokens.mask,
                                                  eot_token_id=tokens.eot, pad_token_id=tokens.pad, logit_shift=True,
                                                  context_attention="causal").eval()
        self.__dict__["_verifier"] = (model, wrapper)
        return wrapper

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Strict loading: any missing, unexpected or mis-shaped weight is an error, never a random init. A local
        folder is checked first (loading.check_checkpoint), so a wrong one fails before anything is built."""
        path = resolve_model(pretrained_model_name_or_path)  # "minivl-dvlm" names the shipped model
        folder = local_folder(path)
        found = check_checkpoint(folder) if folder is not None else None  # also when the Auto classes call us
        if found in RELEASED_TYPES and not isinstance(kwargs.get("config"), DiffusionVLConfig):
            from .checkpoints import released

            return getattr(released, RELEASED_TYPES[found])(folder, cls, dtype=kwargs.get("dtype"))
        want_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)  # report mis-shaped weights below, naming each one
        report = logging.getLogger("transformers.modeling_utils")
        quiet = _WithoutLoadReport()  # a bad layout is raised below with the same keys, and nothing is printed
        report.addFilter(quiet)
        try:
            model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        except (OSError, RuntimeError) as error:  # e.g. transformers' report of mis-shaped weights
            raise CheckpointLayoutError(f"{path}: the weights do not load into the architecture its config.json "
                                        f"describes ({error}).") from error
        finally:
            report.removeFilter(quiet)
        problems = {key: sorted(info[key])[:5] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            raise CheckpointLayoutError(
                f"{path} does not match the DiffusionVL layout: {problems}. "
                "Was it saved by DiffusionVL.save_pretrained from the same architecture?"
            )
        return (model, info) if want_info else model


class _WithoutLoadReport(logging.Filter):
    """Drops transformers' table of missing and unexpected weights: our loader raises them as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _max_positions(base) -> int | None:
    return getattr(getattr(base, "text_config", base), "max_position_embeddings", None)


def _backbone(model, config: DiffusionVLConfig):
    if type(model).__name__ == VISION_LANGUAGE_TYPES["qwen2_5_vl"]:
        return Qwen2_5_VLBackbone(model, config.position_mode, config.image_token_id)
    if isinstance(model, VisionLanguageModel):
        return CompositeBackbone(model)
    return TextBackbone(model)


def _register() -> None:
    """Let transformers' Auto classes open our checkpoints: the wrapper and the modality-shift composite."""
    from transformers import AutoConfig, AutoProcessor

    from .modeling.composite import VisionLanguageConfig
    from .modeling.processing import DiffusionVLProcessor

    for config_class, model_class in ((DiffusionVLConfig, DiffusionVL), (VisionLanguageConfig, VisionLanguageModel)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
        AutoProcessor.register(config_class, DiffusionVLProcessor, exist_ok=True)


_register()
