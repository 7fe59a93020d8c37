"""diffusionvl: translate autoregressive (vision-)language models into block-diffusion models."""

from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

from .compat import check_block_diffusion_support
from .composite import VisionLanguageConfig, VisionLanguageModel
from .config import DiffusionVLConfig
from .loss import diffusion_loss
from .errors import CheckpointLayoutError, DataError, DiffusionVLError, ImageError, UnsupportedModelError
from .model import DiffusionOutput, DiffusionVL
from .images import load_image
from .processing import DiffusionVLProcessor
from .tokens import SpecialTokens

__version__ = "0.1.0"

AutoConfig.register(DiffusionVLConfig.model_type, DiffusionVLConfig)
AutoModelForCausalLM.register(DiffusionVLConfig, DiffusionVL)
AutoProcessor.register(DiffusionVLConfig, DiffusionVLProcessor)
AutoConfig.register(VisionLanguageConfig.model_type, VisionLanguageConfig)
AutoModelForCausalLM.register(VisionLanguageConfig, VisionLanguageModel)
AutoProcessor.register(VisionLanguageConfig, DiffusionVLProcessor)

__all__ = [
    "CheckpointLayoutError",
    "DataError",
    "DiffusionOutput",
    "DiffusionVL",
    "DiffusionVLConfig",
    "DiffusionVLError",
    "DiffusionVLProcessor",
    "ImageError",
    "SpecialTokens",
    "UnsupportedModelError",
    "VisionLanguageConfig",
    "VisionLanguageModel",
    "check_block_diffusion_support",
    "diffusion_loss",
    "load_image",
]
