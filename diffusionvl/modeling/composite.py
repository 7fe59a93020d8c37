"""Modality shift (SPEC §1): a vision encoder, a 2-layer GELU MLP projector and any causal LM, composed into an
autoregressive VLM. Stage 1 trains the projector with the ordinary AR loss; stage 2 translates the whole model
with `DiffusionVL.from_autoregressive` and trains it with block diffusion."""

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec

from .backbones import splice_images


@strict
class VisionLanguageConfig(PreTrainedConfig):
    """vision_config: the encoder, a `SiglipVisionConfig` (give it one layer fewer than the released tower to take
    its second-to-last layer) or a Qwen2.5-VL vision config (its merger output feeds the projector). text_config: any causal LM. image_token_id: the placeholder each image's
    features replace. image_newline: append one learnt embedding after every image's features."""

    model_type = "diffusionvl_vlm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    image_newline: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))


class VisionLanguageModel(PreTrainedModel):
    """Encoder features (before its post-layernorm) -> projector -> spliced into the LM's input embeddings."""

    config_class = VisionLanguageConfig
    base_model_prefix = "language_model"
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: VisionLanguageConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        if hasattr(self.vision_tower, "post_layernorm"):
            self.vision_tower.post_layernorm = nn.Identity()  # DiffusionVL/LLaVA take SigLIP features before it
        vision_config = config.vision_config
        vision = getattr(vision_config, "out_hidden_size", None) if self.grid_encoder else vision_config.hidden_size
        text = config.text_config.hidden_size
        self.projector = nn.Sequential(nn.Linear(vision, text), nn.GELU(), nn.Linear(text, text))
        self.image_newline = nn.Parameter(torch.zeros(text)) if config.image_newline else None
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self._no_split_modules = self.language_model._no_split_modules
        self.post_init()

    @property
    def grid_encoder(self) -> bool:
        """True for the Qwen2.5-VL ViT: images of any size, cut into patches with a (t, h, w) grid each."""
        return hasattr(self.config.vision_config, "spatial_merge_size")

    def image_token_counts(self, image_grid_thw: torch.Tensor | None, images: int) -> list[int]:
        """Tokens each image takes in the text: its merged patches (ViT) or a fixed count (SigLIP), + newline."""
        vision, newline = self.config.vision_config, int(self.config.image_newline)
        if self.grid_encoder:
            return (image_grid_thw.prod(-1) // vision.spatial_merge_size**2 + newline).tolist()
        return [(vision.image_size // vision.patch_size) ** 2 + newline] * images

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_trainable(self, vision: bool, projector: bool, language: bool) -> None:
        """Freeze switches: stage 1 is (False, True, False); stage 2 usually (False or True, True, True)."""
        for module, on in ((self.vision_tower, vision), (self.projector, projector), (self.language_model, language)):
            module.requires_grad_(on)
        if self.image_newline is not None:
            self.image_newline.requires_grad_(projector)

    def image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """Images -> (image tokens, H_text): each image's projected features, then the newline if any.

        SigLIP: pixel_values (images, 3, H, W). Qwen2.5-VL ViT: its patches and `image_grid_thw`; its merged
        output feeds the projector.
        """
        pixel_values = pixel_values.to(self.projector[0].weight.dtype)
        if self.grid_encoder:
            merged = self.vision_tower(pixel_values, grid_thw=image_grid_thw).pooler_output
            sizes = (image_grid_thw.prod(-1) // self.config.vision_config.spatial_merge_size**2).tolist()
            per_image = list(torch.split(self.projector(merged), sizes))
        else:
            per_image = list(self.projector(self.vision_tower(pixel_values=pixel_values).last_hidden_state))
        if self.image_newline is not None:
            per_image = [torch.cat([f, self.image_newline[None]]) for f in per_image]
        return torch.cat(per_image)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        features = None if pixel_values is None else lambda: self.image_features(pixel_values, image_grid_thw)
        return splice_images(self.get_input_embeddings()(input_ids), input_ids == self.config.image_token_id, features)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, pixel_values=None, image_grid_thw=None, use_cache=None, **kwargs):
        """The AR forward (with `labels`: the shifted next-token loss of stage 1)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values, image_grid_thw)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, labels=labels, use_cache=use_cache, **kwargs,
        )
