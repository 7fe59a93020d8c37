"""`diffusionvl eval`: exact match (and token F1 of the long answers) of a saved model on MiniVL's test split.

    diffusionvl eval [--model DIR] --tasks minivl:caption,count --samples 200 --batch-size 8 [--log LOG] [--json]

A `--tasks` that names a JSONL file (a path ending .jsonl, or any other existing file) runs `evaluation.tasks`
instead: the user's own questions, with the metrics of the usual benchmarks.

`--tasks` is `minivl` (every task) or `minivl:` followed by a comma-separated list of caption, count, digits,
chart, scene. Each task draws `--samples` test samples with `minivl.generator.generate(task, "test", seed, N)`, at the
image size the model's processor was built for; any seed gives a fresh test split of the same distribution. Each
prompt is the processor's chat template over one user turn, the image then the question, with the generation
prompt; answers are decoded without special tokens and stripped, then scored by `evaluation.metrics.exact_match`
(and `evaluation.metrics.token_f1` for the long answers: caption and scene).

DIR (default: the shipped minivl-dvlm; minivl-ar names its AR source) is either a DiffusionVL checkpoint (block
decoding with the decoding flags of `diffusionvl generate`, batches left-padded by the processor) or an
autoregressive Qwen2.5-VL checkpoint with a DiffusionVLProcessor beside it (transformers' `generate` on the batch,
cut at `<|im_end|>`; one forward per generated token position, so NFE = prefill + new tokens - 1 per batch). Both
go through `inference.answer`, the path `generate`, `chat` and `demo` use.

Output: a Markdown table (task, samples, exact match, token F1 for caption and scene) and a footer, or with `--json` one
JSON object with these keys:

- `mean_exact_match`: mean over tasks of their exact match, a fraction in [0, 1]
- `tasks`: {task: {"exact_match": fraction, "samples": int, "tokens_per_forward": float (as below, this task's
  answers only), "token_f1": fraction (caption and scene only)}}
- `tokens_per_forward`: new tokens (each answer's end-of-turn token included) per forward of one row: the
  forwards each answer took part in (the prompt's prefill included), summed over answers. 1.0 for AR decoding;
  independent of `--batch-size`
- `tokens_per_decoding_forward`: the same without block decoding's prefill, the forward that only reads the
  prompt (an AR prefill yields the first token, so for AR it equals `tokens_per_forward`)
- `nfe`: model forwards in total (every batch of every task)
- `tokens_per_s`: new tokens per second of decoding
- `seconds`: wall time of decoding (preprocessing included, loading and sample drawing not)
- `model`: the `--model` argument as given
- `seed`: the `--seed` of the test samples
- `samples_per_task`: `--samples`

`--log FILE` writes one JSON object per sample, as `evaluation.tasks` does: `id`, `prompt` (the question),
`prediction`, `truth`, `metric` ("exact_match"), `score`, `token_f1` (caption and scene), `tokens`, `batch`, `nfe` (the
batch's forwards divided by its samples).

Only `tokens_per_s` and `seconds` depend on the machine; the rest is the same on every run.
"""

import argparse
import json
import time
from contextlib import nullcontext

from transformers import TrainerCallback

from ..errors import CheckpointLayoutError, DiffusionVLError
from ..evaluation.metrics import METRICS, exact_match, token_f1
from ..evaluation.tally import Tally
from ..evaluation.tasks import check_log, is_task_file, row_records
from ..evaluation.tasks import main as run_task_file

SUITE = "minivl"
F1_TASKS = ("caption", "scene")  # the long answers, where partly right is worth telling apart
DEFAULT_SAMPLES = 200


