"""LLaVA-format training data: reading and validating the file, turning records into model inputs, batching.

A record: {"id": ..., "image": path | [paths] (optional), "conversations": [{"from": "human" | "gpt",
"value": ...}, ...]}. Image paths are relative to an image folder. A malformed file fails at start and names
the line; a record whose image is missing or corrupt is skipped at training time and counted.
"""

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .processing import IMAGE_PLACEHOLDER

ROLES = {"human": "user", "gpt": "assistant"}


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list) or not record["conversations"]:
        raise ValueError(f"{where}: a record needs a non-empty 'conversations' list.")
    for turn in record["conversations"]:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: every turn needs 'from' ('human' or 'gpt') and a string 'value', got {turn!r}.")
    if not any(turn["from"] == "gpt" for turn in record["conversations"]):
        raise ValueError(f"{where}: the conversation has no 'gpt' turn, so nothing would be learnt.")
    image = record.get("image")
    if image is not None and not (isinstance(image, str) or (isinstance(image, list) and all(isinstance(i, str) for i in image))):
        raise ValueError(f"{where}: 'image' must be a path or a list of paths, got {image!r}.")
    return record


def read_llava(path) -> list[dict]:
    """All records of a LLaVA JSON (an array) or JSONL file, validated; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text()
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(_check_record(json.loads(line), f"{path}:{number}"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}).") from error
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from error
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json data file holds one array of records (use .jsonl for one per line).")
    # json gives no line numbers for values, so find each record's first line by its position in the text
    decoder, lines, position = json.JSONDecoder(), [], text.index("[") + 1
    for _ in data:
        position += len(text[position:]) - len(text[position:].lstrip(" \t\r\n,"))
        lines.append(text.count("\n", 0, position) + 1)
        position = decoder.raw_decode(text, position)[1]
    return [_check_record(record, f"{path}:{line}") for record, line in zip(data, lines)]


def to_messages(record: dict) -> tuple[list[dict], list[str]]:
    """Chat messages with image parts, and the record's image paths. A missing `<image>` goes first."""
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    turns = [dict(turn) for turn in record["conversations"]]
    placed = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if images and placed == 0:
        first = next(turn for turn in turns if turn["from"] == "human")
        first["value"] = IMAGE_PLACEHOLDER * len(images) + "\n" + first["value"]
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
    """Records -> tokenised examples with labels. A broken record is replaced by the next good one, and the
    example says how many it passed over (`skipped`), so batches keep their size and the count is exact."""

    def __init__(self, records: list[dict], processor, image_folder=None, max_length: int | None = None):
        self.records, self.processor = records, processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Rough token counts for grouping batches by length, without tokenising or opening any image."""
        def estimate(record):
            images = record.get("image") or []
            count = 1 if isinstance(images, str) else len(images)
            return sum(len(turn["value"].split()) for turn in record["conversations"]) + 256 * count

        return [estimate(record) for record in self.records]

    def example(self, index: int) -> dict:
        messages, images = to_messages(self.records[index])
        paths = [self.image_folder / p if self.image_folder is not None else Path(p) for p in images]
        out = dict(self.processor.training_example(messages, paths))
        if self.max_length is not None and out["input_ids"].shape[1] > self.max_length:
            raise ValueError(f"{out['input_ids'].shape[1]} tokens, more than max_length={self.max_length}")
        return {k: v[0] if k in ("input_ids", "attention_mask", "labels") else v for k, v in out.items()}

    def __getitem__(self, index: int) -> dict:
        for skipped in range(len(self.records)):
            try:
                return {**self.example((index + skipped) % len(self.records)), "skipped": skipped}
            except (FileNotFoundError, ValueError):  # missing or corrupt image, or an over-long sample
                continue
        raise RuntimeError("no usable record in the data: every image is missing or corrupt.")


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Right-pad text, concatenate images in order, and sum the skipped-record counts."""
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
    batch["num_skipped"] = torch.tensor(sum(e["skipped"] for e in examples))
    return batch
