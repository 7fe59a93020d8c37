"""`diffusionvl lossless`: speculative decoding checked token for token against its verifier's greedy decode, on
many prompts, one at a time and in batches, with end-of-turn, the length limit and stop strings ending rows.

    diffusionvl lossless [--model minivl-dvlm] [--verifier minivl-ar] [--samples 40] [--batch-sizes 1,8]
                         [--stop-string " row"] [--max-new-tokens 64] [--json FILE]

The prompts are the bench's (benchmarks/prompt_sets.py: MiniVL tasks round-robin, so a batch mixes prompt
lengths; SmolLM2's held-out prompts for a text model; or `--tasks FILE.jsonl`). The reference is the verifier's
greedy decode, made without the engine: with `--verifier`, transformers' `generate` of that AR model; else, for a
text model, `generate` of the causal mode (`inference.causal_model`: the wrapped base, for draft-only adapters the
source itself) with its own KV cache, and for a vision-language model the no-cache causal decode
(decoding.reference.reference_causal_decode). Either never writes the mask (nor a pad of its own), as the engine
never does. It runs without
stop strings and is cut here, by the definition rather than by the engine's rule: after the first end-of-turn,
at `--max-new-tokens`, then after the shortest prefix whose text holds a stop string.

Output: per batch size, the rows identical to the reference, and mean tokens per forward and per verification;
how the reference rows ended (stop, length, stop_string), so a reader sees that every ending was exercised.
With --json, one object: {"model", "verifier", "prompts", "described", "stop_strings", "endings", "batches":
[{batch_size, identical, tokens_per_forward, mean_accepted, accepted_at_least}], "lossless": bool};
accepted_at_least[i - 1] is the share of verifications that decided at least i tokens (acceptance by position;
the same at every batch size, as the answers are).
"""

import argparse
import json
import statistics
from collections.abc import Iterable

import torch

from ..decoding.config import DecodingConfig


def reference_rows(model, processor, batches: Iterable[dict], max_new_tokens: int,
                   verifier=None) -> list[list[int]]:
    """The verifier's greedy answers (token rows, end-of-turn kept) to batches of one prompt each, untimed: the
    separate `verifier`'s (an AR model), else `model`'s causal mode."""
    from ..decoding.reference import reference_causal_decode
    from ..inference import answer, causal_model
    from ..model import vision_inputs
    from .prompt_sets import is_text_model

    if verifier is not None:
        return [row for inputs in batches for row in generate_rows(verifier, model.special_tokens, inputs,
                                                                  max_new_tokens)]
    if is_text_model(processor):
        verifier, config = causal_model(model), DecodingConfig(max_new_tokens=max_new_tokens)
        return [row for inputs in batches for row in answer(verifier, processor, inputs, config).rows]
    device, rows = next(model.parameters()).device, []
    for inputs in batches:
        inputs = {key: value.to(device) for key, value in inputs.items()}
        vision = vision_inputs(inputs.get("pixel_values"), inputs.get("image_grid_thw"))
        ids = inputs["input_ids"]
        with torch.no_grad():
            out = reference_causal_decode(model, ids, torch.ones_like(ids, dtype=torch.bool), vision, max_new_tokens)
        rows += out.rows
    return rows


def generate_rows(ar, tokens, inputs: dict, max_new_tokens: int) -> list[list[int]]:
    """Transformers' greedy `generate` of an AR model (its own KV cache), never writing `tokens.never_generated`;
    rows cut after the first end-of-turn."""
    device = next(ar.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    with torch.no_grad():
        out = ar.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokens.eot,
                          pad_token_id=tokens.pad, suppress_tokens=list(tokens.never_generated))
    rows = out[:, inputs["input_ids"].shape[1]:].tolist()
    return [row[: row.index(tokens.eot) + 1] if tokens.eot in row else row for row in rows]


def cut_at_stop_strings(row: list[int], stops: tuple[str, ...], tokenizer) -> tuple[list[int], bool]:
    """`row` cut after its shortest prefix whose decoded text holds one of `stops`; and whether it was cut."""
    for end in range(1, len(row) + 1):
        text = tokenizer.decode(row[:end])
        if any(stop in text for stop in stops):
            return row[:end], True
    return row, False


def ending(row: list[int], eot: int, stopped: bool) -> str:
    return "stop_string" if stopped else "stop" if row and row[-1] == eot else "length"


