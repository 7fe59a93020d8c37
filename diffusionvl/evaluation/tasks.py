"""`diffusionvl eval --tasks FILE.jsonl`: a saved model scored on a user's own questions.

    diffusionvl eval --tasks FILE.jsonl [--model DIR] [--metric NAME] [--samples N] [--batch-size 8]
                     [--log LOG.jsonl] [--json]

FILE holds one JSON object per line (blank lines are skipped; other fields are ignored):

- `question` (string, required) and `answer` (string or number, required: 12 is "12", 12.5 is "12.5");
- `image` (a path) or `images` (a list of paths), optional: relative paths are relative to FILE's folder. The
  images go in front of the question, as in training; `<image>` placeholders in the question are removed (their
  number must match the images). A file without images also runs on a text model (smollm2, smollm2-dlm);
- `choices` (a list of 2-26 strings), optional: multiple choice. The prompt is then, as in LLaVA's MMBench
  evaluation, the question, one line per choice "A. ...", "B. ...", and the line "Answer with the option's letter
  from the given choices directly.";
- `metric`, optional: one of `metrics.METRICS`; else `--metric`; else multiple_choice for a question with
  choices and exact_match without. A multiple_choice answer is a letter of the choices or one choice's text; a
  yes_no answer is "yes" or "no";
- `id` (string or number), optional and unique; default "line-N".

The whole file (fields, metrics, answers, every image decoded once) is checked before any weight is read; an
error names the file, the line and the fix. Questions are decoded in file order, `--batch-size` at a time, through
`inference.answer` (the path of `generate` and the MiniVL eval), and scored by `metrics.score`.

`--log` writes one JSON object per question: `id`, `prompt` (the user message above, without the chat template),
`prediction`, `truth`, `metric`, `score`, `tokens` (new tokens, the end of turn included), `batch` (index) and
`nfe`: its batch's forwards divided by the batch's questions (the engine reports forwards per batch, not per row),
so the log's nfe adds up to the summary's.

Output: a Markdown table (metric, samples, mean score) and a footer, or with `--json` one JSON object:
`score` (mean over all questions), `metrics` ({name: {"score": mean, "samples": int}}), `samples`,
`tokens_per_forward`, `tokens_per_decoding_forward`, `nfe`, `tokens_per_s`, `seconds` (all as in the MiniVL
eval), `model` and `tasks` (the arguments as given).
"""

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, DiffusionVLError, ImageError
from ..modeling.images import load_image
from .metrics import LETTERS, METRICS, answer_letter, normalise, score
from .tally import Tally

IMAGE_PLACEHOLDER = "<image>"  # processing.IMAGE_PLACEHOLDER, without importing transformers
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Question:
    """One checked line of a task file. `prompt` is the user message; `images` are resolved paths."""

    id: str
    prompt: str
    answer: str
    metric: str
    images: tuple[str, ...]
    choices: tuple[str, ...]
    line: int


def is_task_file(spec: str) -> bool:
    """--tasks names a JSONL file: a path ending .jsonl, or an existing file not spelt as MiniVL's suite."""
    return spec.endswith(".jsonl") or (Path(spec).is_file() and spec.partition(":")[0].strip() != "minivl")


def prompt_of(question: str, choices=()) -> str:
    if not choices:
        return question
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{question}\n{options}\n{CHOICE_INSTRUCTION}"


def _strings(value, what: str, where: str, at_least: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < at_least or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where}: {what} must be a list of at least {at_least} non-empty strings, got {value!r}.")
    return tuple(value)


