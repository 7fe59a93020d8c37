"""`diffusionvl recipe smollm2 --out DIR`: SmolLM2-135M-Instruct translated into a block-diffusion chat model.

The translated model learns to write what its source writes (self-distillation): the AR model answers a set of
generated instructions greedily, and the block-diffusion finetune (LoRA, the mask row trained) learns from
those answers. Stages, each skipped when its output is complete, so a killed run continues where it stopped:

1. data: `prompts.generate` for train and test (disjoint by construction), answered by the AR model in batches
   (OUT/data/answers.jsonl grows batch by batch), then train.json (LLaVA-style text conversations; answers cut
   off by `max_new_tokens` are left out) and test.json;
2. translate: `diffusionvl convert --logit-shift` of the base (OUT/init-dlm);
3. finetune: `diffusionvl train --stage diffusion --lora-rank R`, resumable from its checkpoints; at every
   checkpoint the token F1 of the model's answers against the AR's on `curve_prompts` held-out prompts goes to
   OUT/curve.jsonl (the curve against training tokens);
4. adapter: the last checkpoint's LoRA tensors and mask row as OUT/smollm2-dlm (the shipped format, adapters.py);
5. evaluation (evaluate.py): the adapter rebuilt on the base, as users get it, against the AR on the test prompts
   -> OUT/results.md and results.json.
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class RecipeConfig:
    """Every choice of the study. The defaults are the full run; `quick` is a dry run in seconds."""

    out: str
    base: str = "smollm2"  # a model name or an AR checkpoint folder with its tokenizer
    train_prompts: int = 2400
    test_prompts: int = 200
    max_new_tokens: int = 96  # answers of the data and of every evaluated decoder
    answer_batch: int = 32
    block_size: int = 4
    logit_shift: bool = True
    lora_rank: int = 16
    lora_targets: str = LORA_TARGETS
    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 3e-4
    warmup_steps: int = 30
    save_steps: int = 100  # a checkpoint, and a point of the F1 curve
    curve_prompts: int = 48
    eval_batch_size: int = 16
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    seed: int = 0
    bf16: str = "auto"  # bf16 autocast in training (weights stay fp32): where native (training.config.native_bf16)
    # what keeps the source (DiffusionVLConfig.context_attention, TrainingConfig's source terms); the defaults are
    # the study as shipped, each an ablation step otherwise
    context_attention: str = "block_causal"
    ar_loss_weight: float = 0.0
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    confidence_weight: float = 0.0
    lora_scope: str = "all"  # "noisy": draft-only adapters (modeling/lora.py); the causal mode is then the source
    noise_pattern: str = "independent"  # "suffix": the known tokens of a block a prefix (DiffusionVLConfig)

    def __post_init__(self):
        for name in ("train_prompts", "test_prompts", "max_new_tokens", "answer_batch", "block_size", "lora_rank",
                     "steps", "batch_size", "save_steps", "curve_prompts", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")

    @classmethod
    def quick(cls, out: str) -> "RecipeConfig":
        """Every stage on a handful of prompts and steps (for tests and a dry run)."""
        return cls(out, train_prompts=12, test_prompts=6, max_new_tokens=12, answer_batch=6, lora_rank=2,
                   steps=2, batch_size=2, warmup_steps=0, save_steps=1, curve_prompts=2, eval_batch_size=6,
                   thresholds=(0.9,))


# ---------------------------------------------------------------- data


def _chat(prompt) -> list[dict]:
    return [dict(message) for message in prompt.messages]


def _answered(path: Path) -> dict:
    """(split, index) -> record of every answer already written (a killed run keeps its finished batches; a line
    it left half-written is dropped from the file, so appending goes on from a clean end)."""
    if not path.is_file():
        return {}
    records, lines = [], path.read_text().splitlines()
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if len(records) < len(lines):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {(r["split"], r["index"]): r for r in records}


def answer_prompts(config: RecipeConfig, model, tokenizer, path: Path, todo: list) -> None:
    """Append the AR model's greedy answer to each (split, index, prompt) of `todo`, a batch at a time."""
    from tqdm.auto import tqdm

    from ..decoding.config import DecodingConfig
    from ..inference import answer, chat_inputs, end_of_turn

    decoding = DecodingConfig(max_new_tokens=config.max_new_tokens)
    eot = end_of_turn(tokenizer)
    batches = range(0, len(todo), config.answer_batch)
    with path.open("a") as handle:
        for start in tqdm(batches, desc="AR answers", unit="batch", disable=None):
            batch = todo[start: start + config.answer_batch]
            out = answer(model, tokenizer, chat_inputs(tokenizer, [_chat(p) for _, _, p in batch]), decoding)
            for (split, index, prompt), text, row in zip(batch, out.texts, out.rows):
                record = {"split": split, "index": index, "kind": prompt.kind, "messages": _chat(prompt),
                          "answer": text, "ids": row, "finished": bool(row) and row[-1] == eot}
                handle.write(json.dumps(record) + "\n")
            handle.flush()


