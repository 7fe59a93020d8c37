"""`diffusionvl eval`: exact match (and caption token F1) of a saved model on MiniVL's test split.

    diffusionvl eval --model DIR --tasks minivl:caption,count --samples 200 --batch-size 8 [--json]

`--tasks` is `minivl` (every task) or `minivl:` followed by a comma-separated list of caption, count, digits,
chart. Each task draws `--samples` test samples with `minivl.generator.generate(task, "test", seed, N)`; any seed
gives a fresh test split of the same distribution. Each prompt is the processor's chat template over one user turn,
the image then the question, with the generation prompt; answers are decoded without special tokens and
stripped, then scored by `metrics.exact_match` (and `metrics.token_f1` for captions).

DIR is either a DiffusionVL checkpoint (block decoding with the `--max-new-tokens`, `--steps`, `--strategy` and
`--threshold` of `diffusionvl generate`, greedy, batches left-padded by the processor) or an autoregressive
Qwen2.5-VL checkpoint (config.json model_type "qwen2_5_vl" with a DiffusionVLProcessor beside it: transformers'
greedy `generate` on the batch, cut at `<|im_end|>`; one forward per generated token position, so NFE = prefill +
new tokens - 1 per batch).

Output: a Markdown table (task, samples, exact match, token F1 for caption) and a footer, or with `--json` one
JSON object with these keys:

- `mean_exact_match`: mean over tasks of their exact match, a fraction in [0, 1]
- `tasks`: {task: {"exact_match": fraction, "samples": int, "token_f1": fraction (caption only)}}
- `tokens_per_forward`: new tokens (each answer's end-of-turn token included) per model forward, over every
  batch; a forward serves the whole batch, so it grows with `--batch-size`
- `nfe`: model forwards in total (every batch of every task)
- `tokens_per_s`: new tokens per second of decoding
- `seconds`: wall time of decoding (preprocessing included, loading and sample drawing not)
- `model`: the `--model` argument as given
- `seed`: the `--seed` of the test samples
- `samples_per_task`: `--samples`

Only `tokens_per_s` and `seconds` depend on the machine; the rest is the same on every run.
"""

import argparse
import json
import time

from ..errors import CheckpointLayoutError, DiffusionVLError
from ..tokens import END_OF_TURN_TOKENS
from .metrics import exact_match, token_f1

END_OF_TURN = END_OF_TURN_TOKENS[0]  # Qwen's <|im_end|>, which MiniVL's tokenizer shares

SUITE = "minivl"
AR_TYPE = "qwen2_5_vl"


def parse_tasks(spec: str) -> list[str]:
    """'minivl' -> every MiniVL task; 'minivl:caption,count' -> those, in that order, without repeats."""
    from ..minivl.generator import TASKS

    suite, colon, names = spec.partition(":")
    if suite.strip() != SUITE:
        raise DiffusionVLError(f"unknown task suite {suite!r} in --tasks {spec!r}; use 'minivl' or "
                               f"'minivl:{','.join(TASKS)}'.")
    if not colon:
        return list(TASKS)
    tasks = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise DiffusionVLError(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'} in --tasks {spec!r}; "
                               f"MiniVL's tasks are {', '.join(TASKS)}.")
    return list(dict.fromkeys(tasks))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a DiffusionVL or Qwen2.5-VL checkpoint folder with its processor")
    parser.add_argument("--tasks", default=SUITE, help="'minivl' (every task) or 'minivl:caption,count,digits,chart'")
    parser.add_argument("--samples", type=int, default=200, help="test samples per task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test samples")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="each answer's length limit")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per block (DiffusionVL)")
    parser.add_argument("--strategy", default="low_confidence_static",
                        choices=["low_confidence_static", "low_confidence_dynamic", "threshold"],
                        help="unmasking policy (DiffusionVL)")
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the dynamic policies")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="weights' dtype; auto keeps the checkpoint's")


def is_autoregressive(model) -> bool:
    return getattr(model.config, "model_type", None) == AR_TYPE