def _image_paths(record: dict, where: str, folder: Path) -> tuple[str, ...]:
    if "image" in record and "images" in record:
        raise DataError(f"{where}: give 'image' (one path) or 'images' (a list of paths), not both.")
    if "image" in record and not (isinstance(record["image"], str) and record["image"].strip()):
        raise DataError(f"{where}: 'image' must be a path (a string), got {record['image']!r}; use 'images' for a list.")
    paths = [record["image"]] if "image" in record else list(_strings(record.get("images", []), "'images'", where, 0))
    for i, path in enumerate(paths):
        paths[i] = str(folder / path)  # an absolute path stays as it is
        try:
            load_image(paths[i])  # decoded once here so a broken file fails before the model loads
        except ImageError as error:
            relative = " (a relative path starts from the task file's folder)" if error.reason == "missing" else ""
            raise DataError(f"{where}: {error}{relative}") from error
    return tuple(paths)


def _check_answer(metric: str, answer: str, choices, where: str) -> None:
    if metric == "multiple_choice" and answer_letter(answer, choices) is None:
        named = f"one of the letters A-{LETTERS[len(choices) - 1]} or a choice's text" if choices else "a letter"
        raise DataError(f"{where}: the answer {answer!r} is not {named}, so multiple_choice cannot score it.")
    if metric == "yes_no" and normalise(answer).lower() not in ("yes", "no"):
        raise DataError(f"{where}: a yes_no answer is 'yes' or 'no', got {answer!r}; use another metric.")


def _question(record, where: str, folder: Path, default_metric: str | None, line: int) -> Question:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a line must hold one JSON object with 'question' and 'answer', got {record!r}.")
    question, answer = record.get("question"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: missing 'question' (a non-empty string); every line needs 'question' and 'answer'.")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"{where}: missing 'answer' (a string or a number); every line needs 'question' and "
                        f"'answer', got {answer!r}.")
    choices = _strings(record["choices"], "'choices'", where, 2) if "choices" in record else ()
    if len(choices) > len(LETTERS):
        raise DataError(f"{where}: {len(choices)} choices, more than the {len(LETTERS)} letters A-Z.")
    metric = record.get("metric") or default_metric or ("multiple_choice" if choices else "exact_match")
    if not isinstance(metric, str) or metric not in METRICS:
        raise DataError(f"{where}: unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    answer = answer if isinstance(answer, str) else str(answer)
    _check_answer(metric, answer, choices, where)
    images = _image_paths(record, where, folder)
    placed = question.count(IMAGE_PLACEHOLDER)
    if placed and placed != len(images):
        raise DataError(f"{where}: the question holds {placed} {IMAGE_PLACEHOLDER} placeholder(s) but "
                        f"{len(images)} image(s) are given; give one image per placeholder, or drop them.")
    question = question.replace(IMAGE_PLACEHOLDER, "").strip()
    key = record.get("id", f"line-{line}")
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise DataError(f"{where}: 'id' must be a string or an integer, got {key!r}.")
    return Question(str(key), prompt_of(question, choices), answer, metric, images, choices, line)


def read_tasks(path, default_metric: str | None = None) -> list[Question]:
    """Every question of a task file, checked (see the module docstring); errors name the line."""
    from ..training.data import _read_text

    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file not found: {path}" + (" (it is a folder)" if path.is_dir() else "") +
                        "; --tasks takes a JSONL file of questions, 'minivl' or 'minivl:' and some of "
                        "caption,count,digits,chart,scene.")
    if default_metric is not None and default_metric not in METRICS:
        raise DataError(f"unknown --metric {default_metric!r}; use one of {', '.join(METRICS)}.")
    questions, seen = [], {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg}); write one JSON object per line.") from error
        question = _question(record, where, path.parent, default_metric, number)
        if question.id in seen:
            raise DataError(f"{where}: the id {question.id!r} is already used on line {seen[question.id]}; ids "
                            "must be unique (or left out).")
        seen[question.id] = number
        questions.append(question)
    if not questions:
        raise DataError(f'{path} holds no questions; write one JSON object per line, e.g. {{"question": "What is '
                        f'2 + 2?", "answer": "4"}}.')
    return questions


def row_records(out, batch: int) -> list[dict]:
    """Per answer of one batch: its tokens, the batch's index, and its share of the batch's forwards."""
    return [{"tokens": len(row), "batch": batch, "nfe": out.nfe / len(out.rows)} for row in out.rows]


