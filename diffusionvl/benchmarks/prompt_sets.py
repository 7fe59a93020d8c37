"""The prompts a benchmark answers, one list whatever their source:

- MiniVL test samples (a vision-language model): `samples` per task of `tasks`, taken round-robin over the tasks
  so that a batch mixes prompt lengths; each has its image and reference answer (exact match);
- SmolLM2's held-out instructions (a text model such as smollm2-dlm): `samples` prompts of the test split, six
  kinds round-robin, some of them multi-turn. They have no reference answers: a setting's accuracy is then the share
  of its answers equal to its AR source's (exact match of the texts);
- a JSONL file of questions (`evaluation.tasks`: question, answer, optional images, choices and metric), scored by
  each line's metric; with `samples`, its first `samples` lines.
"""

import argparse
from dataclasses import dataclass

from ..errors import DiffusionVLError


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt: a user message or a conversation ending with the user's turn, its images, and its reference
    answer (None: compare with the AR source's answer) with the metric that scores it."""

    prompt: str | tuple[dict, ...]
    images: tuple = ()
    truth: str | None = None
    metric: str = "exact_match"
    choices: tuple[str, ...] = ()


def check_tasks(tasks: tuple[str, ...] | None) -> None:
    """MiniVL task names, checked before any model loads."""
    from ..minivl.generator import TASKS

    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise DiffusionVLError(f"--tasks: unknown MiniVL task(s) {unknown}; the tasks are {', '.join(TASKS)} "
                               "(e.g. --tasks minivl:caption).")


def is_text_model(processor) -> bool:
    """A bare tokenizer: the model takes no images (chat_inputs renders its chat template itself)."""
    return not hasattr(processor, "image_processor")


def prompt_set(processor, samples: int, seed: int, tasks: tuple[str, ...] | None = None,
               task_file: str | None = None) -> tuple[list[BenchPrompt], str]:
    """(the prompts, what they are in words for the report's title)."""
    if task_file is not None:
        from ..evaluation.tasks import read_tasks

        questions = read_tasks(task_file)[:samples]
        return [BenchPrompt(q.prompt, q.images, q.answer, q.metric, q.choices) for q in questions], \
            f"{len(questions)} questions of {task_file}"
    if is_text_model(processor):
        if tasks:
            raise DiffusionVLError(f"--tasks {','.join(tasks)}: MiniVL tasks need a vision-language model; a text "
                                   "model answers SmolLM2's held-out prompts, or a JSONL file of questions without "
                                   "images (--tasks FILE.jsonl).")
        from ..smollm2.prompts import generate as held_out

        prompts = [BenchPrompt(tuple(dict(m) for m in p.messages)) for p in held_out("test", seed, samples)]
        return prompts, f"{len(prompts)} SmolLM2 held-out prompts (seed {seed})"
    from ..minivl.generator import TASKS, generate
    from ..minivl.models import image_size_of

    size = image_size_of(processor)
    names = tasks or TASKS
    drawn = [generate(task, "test", seed, samples, size) for task in names]
    prompts = [BenchPrompt(s.question, (s.image,), s.answer) for group in zip(*drawn) for s in group]
    return prompts, f"{len(prompts)} MiniVL test prompts of {','.join(names)} (seed {seed})"


def batches_of(prompts: list[BenchPrompt], processor, size: int) -> list[dict]:
    """The prompts' processor outputs, `size` at a time (left-padded)."""
    from ..inference import chat_inputs

    groups = [prompts[i: i + size] for i in range(0, len(prompts), size)]
    return [chat_inputs(processor, [p.prompt for p in g], [list(p.images) for p in g]) for g in groups]


def scores(prompts: list[BenchPrompt], texts: list[str], ar_texts: list[str] | None) -> float | None:
    """Accuracy in % of `texts`, the answers to `prompts`: by each prompt's metric against its reference, or
    where it has none, exact match with the AR source's answer (None when there is no AR row to compare with)."""
    from ..evaluation.metrics import score

    if any(p.truth is None for p in prompts) and ar_texts is None:
        return None
    values = [score(p.metric, text, p.truth if p.truth is not None else ar, p.choices)
              for p, text, ar in zip(prompts, texts, ar_texts or texts)]
    return 100 * sum(values) / len(values)


def comma_separated(kind):
    """An argparse type: comma-separated values of `kind`, e.g. --batch-sizes 1,8."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def tasks_option(text: str | None) -> tuple[tuple[str, ...] | None, str | None]:
    """`--tasks`: (MiniVL task names, None) for `minivl:a,b` (the prefix names the benchmark), or (None, FILE) for
    a JSONL file of questions."""
    from ..evaluation.tasks import is_task_file

    if text is None:
        return None, None
    if is_task_file(text):
        return None, text
    return tuple(name.strip() for name in text.removeprefix("minivl:").split(",") if name.strip()) or None, None