def make_data(config: RecipeConfig, out: Path) -> None:
    """OUT/data: answers.jsonl (every prompt with the AR's answer), train.json and test.json."""
    from ..loading import load_autoregressive, load_processor
    from .prompts import generate

    data = out / "data"
    if (data / "test.json").is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    prompts = [("train", i, p) for i, p in enumerate(generate("train", config.seed, config.train_prompts))]
    prompts += [("test", i, p) for i, p in enumerate(generate("test", config.seed, config.test_prompts))]
    done = _answered(data / "answers.jsonl")
    todo = [item for item in prompts if item[:2] not in done]
    if todo:
        model = load_autoregressive(config.base).eval()
        answer_prompts(config, model, load_processor(config.base, autoregressive=True), data / "answers.jsonl", todo)
    done = _answered(data / "answers.jsonl")
    for split in ("train", "test"):
        records = [done[(s, i)] for s, i, _ in prompts if s == split]
        if split == "train":
            records = [r for r in records if r["finished"]]  # a cut-off answer would teach stopping mid-sentence
        llava = [{"id": f"{split}-{r['index']}", "kind": r["kind"], "conversations": [
            {"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in r["messages"]]
            + [{"from": "gpt", "value": r["answer"]}]} for r in records]
        temporary = data / f"{split}.json.tmp"
        temporary.write_text(json.dumps(llava, indent=1) + "\n")
        os.replace(temporary, data / f"{split}.json")


def test_records(out: Path) -> list[dict]:
    """The held-out prompts with the AR's answers, in order (from answers.jsonl: messages, answer, ids)."""
    return sorted((r for r in _answered(out / "data" / "answers.jsonl").values() if r["split"] == "test"),
                  key=lambda r: r["index"])


# ---------------------------------------------------------------- translation and finetune


def translated(config: RecipeConfig, out: Path) -> Path:
    from ..training.convert import convert

    init = out / "init-dlm"
    if not (init / "config.json").is_file():
        convert(config.base, init, block_size=config.block_size, logit_shift=config.logit_shift,
                context_attention=config.context_attention)
    return init


def finetune(config: RecipeConfig, out: Path, init: Path) -> Path:
    """`diffusionvl train` with LoRA, resumed when interrupted; returns its last checkpoint."""
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from ..training.config import TrainingConfig
    from ..training.train import train
    from .evaluate import CurveCallback

    run = out / "runs" / "smollm2-dlm"
    last = get_last_checkpoint(str(run)) if run.is_dir() else None
    if last is not None and last.endswith(f"-{config.steps}"):
        return Path(last)
    curve = CurveCallback(config, out, test_records(out)[: config.curve_prompts], AutoTokenizer.from_pretrained(init))
    train(TrainingConfig(
        data=str(out / "data" / "train.json"), model=str(init), output_dir=str(run), stage="diffusion",
        lora_rank=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_targets=config.lora_targets,
        lora_scope=config.lora_scope, learning_rate=config.learning_rate, batch_size=config.batch_size,
        max_steps=config.steps, warmup_steps=config.warmup_steps, lr_schedule="cosine", save_steps=config.save_steps,
        save_total_limit=2, logging_steps=max(1, min(10, config.steps // 10)), seed=config.seed, bf16=config.bf16,
        ar_loss_weight=config.ar_loss_weight, distill_weight=config.distill_weight,
        distill_temperature=config.distill_temperature, confidence_weight=config.confidence_weight,
        noise_pattern=config.noise_pattern,
        resume=last is not None), callbacks=[curve])
    return Path(get_last_checkpoint(str(run)))


def make_adapter(config: RecipeConfig, out: Path, checkpoint: Path) -> Path:
    """OUT/smollm2-dlm: the checkpoint's LoRA tensors and mask row, on top of `config.base`."""
    from ..loading import load_model, load_processor
    from ..training.adapters import is_adapter_folder, save_adapter

    folder = out / "smollm2-dlm"
    if not is_adapter_folder(folder):
        model = load_model(checkpoint)  # its config records the LoRA layers, so they are rebuilt and loaded
        save_adapter(model, load_processor(checkpoint), folder, config.base, [model.special_tokens.mask])
    return folder


# ---------------------------------------------------------------- the whole study


def run(config: RecipeConfig) -> dict:
    from .evaluate import evaluate_adapter, markdown

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    make_data(config, out)
    checkpoint = finetune(config, out, translated(config, out))
    adapter = make_adapter(config, out, checkpoint)
    results = evaluate_adapter(config, out, adapter, test_records(out))
    results["config"] = asdict(config)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    return results


OVERRIDES = ("train_prompts", "test_prompts", "steps", "batch_size", "save_steps", "block_size", "lora_rank")


SOURCE_TERMS = ("ar_loss_weight", "distill_weight", "distill_temperature", "confidence_weight")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="everything goes here; rerun with the same --out to resume")
    parser.add_argument("--quick", action="store_true", help="a few prompts and steps: a dry run of every stage")
    parser.add_argument("--base", help="the AR model to translate (default: smollm2)")
    for name in OVERRIDES:
        parser.add_argument("--" + name.replace("_", "-"), type=int, help=f"override the recipe's {name}")
    parser.add_argument("--learning-rate", type=float, help="override the recipe's learning rate")
    parser.add_argument("--context-attention", choices=["block_causal", "causal"],
                        help="how clean tokens attend in the translation (default: block_causal)")
    for name in SOURCE_TERMS:
        parser.add_argument("--" + name.replace("_", "-"), type=float, help=f"the finetune's {name} (default 0)")
    parser.add_argument("--lora-scope", choices=["all", "noisy"],
                        help="which tokens the adapters act on; noisy: draft-only, the causal mode stays the source "
                        "(default: all)")
    parser.add_argument("--noise-pattern", choices=["independent", "suffix"],
                        help="which positions of a block the noise masks; suffix: always the last ones, as "
                        "speculative drafting sees them (default: independent)")


def config_from(args: argparse.Namespace) -> RecipeConfig:
    """The study's config as the command line sets it: the full run or `--quick`, with any overrides."""
    config = RecipeConfig.quick(args.out) if args.quick else RecipeConfig(args.out)
    overrides = {name: getattr(args, name) for name in (*OVERRIDES, *SOURCE_TERMS, "base", "learning_rate",
                                                       "context_attention", "lora_scope", "noise_pattern")
                 if getattr(args, name) is not None}
    return replace(config, **overrides)


def main(args: argparse.Namespace) -> None:
    from .evaluate import markdown

    results = run(config_from(args))
    print(markdown(results))
    print(f"results: {Path(args.out) / 'results.md'} and results.json")
