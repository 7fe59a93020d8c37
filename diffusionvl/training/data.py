"""LLaVA-format training data: reading and validating the file, turning records into model inputs, batching.

A record: {"id": ..., "image": path | [paths] (optional), "conversations": [{"from": "human" | "gpt",
"value": ...}, ...]}. Image paths are relative to an image folder. A malformed file fails at start and names
the line; a record that cannot be used (an image missing or broken, a wrong number of `<image>`, too long) is
skipped at training time and reported with a reason.
"""

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import ProcessorMixin

from ..errors import DataError, DiffusionVLError
from ..modeling.processing import IMAGE_PLACEHOLDER, DiffusionVLProcessor

logger = logging.getLogger(__name__)
ROLES = {"human": "user", "gpt": "assistant"}


class SkippedRecord(DiffusionVLError):
    """A record training passes over; `reason` is the short key it is counted under ("image count", "too long")."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class TokenizerOnlyProcessor(DiffusionVLProcessor):
    """The chat formatting and label masking of DiffusionVLProcessor over a bare tokenizer, for checkpoints of
    text LMs (`diffusionvl convert` saves no image processor for them). Text only: training refuses image
    records for such a checkpoint before it starts."""

    def __init__(self, tokenizer):
        self.image_processor = None
        self.image_token, self.vision_start, self.vision_end, self.image_seq_length = None, None, None, None
        # ProcessorMixin reads the sub-processors from this signature: the tokenizer alone
        ProcessorMixin.__init__(self, tokenizer)


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list) or not record["conversations"]:
        raise DataError(f"{where}: a record needs a non-empty 'conversations' list.")
    for turn in record["conversations"]:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: every turn needs 'from' ('human' or 'gpt') and a string 'value', got {turn!r}.")
    if not any(turn["from"] == "gpt" for turn in record["conversations"]):
        raise DataError(f"{where}: the conversation has no 'gpt' turn, so nothing would be learnt.")
    image = record.get("image")
    paths = isinstance(image, list) and all(isinstance(i, str) for i in image)
    if image is not None and not (isinstance(image, str) or paths):
        raise DataError(f"{where}: 'image' must be a path or a list of paths, got {image!r}.")
    return record


def _read_text(path: Path) -> str:
    """The file as UTF-8; an undecodable byte is reported with its line."""
    try:
        raw = path.read_bytes()
    except OSError as error:  # unreadable: permissions, a broken mount
        raise DataError(f"data file {path} cannot be read ({error.strerror or error}).") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {raw[error.start]:#04x}); save the file as "
                        "UTF-8.") from error


def read_llava(path) -> list[dict]:
    """All records of a LLaVA JSON (an array) or JSONL file, validated; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    text = _read_text(path)
    records = _read_jsonl(path, text) if path.suffix == ".jsonl" else _read_json(path, text)
    if not records:
        raise DataError(f"{path} holds no records; a LLaVA data file needs at least one conversation.")
    return records


def _read_jsonl(path: Path, text: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_check_record(json.loads(line), f"{path}:{number}"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg}).") from error
    return records