def check_log(path) -> None:
    """A --log path that can be written, checked before any weight is read."""
    if path is not None and (Path(path).is_dir() or not Path(path).parent.is_dir()):
        raise DiffusionVLError(f"--log {path}: " + ("is a folder" if Path(path).is_dir() else "its folder does not "
                               "exist") + "; pass a file path in an existing folder.")


def evaluate(model, processor, questions, batch_size: int, config, model_name: str = "", tasks: str = "",
             log=None, progress: bool = True, verifier=None) -> dict:
    """The summary documented in the module docstring; with `log` (an open text file) one line per question.
    `verifier`: checks speculative drafts (--verifier)."""
    from tqdm.auto import tqdm

    from ..inference import answer, chat_inputs

    tally, scores = Tally(), {}
    batches = [questions[i: i + batch_size] for i in range(0, len(questions), batch_size)]
    for index, batch in enumerate(tqdm(batches, desc="eval", unit="batch", disable=not progress or None)):
        start = time.perf_counter()  # preprocessing (image decoding included) counts: a user waits for it too
        inputs = chat_inputs(processor, [q.prompt for q in batch], [list(q.images) for q in batch])
        out = answer(model, processor, inputs, config, verifier=verifier)
        tally.add(out, time.perf_counter() - start)
        for q, prediction, row in zip(batch, out.texts, row_records(out, index)):
            value = score(q.metric, prediction, q.answer, q.choices)
            scores.setdefault(q.metric, []).append(value)
            if log is not None:
                log.write(json.dumps({"id": q.id, "prompt": q.prompt, "prediction": prediction, "truth": q.answer,
                                      "metric": q.metric, "score": value, **row}) + "\n")
    every = [value for values in scores.values() for value in values]
    return {
        "score": sum(every) / len(every),
        "metrics": {name: {"score": sum(v) / len(v), "samples": len(v)} for name, v in scores.items()},
        "samples": len(every),
        **tally.speed(),
        "model": model_name,
        "tasks": tasks,
    }


def markdown(result: dict) -> str:
    lines = ["| metric | samples | score |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {m['samples']} | {100 * m['score']:.1f}% |" for name, m in result["metrics"].items()]
    footer = (f"mean score {100 * result['score']:.1f}% over {result['samples']} samples | "
              f"{result['tokens_per_forward']:.2f} tokens/forward | NFE {result['nfe']} | "
              f"{result['tokens_per_s']:.1f} tokens/s | {result['seconds']:.1f} s")
    return "\n".join(lines + ["", footer])


def check_images_fit(questions, processor, model_name, path) -> None:
    """A text model (a bare tokenizer, no image processor) cannot take questions with images."""
    pictured = next((q for q in questions if q.images), None)
    if pictured is not None and not hasattr(processor, "image_processor"):
        raise DataError(f"{path}:{pictured.line}: this question (and maybe others) has images, but {model_name} "
                        "is a text model with no image processor; pass a vision-language model (e.g. --model "
                        "minivl-dvlm), or a file without images.")


def main(args: argparse.Namespace) -> None:
    import torch

    from ..cli import decoding_config, open_verifier, torch_dtype
    from ..inference import open_model, open_processor

    for name in ("samples", "batch_size"):  # every option and the whole file are checked before any weight is read
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise DiffusionVLError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
    check_log(args.log)
    questions = read_tasks(args.tasks, args.metric)[: args.samples]
    config = decoding_config(args)
    processor = open_processor(args.model)
    check_images_fit(questions, processor, args.model, args.tasks)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = open_model(args.model, dtype=torch_dtype(args.dtype), device=device)
    verifier = open_verifier(args, torch_dtype(args.dtype), device)
    with open(args.log, "w", encoding="utf-8") if args.log else nullcontext() as log:
        result = evaluate(model, processor, questions, args.batch_size, config, str(args.model), args.tasks, log,
                          verifier=verifier)
    print(json.dumps(result) if args.json else markdown(result))

