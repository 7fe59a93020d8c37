"""`diffusionvl recipe minivl --out DIR`: the paper in miniature (SPEC §5), end to end, resumable.

Stages, each skipped when its output in OUT is complete, so a killed recipe continues where it stopped (a
training stage resumes from its last checkpoint):

1. data: N MiniVL training samples (the five tasks in equal shares) as LLaVA JSON + PNG files in OUT/data, and
   the first `translate_fraction` of them as OUT/data/translate.json; the MiniVL tokenizer, trained on their text.
2. source: a randomly initialised MiniVL Qwen2.5-VL trained with the next-token loss on all N -> OUT/minivl-ar.
3. translation: minivl-ar wrapped by `DiffusionVL.from_autoregressive` and trained with the block-diffusion loss
   on the translate samples only (epochs over them), its vision tower frozen -> OUT/minivl-dvlm.
4. baseline: the same random initialisation, wrapped the same way, trained with the block-diffusion loss on all N
   with at least the source's compute -> OUT/baseline-dvlm.
5. evaluation of the three on the test split (`minivl.evaluate.evaluate`), the dVLM also over the dynamic and
   threshold policies -> OUT/eval/*.json, then OUT/results.json and OUT/results.md.

Compute is counted in token positions through the model per step (batch x mean sequence length; the diffusion
loss runs a clean and a noisy stream, so twice the aligned length), which is what the FLOPs scale with.
Every stage runs `diffusionvl train` (train.py) on the files of stage 1, so the recipe is also its test.
"""

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from .evaluate import F1_TASKS
from .generator import TASKS
from .models import MiniVLSize

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
SOURCE_TERMS = ("ar_loss_weight", "distill_weight", "distill_temperature", "confidence_weight")
COST = "training_cost.json"  # what a stage's training cost, beside its final weights


