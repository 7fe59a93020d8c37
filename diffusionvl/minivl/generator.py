"""MiniVL sample generator: small Pillow-drawn images with one question and one canonical answer each.

Tasks and their exact grammar (`<colour>` is one of COLOURS, `<shape>` one of SHAPES, `<plural>` its PLURALS
entry, `<d>` a digit character):

- caption: Q "Describe the image."
  A  item (", " item)* "."   with 1-4 items, one per shape, in row-major order of the shape's grid cell;
  item = article " " <colour> " " <shape> " " place; article = "an" before "orange", else "a";
  place = "in the center" for the middle cell, else "at the " + one of
  top left | top | top right | left | right | bottom left | bottom | bottom right.
  e.g. "a red circle at the top left, an orange star in the center."
- count: Q "How many <colour> shapes are there?" | "How many <plural> are there?"  A <d>: "1".."7" uniformly,
  "0" (the colour or shape is absent) in about 5% of samples; 2-7 shapes in distinct cells of the 3x3 grid.
- digits: Q "Read the number."  A <d><d>...  (2-4 digits, no spaces), scans from scikit-learn's load_digits, drawn
  side by side at a quarter of the image's side each (28 px at 112 px: one Qwen2.5-VL image token per digit), in
  a random row and column span, jittered by up to 1/16 of a digit.
- chart: Q "What is the value of the <colour> bar?"  A <d> ("1".."9")
       | Q "Which bar is the tallest?"  A <colour>  (the heights then have a unique maximum).
- scene (the long answers): Q "List every shape, row by row."
  A  row (" " row)*  with one row per non-empty row of the 3x3 grid, top to bottom, 3-6 shapes in all;
  row = ("top" | "middle" | "bottom") " row has " thing (", " thing)* "." with the row's shapes left to right;
  thing = article " " <colour> " " <shape>.  e.g. "top row has a red circle, an orange star. bottom row has a
  blue square."  About 27 tokens on average, so parallel decoding has room to work.

Determinism: sample i of (task, split, seed) is drawn from its own random.Random seeded by a SHA-256 of
"task|split|seed|i", so it never depends on other samples, and images are pixel-identical across runs.

Splits are disjoint by construction: every sample has a content key "task|question|answer|layout", where layout
is the discrete content (cells, colours, shapes; bar colours and heights; scan indices), not the continuous
jitter. A key belongs to "test" when SHA-256(key) % 10 == 0 and to "train" otherwise; content is redrawn until
it belongs to the requested split. Digits also use only scans with index % 5 != 0 (train) or == 0 (test).
"""

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

from ..evaluation.metrics import words

TASKS = ("caption", "count", "digits", "chart", "scene")
SPLITS = ("train", "test")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
    "yellow": (235, 200, 0), "purple": (140, 40, 170), "orange": (250, 125, 0),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
PLACES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
ROWS = ("top", "middle", "bottom")
SCENE_QUESTION = "List every shape, row by row."
MAX_DIGITS = 4  # digits are a quarter of the image wide, so four fit in a row
_ZERO_RATE = 0.05  # share of count questions about an absent colour or shape (answer "0")
_MAX_TRIES = 10_000


@dataclass
class Sample:
    """One MiniVL sample. `key` is its content key (see the module docstring); `id` is unique per
    (split, task, seed, index)."""

    task: str
    question: str
    answer: str
    image: Image.Image = field(repr=False)
    id: str
    key: str


class _Content(NamedTuple):
    question: str
    answer: str
    layout: str
    parts: tuple  # what the renderer needs


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(key: str) -> str:
    """The split a content key belongs to: "test" when its hash % 10 == 0, else "train"."""
    return "test" if _hash(key) % 10 == 0 else "train"


# ---------------------------------------------------------------- text


def _place_phrase(cell: int) -> str:
    return "in the center" if PLACES[cell] == "center" else f"at the {PLACES[cell]}"