def _read_json(path: Path, text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from error
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json data file holds one array of records (use .jsonl for one per line).")
    # json gives no line numbers for values, so find each record's first line by its position in the text
    decoder, lines, position = json.JSONDecoder(), [], text.index("[") + 1
    for _ in data:
        position += len(text[position:]) - len(text[position:].lstrip(" \t\r\n,"))
        lines.append(text.count("\n", 0, position) + 1)
        position = decoder.raw_decode(text, position)[1]
    return [_check_record(record, f"{path}:{line}") for record, line in zip(data, lines)]


def record_images(record: dict) -> list[str]:
    """The record's image paths, as given (relative to the image folder)."""
    images = record.get("image") or []
    return [images] if isinstance(images, str) else list(images)


def to_messages(record: dict) -> tuple[list[dict], list[str]]:
    """Chat messages with image parts, and the record's image paths. Images belong to the human turns: an
    `<image>` in a gpt turn names no image the model could write, so it is dropped from the answer. A missing
    `<image>` goes first; any other mismatch between placeholders and images is a SkippedRecord."""
    images = record_images(record)
    turns = [dict(turn) for turn in record["conversations"]]
    for turn in turns:
        if turn["from"] == "gpt":
            turn["value"] = turn["value"].replace(IMAGE_PLACEHOLDER, "")
    placed = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if images and placed == 0:
        first = next((turn for turn in turns if turn["from"] == "human"), turns[0])
        first["value"] = IMAGE_PLACEHOLDER * len(images) + "\n" + first["value"]
    elif placed != len(images):
        raise SkippedRecord(f"it has {placed} {IMAGE_PLACEHOLDER} placeholders for {len(images)} images", "image count")
    messages = []
    for turn in turns:
        parts = []
        for index, piece in enumerate(turn["value"].split(IMAGE_PLACEHOLDER)):
            if index:
                parts.append({"type": "image"})
            if piece.strip("\n"):
                parts.append({"type": "text", "text": piece.strip("\n")})
        messages.append({"role": ROLES[turn["from"]], "content": parts})
    return messages, images


class LlavaDataset(Dataset):
    """Records -> tokenised examples with labels. A record that cannot be used is replaced by the next usable
    one, so batches keep their size and the order stays a function of the seed; the example lists the records
    it passed over as (index, reason, message), and the trainer counts each record once."""

    def __init__(self, records: list[dict], processor, image_folder=None, max_length: int | None = None,
                 max_positions: int | None = None):
        self.records, self.processor = records, processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        # documented rule: a sample longer than either limit is skipped, never cut (a cut answer teaches a
        # truncated turn, and the model's positions cannot be exceeded at all)
        self.limits = [(limit, text) for limit, text in ((max_length, f"max_length={max_length}"),
                       (max_positions, f"the model's {max_positions} positions")) if limit is not None]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Rough token counts for grouping batches by length, without tokenising or opening any image."""
        def estimate(record):
            words = sum(len(turn["value"].split()) for turn in record["conversations"])
            return words + 256 * len(record_images(record))

        return [estimate(record) for record in self.records]

    def image_paths(self, record: dict) -> list[Path]:
        return [self.image_folder / p if self.image_folder is not None else Path(p) for p in record_images(record)]

    def example(self, index: int) -> dict:
        """One record's inputs and labels; raises a ValueError (ImageError, SkippedRecord...) if it is unusable."""
        messages, _ = to_messages(self.records[index])
        out = dict(self.processor.training_example(messages, self.image_paths(self.records[index])))
        length = out["input_ids"].shape[1]
        for limit, text in self.limits:
            if length > limit:
                raise SkippedRecord(f"{length} tokens, more than {text}", "too long")
        return {k: v[0] if k in ("input_ids", "attention_mask", "labels") else v for k, v in out.items()}

    def __getitem__(self, index: int) -> dict:
        passed = []
        for offset in range(len(self.records)):
            position = (index + offset) % len(self.records)
            try:
                return {**self.example(position), "skipped": passed}
            except ValueError as error:  # ImageError, SkippedRecord, or an input the processor refuses
                passed.append((position, getattr(error, "reason", "invalid"), self.describe(position, error)))
        counts = ", ".join(f"{n} {reason}" for reason, n in count_reasons(r for _, r, _ in passed).items())
        raise DataError(f"no usable record among the {len(self.records)} records ({counts}); the first: {passed[0][2]}")

    def describe(self, index: int, error: Exception) -> str:
        name = self.records[index].get("id")
        return f"record {index}" + (f" (id {name!r})" if name is not None else "") + f": {error}"


def count_reasons(reasons) -> dict[str, int]:
    """{reason: how many}, sorted by reason, for logs and messages."""
    return dict(sorted(Counter(reasons).items()))


class SkippedRecords:
    """The records training passed over, each counted once (by index) with its reason, however often the data
    order passes over it; saved in checkpoints so the count survives a resume."""

    def __init__(self, saved: dict | None = None):
        self.reasons = {int(index): reason for index, reason in (saved or {}).items()}  # JSON keys are strings

    def __len__(self) -> int:
        return len(self.reasons)

    def add(self, entries) -> None:
        """(index, reason, message) entries from a batch; each record is reported once, when first passed over."""
        for index, reason, message in entries:
            if index not in self.reasons:
                self.reasons[index] = reason
                logger.warning(f"skipped {message}")

    def merge_processes(self) -> None:
        """Each process of a distributed run passes over its own share of records: all of them call this together
        to hold the union."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self.reasons)
            for part in parts:
                self.reasons.update(part)

    def by_reason(self) -> dict[str, int]:
        return count_reasons(self.reasons.values())

    def summary(self) -> dict:
        return {"skipped_records": len(self), "skipped_by_reason": self.by_reason()}

    def __str__(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.by_reason().items())
        return f"{len(self)} records skipped" + (f" ({reasons})" if reasons else "")


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Right-pad text, concatenate images in order, and gather the records passed over."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {
        "input_ids": torch.full((len(examples), width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(examples), width, dtype=torch.long),
        "labels": torch.full((len(examples), width), -100, dtype=torch.long),
    }
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        for key in batch:
            batch[key][row, :n] = example[key]
    for key in ("pixel_values", "image_grid_thw"):
        parts = [e[key] for e in examples if key in e]
        if parts:
            batch[key] = torch.cat(parts)
    batch["skipped"] = [entry for e in examples for entry in e["skipped"]]
    return batch