def parse_tasks(spec: str) -> list[str]:
    """'minivl' -> every MiniVL task; 'minivl:caption,count' -> those, in that order, without repeats."""
    from .generator import TASKS

    suite, colon, names = spec.partition(":")
    if suite.strip() != SUITE:
        raise DiffusionVLError(f"unknown task suite {suite!r} in --tasks {spec!r}; use 'minivl', "
                               f"'minivl:{','.join(TASKS)}' or a JSONL file of questions (FILE.jsonl).")
    if not colon:
        return list(TASKS)
    tasks = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise DiffusionVLError(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'} in --tasks {spec!r}; "
                               f"MiniVL's tasks are {', '.join(TASKS)}.")
    return list(dict.fromkeys(tasks))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..checkpoints.folders import DEFAULT_MODEL
    from ..cli import add_decoding_arguments, add_verifier_argument

    parser.add_argument("--model", default=DEFAULT_MODEL, help="a DiffusionVL or Qwen2.5-VL checkpoint folder with its "
                        "processor, or a shipped model: minivl-dvlm, minivl-ar; a JSONL file without images also "
                        "takes a text model (smollm2, smollm2-dlm, a text checkpoint)")
    parser.add_argument("--tasks", default=SUITE, help="'minivl' (every task), 'minivl:caption,count,scene', "
                        "or a JSONL file of questions (FILE.jsonl: question, answer, image/images, choices, metric, id)")
    parser.add_argument("--samples", type=int, help=f"test samples per MiniVL task (None: {DEFAULT_SAMPLES}), or "
                        "the first N questions of a JSONL file (None: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MiniVL test samples")
    parser.add_argument("--metric", choices=list(METRICS), help="a JSONL file's metric where a line names none "
                        "(None: multiple_choice with choices, else exact_match)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--log", metavar="FILE", help="write one JSON line per sample (prompt, prediction, truth, "
                        "score, tokens, nfe)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_decoding_arguments(parser)
    add_verifier_argument(parser)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="weights' dtype; auto keeps the checkpoint's")


def load(path, dtype=None, device=None):
    """(model, processor) of a DiffusionVL checkpoint or an autoregressive Qwen2.5-VL one, in eval mode."""
    from ..inference import load as load_any

    model, processor = load_any(path, dtype=dtype, device=device)
    if not hasattr(processor, "image_processor"):
        raise CheckpointLayoutError(f"{path} holds no image processor (preprocessor_config.json); MiniVL needs a "
                                    "vision-language checkpoint.")
    return model, processor


def evaluate(model, processor, tasks, samples_per_task: int, seed: int, batch_size: int, config,
             model_name: str = "", progress: bool = True, log=None, verifier=None) -> dict:
    """The result object documented in the module docstring; with `log` (an open text file) one line per sample.
    The progress bar (stderr) shows only on a terminal. `verifier`: checks speculative drafts (--verifier)."""
    from tqdm.auto import tqdm

    from ..inference import answer, chat_inputs
    from .generator import generate
    from .models import image_size_of

    size = image_size_of(processor)  # drawn at the size the model was trained on (others are resized)
    samples = {task: generate(task, "test", seed, samples_per_task, size) for task in tasks}
    batches = [(task, samples[task][i: i + batch_size]) for task in tasks
               for i in range(0, samples_per_task, batch_size)]
    predictions, tally = {task: [] for task in tasks}, Tally()
    per_task = {task: Tally() for task in tasks}
    for index, (task, batch) in enumerate(tqdm(batches, desc="eval", unit="batch", disable=not progress or None)):
        start = time.perf_counter()  # preprocessing counts: a user waits for it too
        inputs = chat_inputs(processor, [s.question for s in batch], [[s.image] for s in batch])
        out = answer(model, processor, inputs, config, verifier=verifier)
        tally.add(out, time.perf_counter() - start)
        per_task[task].add(out, time.perf_counter() - start)
        predictions[task] += out.texts
        if log is not None:
            for sample, prediction, row in zip(batch, out.texts, row_records(out, index)):
                log.write(json.dumps(log_record(sample, prediction, row)) + "\n")
    scores = {}
    for task in tasks:
        pairs = list(zip(predictions[task], (s.answer for s in samples[task])))
        scores[task] = {"exact_match": sum(exact_match(p, t) for p, t in pairs) / len(pairs),
                        "samples": len(pairs), "tokens_per_forward": per_task[task].speed()["tokens_per_forward"]}
        if task in F1_TASKS:
            scores[task]["token_f1"] = sum(token_f1(p, t) for p, t in pairs) / len(pairs)
    return {
        "mean_exact_match": sum(s["exact_match"] for s in scores.values()) / len(scores),
        "tasks": scores,
        **tally.speed(),
        "model": model_name,
        "seed": seed,
        "samples_per_task": samples_per_task,
    }