@dataclass(frozen=True)
class RecipeConfig:
    """One MiniVL study. Defaults are the shipped models' recipe; `quick()` is the version the tests run."""

    out: str
    samples: int = 40_000  # N distinct training samples, all tasks in equal shares
    translate_fraction: float = 0.05  # share of the N the translation sees
    batch_size: int = 32
    ar_steps: int = 8000
    ar_learning_rate: float = 3e-4  # 1e-3 and above: the from-scratch model learns to ignore the image
    translate_steps: int = 1200  # 600: 75.0% mean, 1200: 76.9% (N = 40k, 200 per task, seed 1)
    translate_learning_rate: float = 1e-4  # with logit_shift; 3e-4 forgets more of the source (66 vs 70% at N=20k)
    logit_shift: bool = True  # the translation starts from the source's own next-token predictions
    baseline_steps: int | None = None  # None: the fewest steps with at least the source's compute
    warmup_steps: int = 100
    block_size: int = 8
    eval_samples: int = 400  # per task
    eval_seed: int = 1
    eval_batch_size: int = 50
    curve_samples: int = 20  # per task, at every checkpoint of the translation (OUT/curve.jsonl)
    thresholds: tuple[float, ...] = THRESHOLDS
    seed: int = 0
    size: MiniVLSize = field(default_factory=MiniVLSize)
    save_steps: int = 250
    bf16: str = "auto"  # bf16 autocast in training (weights stay fp32): where native (training.config.native_bf16)
    # what keeps the source in the translation (DiffusionVLConfig.context_attention, TrainingConfig's source
    # terms; the distillation teacher is a frozen copy of minivl-ar); each an ablation step, and the shipped
    # minivl-dvlm has them all (the ablation's step 5-confidence)
    context_attention: str = "causal"
    ar_loss_weight: float = 1.0
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    confidence_weight: float = 0.2

    def __post_init__(self):
        if self.samples < 5:
            raise ValueError(f"samples must be at least 5 (one per task), got {self.samples}.")
        if not 0 < self.translate_fraction <= 1:
            raise ValueError(f"translate_fraction must lie in (0, 1], got {self.translate_fraction}.")
        for name in ("batch_size", "ar_steps", "translate_steps", "eval_samples", "block_size", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")

    @classmethod
    def quick(cls, out: str) -> "RecipeConfig":
        """Every stage in a few seconds: a tiny model, a few samples and steps (for tests and a dry run)."""
        tiny = MiniVLSize(vision_depth=1, vision_hidden=32, vision_heads=2, hidden=64, layers=2, heads=4,
                          kv_heads=2, intermediate=128)
        return cls(out, samples=50, batch_size=4, ar_steps=4, translate_steps=3, warmup_steps=1, block_size=4,
                   eval_samples=2, eval_batch_size=4, thresholds=(0.9,), size=tiny, save_steps=2, curve_samples=1)


# ---------------------------------------------------------------- helpers


def _done(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _publish(staging: Path, final: Path) -> None:
    """Rename a completely written folder into place, so a kill never leaves half a stage's output."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


@lru_cache(maxsize=None)  # train.json is measured three times: source cost, baseline steps, baseline cost
def _mean_length(data: Path, most: int = 256) -> float:
    """Mean token count of (the first `most`, task-interleaved) samples of a LLaVA file, as training sees them."""
    from ..training.data import LlavaDataset, read_llava

    dataset = LlavaDataset(read_llava(data)[:most], _processor(data.parent), data.parent)
    return sum(len(dataset.example(i)["input_ids"]) for i in range(len(dataset))) / len(dataset)


def _processor(data: Path):
    from ..modeling.processing import DiffusionVLProcessor

    return DiffusionVLProcessor.from_pretrained(str(data / "processor"))


# ---------------------------------------------------------------- stages


def make_data(config: RecipeConfig, out: Path) -> None:
    """OUT/data: train.json, translate.json, images/, and processor/ (the MiniVL tokenizer + image processor)."""
    from tqdm.auto import tqdm

    from .generator import sample, vocabulary, write_llava
    from .models import build_processor, build_tokenizer

    data = out / "data"
    if (data / "translate.json").is_file():
        return
    staging = out / ".data.staging"
    shutil.rmtree(staging, ignore_errors=True)
    per_task = math.ceil(config.samples / len(TASKS))
    samples = [sample(task, "train", config.seed, i, config.size.image_size)  # interleaved, as generate_mix
               for i in tqdm(range(per_task), desc="data", unit="sample/task", disable=None) for task in TASKS]
    samples = samples[: config.samples]
    tokenizer = build_tokenizer(vocabulary() + [s.question for s in samples] + [s.answer for s in samples])
    build_processor(tokenizer, config.size.image_size).save_pretrained(staging / "processor")
    write_llava(samples, staging, "train.json")
    subset = max(len(TASKS), round(config.translate_fraction * len(samples)))
    records = json.loads((staging / "train.json").read_text())[:subset]  # interleaved: every task in equal share
    (staging / "translate.json").write_text(json.dumps(records, indent=1) + "\n")
    _publish(staging, data)


def initial_model(config: RecipeConfig, out: Path) -> Path:
    """OUT/init: the randomly initialised source (seeded), shared by the AR source and the baseline."""
    from .models import build_model

    init = out / "init"
    if not _done(init):
        processor = _processor(out / "data")
        staging = out / ".init.staging"
        build_model(processor.tokenizer, config.size, config.seed).save_pretrained(staging)
        processor.save_pretrained(staging)
        _publish(staging, init)
    return init


def translated(config: RecipeConfig, src: Path, dst: Path, context_attention: str) -> Path:
    """`diffusionvl convert` of src (Qwen2.5-VL positions as the source was trained: 1-D, no vision wrapper)."""
    from ..training.convert import convert

    if not _done(dst):
        shutil.rmtree(dst, ignore_errors=True)
        convert(src, dst, block_size=config.block_size, logit_shift=config.logit_shift,
                context_attention=context_attention)
    return dst


def run_training(config: RecipeConfig, out: Path, name: str, model: Path, data: Path, stage: str, steps: int,
                 learning_rate: float, train_vision: bool = True, source_terms: bool = False,
                 callbacks: list | None = None) -> dict:
    """One `diffusionvl train` run in OUT/runs/NAME, resumed if it was interrupted, its last checkpoint saved
    as OUT/NAME (model + processor, no optimizer state); `source_terms`: with the config's terms that keep the
    source (the translation only). Returns what it cost."""
    from transformers.trainer_utils import get_last_checkpoint

    from ..loading import load_any, load_processor
    from ..training.config import TrainingConfig
    from ..training.train import train

    final, run = out / name, out / "runs" / name
    if _done(final):
        return json.loads((final / COST).read_text())
    resume = run.is_dir() and get_last_checkpoint(str(run)) is not None
    clock = run / "seconds.txt"  # wall time of training, summed over interrupted runs
    spent = float(clock.read_text()) if resume and clock.is_file() else 0.0
    start = time.perf_counter()
    train(TrainingConfig(
        data=str(data), image_folder=str(data.parent), model=str(model), output_dir=str(run), stage=stage,
        ar_loss="per_sample", train_vision=train_vision, learning_rate=learning_rate, batch_size=config.batch_size,
        max_steps=steps, warmup_steps=min(config.warmup_steps, steps // 10), lr_schedule="cosine",
        save_steps=config.save_steps, save_total_limit=2, logging_steps=max(1, min(50, steps // 10)),
        seed=config.seed, bf16=config.bf16, resume=resume,
        group_by_length=False,  # MiniVL's length is its task: grouping would give one-task batches
        **({name: getattr(config, name) for name in SOURCE_TERMS} if source_terms else {})), callbacks=callbacks)
    spent += time.perf_counter() - start
    clock.write_text(f"{spent:.1f}")
    records = len(json.loads(data.read_text()))
    length = _mean_length(data)
    if stage == "diffusion":  # rows are aligned to blocks, and the loss runs a clean and a noisy stream
        length = 2 * math.ceil(length / config.block_size) * config.block_size
    cost = {"model": name, "stage": stage, "distinct_samples": records, "steps": steps,
            "batch_size": config.batch_size, "epochs": round(steps * config.batch_size / records, 2),
            "token_positions": round(steps * config.batch_size * length), "train_seconds": round(spent, 1)}
    checkpoint = Path(get_last_checkpoint(str(run)))
    staging = out / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    load_any(checkpoint).save_pretrained(staging)
    load_processor(checkpoint, autoregressive=True).save_pretrained(staging)
    (staging / COST).write_text(json.dumps(cost, indent=1) + "\n")
    _publish(staging, final)
    return cost


def curve_callback(config: RecipeConfig, out: Path):
    """The translation's curve: exact match on `curve_samples` test samples per task at every checkpoint."""
    from .evaluate import CurveCallback

    data = out / "data"
    return CurveCallback(out / "curve.jsonl", _processor(data), TASKS, config.curve_samples, config.block_size,
                         _mean_length(data / "translate.json"))


def baseline_steps(config: RecipeConfig, out: Path) -> int:
    """The fewest steps at which the from-scratch diffusion baseline processes at least as many token positions as
    the AR source did (its default when `baseline_steps` is None)."""
    if config.baseline_steps is not None:
        return config.baseline_steps
    data = out / "data" / "train.json"
    length = _mean_length(data)
    aligned = 2 * math.ceil(length / config.block_size) * config.block_size
    return math.ceil(config.ar_steps * length / aligned)


# ---------------------------------------------------------------- evaluation


def settings(config: RecipeConfig) -> list[tuple[str, dict]]:
    """(name, DecodingConfig options) of every decoding the dVLM is evaluated with; the first is the reference."""
    from ..inference import has_causal_mode

    runs = [("static", {"steps": config.block_size, "remasking_strategy": "low_confidence_static"})]
    for policy in ("low_confidence_dynamic", "threshold"):
        runs += [(f"{policy.removeprefix('low_confidence_')}@{t}", {
            "steps": config.block_size, "remasking_strategy": policy, "confidence_threshold": t})
            for t in config.thresholds]
    if has_causal_mode(config.context_attention, config.logit_shift):  # it verifies its own drafts
        runs.append(("speculative", {"remasking_strategy": "speculative"}))
    return runs


def evaluate_model(config: RecipeConfig, out: Path, folder: Path, name: str, options: dict) -> dict:
    """`diffusionvl eval` of one model with one decoding, cached as OUT/eval/NAME.json."""
    from ..decoding.config import DecodingConfig
    from .evaluate import evaluate, load

    path = out / "eval" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, processor = load(folder)
    decoding = DecodingConfig(max_new_tokens=64, **options)
    result = evaluate(model, processor, TASKS, config.eval_samples, config.eval_seed, config.eval_batch_size,
                      decoding, model_name=name)
    result["decoding"] = options
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(result, indent=1) + "\n")
    os.replace(path.with_suffix(".tmp"), path)
    return result


def _row(label: str, result: dict, cost: dict | None) -> str:
    tasks = result["tasks"]
    cells = [label, cost["stage"] if cost else "-", str(cost["distinct_samples"]) if cost else "-",
             str(cost["steps"]) if cost else "-", f"{cost['token_positions'] / 1e6:.1f}M" if cost else "-",
             f"{cost['train_seconds'] / 60:.1f}" if cost else "-"]
    cells += [f"{100 * tasks[t]['exact_match']:.1f}" for t in TASKS]
    cells += [f"{100 * tasks[t]['token_f1']:.1f}" for t in F1_TASKS]
    cells += [f"**{100 * result['mean_exact_match']:.1f}**",
              f"{result['tokens_per_forward']:.2f}", f"{result['tokens_per_s']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def markdown(results: dict) -> str:
    """The results table (models) and the decoding curve of the dVLM (settings), as Markdown."""
    head = ("| model | loss | distinct samples | steps | token positions | train min | "
            + " | ".join(TASKS + tuple(f"{t} F1" for t in F1_TASKS)) + " | mean | tokens/forward | tokens/s |")
    lines = ["## MiniVL: AR source, its translation, and a diffusion model trained from scratch", "",
             f"Exact match (%) on {results['eval_samples']} test samples per task (seed {results['eval_seed']}); "
             "the diffusion models decode with one token per step (static, steps = block size "
             f"{results['block_size']}).", "", head, "|" + " --- |" * (9 + len(TASKS) + len(F1_TASKS))]
    for key, label in (("ar", "minivl-ar (AR source)"), ("dvlm", "minivl-dvlm (translated)"),
                       ("baseline", "baseline-dvlm (from scratch)")):
        lines.append(_row(label, results["models"][key], results["costs"][key]))
    lines += ["", "## minivl-dvlm: accuracy against tokens per forward", "",
              "| decoding | mean exact match | drop vs static (points) | tokens/forward | tokens/decoding forward "
              "| NFE | tokens/s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    static = results["curve"][0]["mean_exact_match"]
    for entry in results["curve"]:
        lines.append(f"| {entry['name']} | {100 * entry['mean_exact_match']:.1f} | "
                     f"{100 * (static - entry['mean_exact_match']):.1f} | {entry['tokens_per_forward']:.2f} | "
                     f"{entry['tokens_per_decoding_forward']:.2f} | {entry['nfe']} | {entry['tokens_per_s']:.0f} |")
    lines += ["", f"Recipe wall time: {results['wall_seconds'] / 60:.1f} min (all stages, this run and any it "
              "resumed)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the whole study


class Clock:
    """Wall time of the recipe, summed over runs: a killed run keeps what it spent up to its last tick."""

    def __init__(self, path: Path):
        self.path, self.start = path, time.perf_counter()
        self.spent = float(path.read_text()) if path.is_file() else 0.0

    def tick(self) -> float:
        now = time.perf_counter()
        self.spent, self.start = self.spent + now - self.start, now
        self.path.write_text(f"{self.spent:.1f}")
        return self.spent



def run(config: RecipeConfig) -> dict:
    """Every stage, skipping the finished ones; returns the results object written to OUT/results.json."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(out / "wall_seconds.txt")
    make_data(config, out)
    data = out / "data"
    init = initial_model(config, out)
    costs = {"ar": run_training(config, out, "minivl-ar", init, data / "train.json", "autoregressive",
                                config.ar_steps, config.ar_learning_rate)}
    clock.tick()
    dvlm_init = translated(config, out / "minivl-ar", out / "init-dvlm", config.context_attention)
    costs["dvlm"] = run_training(config, out, "minivl-dvlm", dvlm_init, data / "translate.json", "diffusion",
                                 config.translate_steps, config.translate_learning_rate, train_vision=False,
                                 source_terms=True, callbacks=[curve_callback(config, out)])
    static = settings(config)[0][1]
    models = {"ar": evaluate_model(config, out, out / "minivl-ar", "minivl-ar", {}),
              "dvlm": evaluate_model(config, out, out / "minivl-dvlm", "minivl-dvlm", static)}
    curve = [{"name": name, **evaluate_model(config, out, out / "minivl-dvlm", f"minivl-dvlm-{name}", options)}
             for name, options in settings(config)]
    clock.tick()
    # last: the longest stage, and only a comparison: the paper's diffusion model from scratch, whatever the
    # translation's options, so every ablation step shares it
    scratch = translated(config, init, out / "init-baseline", "block_causal")
    costs["baseline"] = run_training(config, out, "baseline-dvlm", scratch, data / "train.json", "diffusion",
                                     baseline_steps(config, out), config.ar_learning_rate)
    models["baseline"] = evaluate_model(config, out, out / "baseline-dvlm", "baseline-dvlm", static)
    training = out / "curve.jsonl"
    results = {"models": models, "costs": costs, "curve": curve, "wall_seconds": round(clock.tick(), 1),
               "training_curve": [json.loads(line) for line in training.read_text().splitlines()]
               if training.is_file() else [],
               "eval_samples": config.eval_samples, "eval_seed": config.eval_seed, "block_size": config.block_size,
               "config": {**asdict(config), "size": asdict(config.size)}}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    return results


INT_OPTIONS = ("samples", "ar_steps", "translate_steps", "baseline_steps", "batch_size", "eval_samples")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="everything goes here; rerun with the same --out to resume")
    parser.add_argument("--quick", action="store_true", help="a tiny model, a few samples and steps: a dry run")
    for name in INT_OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, help=f"override the recipe's {name}")
    parser.add_argument("--context-attention", choices=["block_causal", "causal"],
                        help="how clean tokens attend in the translation (default: block_causal)")
    for name in SOURCE_TERMS:
        parser.add_argument("--" + name.replace("_", "-"), type=float, help=f"the translation's {name} (default 0)")


def config_from(args: argparse.Namespace) -> RecipeConfig:
    """The study's config as the command line sets it: the full run or `--quick`, with any overrides."""
    config = RecipeConfig.quick(args.out) if args.quick else RecipeConfig(args.out)
    overrides = {name: getattr(args, name) for name in (*INT_OPTIONS, *SOURCE_TERMS, "context_attention")
                 if getattr(args, name) is not None}
    return replace(config, **overrides)


def main(args: argparse.Namespace) -> None:
    results = run(config_from(args))
    print(markdown(results))
    print(f"results: {Path(args.out) / 'results.md'} and results.json")