def check(model, processor, prompts, batch_sizes, stops: tuple[str, ...], max_new_tokens: int,
          progress: bool = True, verifier=None) -> dict:
    """The result documented in the module docstring (without model and described)."""
    from tqdm.auto import tqdm

    from ..inference import answer
    from .prompt_sets import batches_of

    def bar(batches: list, what: str):
        return tqdm(batches, desc=what, disable=not progress or None)

    tokenizer = getattr(processor, "tokenizer", processor)
    expected, endings = [], {"stop": 0, "length": 0, "stop_string": 0}
    reference = bar(batches_of(prompts, processor, 1), "the verifier's greedy decode")
    for row in reference_rows(model, processor, reference, max_new_tokens, verifier):
        row, stopped = cut_at_stop_strings(row, stops, tokenizer) if stops else (row, False)
        expected.append(row)
        endings[ending(row, model.special_tokens.eot, stopped)] += 1
    config = DecodingConfig(max_new_tokens=max_new_tokens, remasking_strategy="speculative", stop_strings=stops)
    report = []
    for size in batch_sizes:
        rows, tokens, forwards, accepted = [], 0, 0, []
        for inputs in bar(batches_of(prompts, processor, size), f"speculative, batch {size}"):
            out = answer(model, processor, inputs, config, verifier=verifier)
            rows, tokens, forwards, accepted = rows + out.rows, tokens + out.tokens, forwards + out.row_forwards, \
                accepted + out.accepted
        report.append({"batch_size": size, "identical": sum(a == b for a, b in zip(rows, expected)),
                       "tokens_per_forward": tokens / max(forwards, 1),
                       "mean_accepted": statistics.mean(accepted) if accepted else None,
                       "accepted_at_least": at_least(accepted, model.block_size + 1)})
    return {"prompts": len(prompts), "stop_strings": list(stops), "endings": endings, "batches": report,
            "lossless": all(b["identical"] == len(prompts) for b in report)}


def at_least(accepted: list[int], most: int) -> list[float]:
    """Acceptance by position: the share of verifications that decided at least i tokens, i = 1 .. `most`."""
    return [sum(count >= i for count in accepted) / max(len(accepted), 1) for i in range(1, most + 1)]


def markdown(result: dict) -> str:
    lines = [f"{result['model']}: speculative decoding against its verifier's ({result['verifier']}) greedy decode, "
             f"{result['described']}, "
             f"stop strings {result['stop_strings'] or 'none'}; the reference rows ended by "
             + ", ".join(f"{name} {count}" for name, count in result["endings"].items()), "",
             "| batch | identical | tokens/forward | tokens/verification |", "| ---: | ---: | ---: | ---: |"]
    for b in result["batches"]:
        accepted = "-" if b["mean_accepted"] is None else f"{b['mean_accepted']:.2f}"
        lines.append(f"| {b['batch_size']} | {b['identical']}/{result['prompts']} | {b['tokens_per_forward']:.2f} "
                     f"| {accepted} |")
    shares = result["batches"][0]["accepted_at_least"]
    lines += ["", "verifications deciding at least 1, 2, ... tokens: " + ", ".join(f"{100 * share:.0f}%"
                                                                             for share in shares)]
    lines += ["", "lossless: " + ("yes, every row" if result["lossless"] else "NO")]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .prompt_sets import comma_separated

    parser.add_argument("--model", default="minivl-dvlm", help="a causal-context translation (folder or name), "
                        "or with --verifier any translation with logit shift")
    parser.add_argument("--verifier", help="an AR model sharing the tokenizer (e.g. minivl-ar) that checks the "
                        "drafts (default: the model's own causal mode)")
    parser.add_argument("--samples", type=int, default=40, help="MiniVL samples per task; SmolLM2 held-out prompts "
                        "for a text model; the first lines of a --tasks file")
    parser.add_argument("--tasks", help="minivl:a,b or a JSONL file of questions (as for bench)")
    parser.add_argument("--batch-sizes", type=comma_separated(int), default=(1, 8), help="e.g. 1,8")
    parser.add_argument("--stop-string", dest="stop_strings", action="append", default=[],
                        help="text that ends a row (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit")
    parser.add_argument("--seed", type=int, default=1, help="seed of the MiniVL or SmolLM2 test prompts")
    parser.add_argument("--json", help="also write the result to this JSON file")


def main(args: argparse.Namespace) -> None:
    from ..decoding.speculative import check_self_verifier, check_verifier
    from ..errors import DiffusionVLError
    from ..inference import open_model, open_processor
    from .prompt_sets import check_tasks, prompt_set, tasks_option

    if args.samples < 1 or args.max_new_tokens < 1 or not args.batch_sizes or min(args.batch_sizes) < 1:
        raise DiffusionVLError("--samples, --max-new-tokens and every --batch-sizes value must be at least 1.")
    tasks, task_file = tasks_option(args.tasks)
    check_tasks(tasks)
    processor = open_processor(args.model)
    model = open_model(args.model, autoregressive=False)  # an AR checkpoint is refused with the way to convert it
    verifier = None if args.verifier is None else open_model(args.verifier)
    if verifier is None:
        check_self_verifier(model)
    else:
        check_verifier(model, model.as_verifier(verifier), DecodingConfig(remasking_strategy="speculative"))
    prompts, described = prompt_set(processor, args.samples, args.seed, tasks, task_file)
    result = {"model": args.model, "verifier": args.verifier or "its causal mode", "described": described,
              **check(model, processor, prompts, args.batch_sizes, tuple(args.stop_strings), args.max_new_tokens,
                      verifier=verifier)}
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
