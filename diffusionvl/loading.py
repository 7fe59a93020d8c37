"""Opening a checkpoint folder: check it (checkpoints/folders.py) before building anything, then load the model and its
processor. Generation, evaluation, training and serving all open models through `load_model`, `load_any` and
`load_processor`.
"""

from .checkpoints.folders import (
    COMPOSITE_TYPE,
    PROCESSOR_FILES,
    TOKENIZER_FILES,
    check_checkpoint,
    check_weights,
    is_autoregressive_folder,
    is_diffusionvl_folder,
    local_folder,
    read_config,
    resolve_model,
)
from .errors import CheckpointLayoutError


def load_model(path, dtype=None, device=None):
    """The model saved in a folder: a DiffusionVL (ours or a released layout) or a VisionLanguageModel."""
    from .model import DiffusionVL
    from .modeling.composite import VisionLanguageModel

    path = resolve_model(path)
    folder = local_folder(path)
    if folder is not None and read_config(folder).get("model_type") == COMPOSITE_TYPE:
        check_checkpoint(folder)  # DiffusionVL.from_pretrained runs this check itself; the composite's does not
        model = VisionLanguageModel.from_pretrained(str(path), dtype=dtype)
    else:
        model = DiffusionVL.from_pretrained(str(path), dtype=dtype)
    return model.to(device) if device is not None else model


def load_autoregressive(path, dtype=None, device=None):
    """A plain transformers checkpoint, before translation: a Qwen2.5-VL (image-text-to-text) or a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from .model import VISION_LANGUAGE_TYPES

    path = resolve_model(path)
    folder = local_folder(path)
    model_type = None
    if folder is not None:
        if is_diffusionvl_folder(folder):
            raise CheckpointLayoutError(f"{folder} holds a DiffusionVL checkpoint, not an autoregressive one; load it "
                                        "with load_model (or train it with stage 'diffusion').")
        model_type = read_config(folder).get("model_type")
        check_weights(folder)
    auto = AutoModelForImageTextToText if model_type in VISION_LANGUAGE_TYPES else AutoModelForCausalLM
    model = auto.from_pretrained(str(path), dtype=dtype)
    return model.to(device) if device is not None else model


def load_any(path, dtype=None, device=None):
    """A DiffusionVL or composite checkpoint through `load_model`; any other transformers checkpoint as it is."""
    loader = load_autoregressive if is_autoregressive_folder(path) else load_model
    return loader(path, dtype=dtype, device=device)


def load_processor(path, autoregressive: bool = False):
    """A DiffusionVLProcessor when the folder has an image processor, else its tokenizer. `autoregressive`: the
    folder may hold any transformers checkpoint, not only a DiffusionVL one."""
    from transformers import AutoProcessor, AutoTokenizer

    from . import model  # noqa: F401 - registers DiffusionVLProcessor; without it AutoProcessor returns the tokenizer

    path = resolve_model(path)
    folder = local_folder(path)
    if folder is not None and autoregressive:
        read_config(folder)
    elif folder is not None:
        check_checkpoint(folder)  # a wrong folder is named as such, not as a missing tokenizer
    if folder is not None and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointLayoutError(
            f"no tokenizer in {folder}: save it beside the model (tokenizer.save_pretrained), or copy the tokenizer "
            "files of the model it was made from.")
    has_images = folder is not None and any((folder / name).is_file() for name in PROCESSOR_FILES)
    try:
        return (AutoProcessor if has_images else AutoTokenizer).from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise CheckpointLayoutError(f"the tokenizer or processor in {path} cannot be loaded ({error}).") from error