def _thing(colour: str, shape: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def _item_phrase(cell: int, colour: str, shape: str) -> str:
    return f"{_thing(colour, shape)} {_place_phrase(cell)}"


def _scene_text(items) -> str:
    """items (cell, colour, shape) in row-major order -> one sentence per non-empty row."""
    rows = [[_thing(colour, shape) for cell, colour, shape in items if cell // 3 == row] for row in range(3)]
    return " ".join(f"{ROWS[row]} row has {', '.join(things)}." for row, things in enumerate(rows) if things)


def join_words(tokens: list[str]) -> str:
    """Inverse of `words` for every MiniVL text: tokens joined by one space, except no space before '.', ',',
    '?' and none between two digits."""
    text = ""
    for token in tokens:
        glued = token in ".,?" or (token.isdigit() and text[-1:].isdigit())
        text += token if (glued or not text) else " " + token
    return text


def vocabulary() -> list[str]:
    """Every token (as split by `words`) any MiniVL question or answer can contain, sorted by code point."""
    texts = ["Describe the image.", "Read the number.", "Which bar is the tallest?", "0123456789, .", SCENE_QUESTION]
    texts += [f"{row} row has" for row in ROWS]
    texts += [f"How many {colour} shapes are there?" for colour in COLOUR_NAMES]
    texts += [f"How many {PLURALS[shape]} are there?" for shape in SHAPES]
    texts += [f"What is the value of the {colour} bar?" for colour in COLOUR_NAMES]
    texts += [_item_phrase(cell, colour, shape) for cell in range(9) for colour in COLOUR_NAMES for shape in SHAPES]
    return sorted({token for text in texts for token in words(text)})


# ---------------------------------------------------------------- content


def _layout(items) -> str:
    return ";".join(f"{cell}:{colour}:{shape}" for cell, colour, shape in items)


def _random_items(rng: random.Random, low: int, high: int) -> tuple:
    cells = sorted(rng.sample(range(9), rng.randint(low, high)))
    return tuple((cell, rng.choice(COLOUR_NAMES), rng.choice(SHAPES)) for cell in cells)


def _caption_content(rng: random.Random, split: str) -> _Content:
    items = _random_items(rng, 1, 4)
    answer = ", ".join(_item_phrase(*item) for item in items) + "."
    return _Content("Describe the image.", answer, _layout(items), items)


def _scene_content(rng: random.Random, split: str) -> _Content:
    items = _random_items(rng, 3, 6)
    return _Content(SCENE_QUESTION, _scene_text(items), _layout(items), items)


def _count_content(rng: random.Random, split: str) -> _Content:
    by_colour = rng.random() < 0.5
    values = COLOUR_NAMES if by_colour else SHAPES
    target = rng.choice(values)
    hits = 0 if rng.random() < _ZERO_RATE else rng.randint(1, 7)  # the answer first, so answers are balanced
    cells = sorted(rng.sample(range(9), rng.randint(max(2, hits), 7)))
    chosen, others = set(rng.sample(range(len(cells)), hits)), [v for v in values if v != target]
    items = []
    for k, cell in enumerate(cells):
        value = target if k in chosen else rng.choice(others)
        items.append((cell, value, rng.choice(SHAPES)) if by_colour else (cell, rng.choice(COLOUR_NAMES), value))
    question = f"How many {target} shapes are there?" if by_colour else f"How many {PLURALS[target]} are there?"
    return _Content(question, str(hits), _layout(items), tuple(items))


@lru_cache(maxsize=1)
def _scans():
    """(images as uint8 8x8 arrays, dark ink on white, and their labels) of scikit-learn's digits."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    digits = load_digits()
    images = (255 - (digits.images * (255 / 16)).round()).clip(0, 255).astype("uint8")
    return images, [int(label) for label in digits.target]


@lru_cache(maxsize=2)
def _scan_pool(split: str) -> tuple:
    total = len(_scans()[1])
    return tuple(i for i in range(total) if (i % 5 == 0) == (split == "test"))


def _digits_content(rng: random.Random, split: str) -> _Content:
    pool, labels = _scan_pool(split), _scans()[1]
    scans = tuple(rng.choice(pool) for _ in range(rng.randint(2, MAX_DIGITS)))
    answer = "".join(str(labels[i]) for i in scans)
    return _Content("Read the number.", answer, "scans=" + ",".join(map(str, scans)), scans)


def _chart_content(rng: random.Random, split: str) -> _Content:
    colours = rng.sample(COLOUR_NAMES, rng.randint(3, 5))
    tallest = rng.random() < 0.5
    while True:
        heights = [rng.randint(1, 9) for _ in colours]
        if not tallest or heights.count(max(heights)) == 1:
            break
    if tallest:
        question, answer = "Which bar is the tallest?", colours[heights.index(max(heights))]
    else:
        colour = rng.choice(colours)
        question, answer = f"What is the value of the {colour} bar?", str(heights[colours.index(colour)])
    bars = tuple(zip(colours, heights))
    return _Content(question, answer, ",".join(f"{c}:{h}" for c, h in bars), bars)


# ---------------------------------------------------------------- drawing


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else 0.42 * r) * math.cos(math.pi * (k / 5 - 0.5)),
                 cy + 0.1 * r + (r if k % 2 == 0 else 0.42 * r) * math.sin(math.pi * (k / 5 - 0.5)))
                for k in range(10)]
    t = r / 3  # cross: a plus sign with arms 2/3 r thick
    return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
            (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
            (cx - r, cy - t), (cx - t, cy - t)]


def _draw_shapes(items, rng: random.Random, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw, cell = ImageDraw.Draw(image), size / 3
    for index, colour, shape in items:
        side = cell * rng.uniform(0.72, 0.9)
        slack = (cell - side) / 2
        cx = (index % 3 + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (index // 3 + 0.5) * cell + rng.uniform(-slack, slack)
        r, fill = side / 2, COLOURS[colour]
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            draw.rectangle([cx - 0.9 * r, cy - 0.9 * r, cx + 0.9 * r, cy + 0.9 * r], fill=fill)
        else:
            draw.polygon(_shape_points(shape, cx, cy, r), fill=fill)
    return image


def _draw_digits(scans, rng: random.Random, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    cell = size // MAX_DIGITS
    jitter = max(1, cell // 16)
    column, row = rng.randint(0, MAX_DIGITS - len(scans)), rng.randint(0, MAX_DIGITS - 1)
    x = min(max(0, column * cell + rng.randint(-jitter, jitter)), size - cell * len(scans))
    y = min(max(0, row * cell + rng.randint(-jitter, jitter)), size - cell)
    for i in scans:
        scan = Image.fromarray(_scans()[0][i]).resize((cell, cell), Image.Resampling.BILINEAR)
        image.paste(scan.convert("RGB"), (x, y))
        x += cell
    return image


def _draw_chart(bars, rng: random.Random, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw, margin = ImageDraw.Draw(image), size * 0.1
    base, top, left, right = size - margin, margin, margin, size - margin / 2
    unit, slot = (base - top) / 9, (right - left) / len(bars)
    for k, (colour, height) in enumerate(bars):
        x0 = left + (k + 0.15) * slot
        draw.rectangle([x0, base - height * unit, x0 + 0.7 * slot, base], fill=COLOURS[colour])
    width = max(1, size // 56)
    draw.line([(left, top), (left, base)], fill="black", width=width)
    draw.line([(left, base), (right, base)], fill="black", width=width)
    return image


_CONTENT = {"caption": _caption_content, "count": _count_content, "digits": _digits_content, "chart": _chart_content,
            "scene": _scene_content}
_DRAW = {"caption": _draw_shapes, "count": _draw_shapes, "digits": _draw_digits, "chart": _draw_chart,
         "scene": _draw_shapes}


# ---------------------------------------------------------------- public API


def _check(task: str, split: str, size: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown MiniVL task {task!r}; choose from {', '.join(TASKS)}.")
    if split not in SPLITS:
        raise ValueError(f"unknown MiniVL split {split!r}; choose from {', '.join(SPLITS)}.")
    if size < 28:
        raise ValueError(f"MiniVL images need size >= 28 px, got {size}.")


def sample(task: str, split: str, seed: int, index: int, size: int = 112) -> Sample:
    """Sample `index` of (task, split, seed): the same arguments always give the same sample."""
    _check(task, split, size)
    rng = random.Random(_hash(f"{task}|{split}|{seed}|{index}"))
    for _ in range(_MAX_TRIES):
        content = _CONTENT[task](rng, split)
        key = f"{task}|{content.question}|{content.answer}|{content.layout}"
        if split_of(key) == split:
            image = _DRAW[task](content.parts, rng, size)
            return Sample(task, content.question, content.answer, image, f"{split}-{task}-{seed}-{index}", key)
    raise RuntimeError(f"no {split} content found for {task} after {_MAX_TRIES} draws")  # pragma: no cover


def generate(task: str, split: str, seed: int, count: int, size: int = 112) -> list[Sample]:
    """Samples 0..count-1 of (task, split, seed)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    return [sample(task, split, seed, index, size) for index in range(count)]


def generate_mix(tasks, split: str, seed: int, count_per_task: int, size: int = 112) -> list[Sample]:
    """`count_per_task` samples of each task, interleaved round-robin (sample i of every task, then i + 1)."""
    per_task = [generate(task, split, seed, count_per_task, size) for task in tasks]
    return [samples[i] for i in range(count_per_task) for samples in per_task]


def write_llava(samples, folder, name: str = "minivl.json") -> Path:
    """Write every image as folder/images/<id>.png and the samples as a LLaVA JSON array folder/<name>, the format
    `diffusionvl train --data FILE --image-folder FOLDER` reads. Returns the JSON file's path."""
    folder = Path(folder)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("samples have duplicate ids; their images would overwrite each other.")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for s in samples:
        s.image.save(folder / "images" / f"{s.id}.png", format="PNG")
        records.append({"id": s.id, "image": f"images/{s.id}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + s.question}, {"from": "gpt", "value": s.answer}]})
    path = folder / name
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return path
