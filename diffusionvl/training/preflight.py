"""Checks a training run makes before it creates or touches its output folder (its options are checked by
TrainingConfig itself): the output path,
the image folder, and whether the checkpoint can take the data's images (train.prepare runs them, then looks
for a first usable record). Each failure says what is wrong and how to fix it."""

import tempfile
from pathlib import Path

from ..errors import DataError, DiffusionVLError
from .data import record_images


def check_output_dir(path) -> None:
    """The output folder can be created (or exists) and written to; nothing is created here."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DiffusionVLError(f"--output-dir {path} is an existing file, not a folder; choose another path.")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DiffusionVLError(f"--output-dir {path} is under {existing}, which is a file, not a folder.")
    try:  # permissions alone do not tell (root, read-only mounts, /proc): try a file that vanishes on close
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise DiffusionVLError(f"--output-dir {path}: cannot create files in {existing} ({error.strerror or error}); "
                               "choose a folder you can write to.") from error


def check_image_files(records: list[dict], data, image_folder) -> None:
    """A wrong image folder would silently train on the text-only records: refuse it when no image resolves."""
    paths = [p for record in records for p in record_images(record)]
    if not paths:
        return
    folder = Path(image_folder) if image_folder is not None else Path.cwd()
    if not folder.is_dir():
        raise DataError(f"--image-folder {folder} does not exist or is not a folder; {len(paths)} images of {data} "
                        "are relative to it.")
    if not any((folder / p).is_file() for p in paths):  # stops at the first file found
        raise DataError(f"none of the {len(paths)} images of {data} exists under {folder} ({folder / paths[0]} is "
                        "missing, for one); pass the folder they are relative to with --image-folder.")


def check_image_support(records: list[dict], data, processor) -> None:
    """A text checkpoint (a tokenizer, no image processor) cannot take records with images."""
    count = sum(1 for record in records if record_images(record))
    if count and getattr(processor, "image_processor", None) is None:
        raise DiffusionVLError(
            f"this checkpoint has no image processor; {count} records of {data} have images. Train it on text-only "
            "data, or train a vision-language checkpoint (diffusionvl convert of a Qwen2.5-VL).")



def check_chat_template(processor, model) -> None:
    """Training formats every conversation with the tokenizer's chat template; a base LM's tokenizer may have none."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if not getattr(tokenizer, "chat_template", None):
        raise DiffusionVLError(
            f"the tokenizer in {model} has no chat template, and training formats each conversation with it. Give it "
            "one (set tokenizer.chat_template and save_pretrained into that folder), or start from an instruct model.")