def load(path, dtype=None, device=None):
    """(model, processor) of a DiffusionVL checkpoint or an autoregressive Qwen2.5-VL one, in eval mode."""
    from pathlib import Path

    from ..loading import load_model, load_processor, read_config

    folder = Path(path)
    if read_config(folder).get("model_type") != AR_TYPE:
        processor, model = load_processor(folder), load_model(folder, dtype=dtype, device=device)
    else:
        from transformers import AutoModelForImageTextToText

        from ..processing import DiffusionVLProcessor

        try:
            processor = DiffusionVLProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as error:
            raise CheckpointLayoutError(f"the processor in {folder} cannot be loaded ({error}); save a "
                                        "DiffusionVLProcessor beside the model (processor.save_pretrained).") from error
        model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype)
        model = model.to(device) if device is not None else model
    if not hasattr(processor, "image_processor"):
        raise CheckpointLayoutError(f"{folder} holds no image processor (preprocessor_config.json); MiniVL needs a "
                                    "vision-language checkpoint.")
    return model.eval(), processor


def prompt_text(processor, question: str) -> str:
    return processor.chat_text([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                               add_generation_prompt=True)


def answer_batch(model, processor, images, questions, config) -> tuple[list[str], int, int]:
    """Greedy answers to one batch: (stripped texts, model forwards, new tokens incl. each end-of-turn)."""
    import torch

    tokenizer = processor.tokenizer
    inputs = processor([prompt_text(processor, q) for q in questions], images, padding_side="left")
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    with torch.inference_mode():
        if is_autoregressive(model):
            eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
            if eot is None or eot == tokenizer.unk_token_id:
                raise CheckpointLayoutError(f"the tokenizer has no {END_OF_TURN} token to end an answer.")
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
            out = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False,
                                 eos_token_id=eot, pad_token_id=pad)
            new = out[:, inputs["input_ids"].shape[1]:].tolist()
            rows = [row[: row.index(eot) + 1] if eot in row else row for row in new]
            nfe = len(new[0])  # the prefill gives the first token, each further position one forward
        else:
            out = model.generate(**inputs, generation_config=config, return_dict_in_generate=True)
            pad = model.special_tokens.pad
            rows = [[token for token in row if token != pad] for row in out.sequences.tolist()]
            nfe = out.nfe
    texts = [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
    return texts, int(nfe), sum(len(row) for row in rows)


def evaluate(model, processor, tasks, samples_per_task: int, seed: int, batch_size: int, config,
             model_name: str = "", progress: bool = True) -> dict:
    """The result object documented in the module docstring. The progress bar (stderr) shows only on a terminal."""
    from tqdm.auto import tqdm

    from ..minivl.generator import generate

    samples = {task: generate(task, "test", seed, samples_per_task) for task in tasks}
    batches = [(task, samples[task][i: i + batch_size]) for task in tasks
               for i in range(0, samples_per_task, batch_size)]
    predictions = {task: [] for task in tasks}
    nfe = new_tokens = 0
    seconds = 0.0
    for task, batch in tqdm(batches, desc="eval", unit="batch", disable=not progress or None):
        start = time.perf_counter()
        texts, forwards, tokens = answer_batch(model, processor, [s.image for s in batch],
                                               [s.question for s in batch], config)
        seconds += time.perf_counter() - start
        predictions[task] += texts
        nfe, new_tokens = nfe + forwards, new_tokens + tokens
    scores = {}
    for task in tasks:
        pairs = list(zip(predictions[task], (s.answer for s in samples[task])))
        scores[task] = {"exact_match": sum(exact_match(p, t) for p, t in pairs) / len(pairs),
                        "samples": len(pairs)}
        if task == "caption":
            scores[task]["token_f1"] = sum(token_f1(p, t) for p, t in pairs) / len(pairs)
    return {
        "mean_exact_match": sum(s["exact_match"] for s in scores.values()) / len(scores),
        "tasks": scores,
        "tokens_per_forward": new_tokens / max(nfe, 1),
        "nfe": nfe,
        "tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "model": model_name,
        "seed": seed,
        "samples_per_task": samples_per_task,
    }


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
    import torch

    from ..cli import torch_dtype
    from ..generation_config import DecodingConfig

    tasks = parse_tasks(args.tasks)  # every option is checked before any weight is read
    for name in ("samples", "batch_size"):
        value = getattr(args, name)
        if value <= 0:
            raise DiffusionVLError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
    config = DecodingConfig(max_new_tokens=args.max_new_tokens, steps=args.steps, remasking_strategy=args.strategy,
                            confidence_threshold=args.threshold, temperature=0.0)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load(args.model, dtype=torch_dtype(args.dtype), device=device)
    result = evaluate(model, processor, tasks, args.samples, args.seed, args.batch_size, config,
                      model_name=str(args.model))
    print(json.dumps(result) if args.json else markdown(result))