class CurveCallback(TrainerCallback):
    """At every checkpoint of a translation: exact match (static decoding) on `samples` test samples per task (seed
    1), appended to `path` with the training tokens seen so far (steps x batch x `tokens_per_sample`)."""

    def __init__(self, path, processor, tasks, samples: int, block_size: int, tokens_per_sample: float):
        self.path, self.processor, self.tasks, self.samples = path, processor, tasks, samples
        self.block_size, self.length = block_size, tokens_per_sample

    def on_save(self, args, state, control, model=None, **kwargs):
        from ..decoding.config import DecodingConfig

        if not args.should_save or model is None:
            return
        decoding = DecodingConfig(max_new_tokens=64, steps=self.block_size)
        result = evaluate(model, self.processor, self.tasks, self.samples, 1, 50, decoding, progress=False)
        seen = state.global_step * args.per_device_train_batch_size * args.world_size
        entry = {"step": state.global_step, "training_tokens": round(seen * self.length),
                 "mean_exact_match": result["mean_exact_match"],
                 **{f"{task}_exact_match": score["exact_match"] for task, score in result["tasks"].items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


def log_record(sample, prediction: str, row: dict) -> dict:
    """One --log line: the fields of `evaluation.tasks`' log, plus token_f1 for a long answer."""
    record = {"id": sample.id, "prompt": sample.question, "prediction": prediction, "truth": sample.answer,
              "metric": "exact_match", "score": exact_match(prediction, sample.answer)}
    if sample.task in F1_TASKS:
        record["token_f1"] = token_f1(prediction, sample.answer)
    return {**record, **row}


def markdown(result: dict) -> str:
    lines = ["| task | samples | exact match | token F1 |", "| --- | ---: | ---: | ---: |"]
    for task, score in result["tasks"].items():
        f1 = f"{100 * score['token_f1']:.1f}%" if "token_f1" in score else "-"
        lines.append(f"| {task} | {score['samples']} | {100 * score['exact_match']:.1f}% | {f1} |")
    footer = (f"mean exact match {100 * result['mean_exact_match']:.1f}% | "
              f"{result['tokens_per_forward']:.2f} tokens/forward | NFE {result['nfe']} | "
              f"{result['tokens_per_s']:.1f} tokens/s | {result['seconds']:.1f} s")
    lines += ["", footer]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """`diffusionvl eval`: a JSONL file's questions (`evaluation.tasks.main`) or MiniVL's test split."""
    import torch

    from ..cli import decoding_config, open_verifier, torch_dtype

    if is_task_file(args.tasks):
        return run_task_file(args)
    tasks = parse_tasks(args.tasks)  # every option is checked before any weight is read
    if args.metric is not None:
        raise DiffusionVLError("--metric applies to a JSONL task file; MiniVL scores exact match (and token F1 "
                               "for caption and scene).")
    args.samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    for name in ("samples", "batch_size"):
        value = getattr(args, name)
        if value <= 0:
            raise DiffusionVLError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
    check_log(args.log)
    config = decoding_config(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load(args.model, dtype=torch_dtype(args.dtype), device=device)
    verifier = open_verifier(args, torch_dtype(args.dtype), device)
    with open(args.log, "w", encoding="utf-8") if args.log else nullcontext() as log:
        result = evaluate(model, processor, tasks, args.samples, args.seed, args.batch_size, config,
                          model_name=str(args.model), log=log, verifier=verifier)
    print(json.dumps(result) if args.json else markdown(result))
