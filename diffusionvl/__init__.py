"""diffusionvl: translate autoregressive (vision-)language models into block-diffusion models.

Names are imported on first use (so `diffusionvl --help` does not pay for torch). Importing the model classes
registers them with transformers' Auto classes: after `from diffusionvl import DiffusionVL`,
`AutoModelForCausalLM.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)` load our checkpoints.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "CheckpointLayoutError": "errors", "DataError": "errors", "DiffusionVLError": "errors", "ImageError": "errors",
    "UnsupportedModelError": "errors",
    "DiffusionVLConfig": "modeling.config",
    "DiffusionOutput": "modeling.streams", "DiffusionVL": "model",
    "VisionLanguageConfig": "modeling.composite", "VisionLanguageModel": "modeling.composite",
    "DiffusionVLProcessor": "modeling.processing",
    "SpecialTokens": "modeling.tokens",
    "check_block_diffusion_support": "modeling.compat",
    "diffusion_loss": "modeling.loss",
    "load_image": "modeling.images",
    "load_model": "loading", "load_processor": "loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffusionvl' has no attribute {name!r}")
    importlib.import_module(".model", __name__)  # registers every class with the Auto classes
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
