"""`diffusionvl bench`: accuracy and speed of every decoder on the same prompts, in one process.

    diffusionvl bench [--model minivl-dvlm] [--tasks minivl:scene | FILE.jsonl] [--batch-sizes 1,8] [--json FILE]
                      [--plot FILE.png]
    diffusionvl bench --model smollm2-dlm      # a text model: SmolLM2's held-out prompts, smollm2 as the AR row

The decoders (settings):

- `AR`: the model's autoregressive source (`--source`; minivl-ar for the shipped minivl-dvlm, smollm2 for
  smollm2-dlm), transformers' greedy `generate` on the whole batch with its KV cache;
- `static`: block decoding, one token per step (steps = block size), and `static/2` with half the steps;
- `dynamic@t`, `threshold@t`: the confidence policies at each `--thresholds` value;
- `LLaDA-V`: full-sequence decoding of the same dVLM (a canvas of `--max-new-tokens` masks, bidirectional
  attention, no cache, one token per step), one prompt at a time, so only at batch size 1;
- `speculative`: drafts verified by the model's own causal mode (decoding/speculative.py), for a dVLM translated
  with causal context and logit shift, and `speculative by NAME`: verified by the AR model `--verifier NAME`. Their
  answers are checked token for token against the verifier's greedy decode (benchmarks/lossless.py: transformers'
  `generate` for the AR model and a text model's causal mode, else the no-cache reference; untimed).

Every setting answers the same prompts (benchmarks/prompt_sets.py): `--samples` MiniVL test samples per task of
`--tasks` (default: every task; the test split of seed `--seed`, tasks round-robin so batches mix prompt lengths),
SmolLM2's held-out prompts for a text model, or the questions of a `--tasks FILE.jsonl`; in batches of each
`--batch-sizes` value. One warm-up batch per setting, then `--repeats` timed passes; a pass answers each batch
with every setting in turn, so drift of the machine hits them alike. Times cover decoding only: inputs are preprocessed
before the clock starts. Accuracy is exact match against the reference answer (a task file's own metric), or,
for prompts without one, against the AR row's answer (greedy decoding gives the same answers every pass).

Per row of the JSON (`rows`): setting, kind (ar, block, llada), batch_size, accuracy (%), tokens (new tokens,
end-of-turn included), nfe (forwards), tokens_per_forward (tokens per forward of one row), tokens_per_s
(median pass), latency_p50_ms (median time of one batch), peak_memory_mb (CUDA: peak allocated; CPU: peak
resident memory above the level before the batch, sampled every 2 ms), vs_ar_tokens_per_s and
vs_llada_tokens_per_s (against those rows at the same batch size, batch 1 for LLaDA).

Headline keys (`headline`), the numbers a reader compares:

- `best_dynamic`: the fastest dynamic or threshold setting at batch 1 whose accuracy is within 1 point of static;
- `dynamic_vs_ar_tokens_per_s`, `dynamic_vs_llada_tokens_per_s`: its tokens/s over AR's and LLaDA-V's, batch 1;
- `dynamic_accuracy_drop_vs_static`: static's accuracy minus its accuracy, in points;
- `batch8_vs_batch1_tokens_per_s`: its tokens/s at batch 8 over batch 1 (null without batch size 8);
- with speculative rows (one per `--speculative-copies` value), for the best of them at batch 1
  (`speculative_setting`: the fastest against the AR): `speculative_vs_ar_tokens_per_s` (the median passes'
  ratio) and `speculative_vs_ar_spread` (the min and max of the per-pass ratios, passes interleaved),
  `speculative_tokens_per_forward`, `speculative_mean_accepted` (tokens per verification); and
  `speculative_identical_to_verifier` (every speculative row's answers, at every batch size, equal the causal
  mode's, token for token).
"""

import argparse
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..decoding.config import DecodingConfig
from ..errors import DiffusionVLError
from .prompt_sets import check_tasks, comma_separated, tasks_option
from .report import markdown, plot, pyplot

# a shipped model's AR source
SOURCES = {"minivl-dvlm": "minivl-ar", "minivl-dvlm-draft": "minivl-ar", "smollm2-dlm": "smollm2"}


@dataclass(frozen=True)
class BenchConfig:
    """What `diffusionvl bench` measures; every field is a flag of the same name."""

    model: str = "minivl-dvlm"
    source: str | None = None  # None: SOURCES[model], else no AR row
    samples: int = 25  # per MiniVL task; SmolLM2 prompts; at most this many lines of a task file
    batch_sizes: tuple[int, ...] = (1, 8)
    thresholds: tuple[float, ...] = (0.7, 0.9, 0.95)
    repeats: int = 3
    max_new_tokens: int = 64
    seed: int = 1
    llada: bool = True
    device: str = "cpu"
    dtype: str = "auto"
    tasks: tuple[str, ...] | None = None  # MiniVL task names; None: every task
    task_file: str | None = None  # a JSONL file of questions instead (evaluation.tasks)
    speculative_copies: tuple[int | None, ...] = (1,)  # a speculative row per value (DecodingConfig; None: all)
    verifier: str | None = None  # an AR model checking the drafts too: speculative rows `... by NAME`

    def __post_init__(self):
        for name in ("samples", "repeats", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise DiffusionVLError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise DiffusionVLError(f"--batch-sizes must be positive integers, got {self.batch_sizes}.")
        if not all(0 <= t <= 1 for t in self.thresholds):
            raise DiffusionVLError(f"--thresholds must lie in [0, 1], got {self.thresholds}.")
        check_tasks(self.tasks)
        if not self.speculative_copies:
            raise DiffusionVLError("--speculative-copies needs at least one value, e.g. 1 or 0,1,2,all.")
        for copies in self.speculative_copies:
            DecodingConfig(remasking_strategy="speculative", speculative_copies=copies)  # its own check


@dataclass
class Setting:
    name: str
    kind: str  # "ar", "block" or "llada"
    config: DecodingConfig
    verified_by: str | None = None  # speculative: the separate verifier's name (None: the model's causal mode)


def settings(block_size: int, config: BenchConfig, with_ar: bool, speculative: bool = False) -> list[Setting]:
    """The rows of the table. `speculative`: the model verifies its own drafts (it has a causal mode)."""
    common = {"max_new_tokens": config.max_new_tokens}
    out = [Setting("AR", "ar", DecodingConfig(**common))] if with_ar else []
    out += [Setting("static", "block", DecodingConfig(steps=block_size, **common))]
    if block_size > 1:
        out += [Setting("static/2", "block", DecodingConfig(steps=block_size // 2, **common))]
    for strategy, short in (("low_confidence_dynamic", "dynamic"), ("threshold", "threshold")):
        out += [Setting(f"{short}@{t:g}", "block", DecodingConfig(
            steps=block_size, remasking_strategy=strategy, confidence_threshold=t, **common))
            for t in config.thresholds]
    for checker in ([None] if speculative else []) + ([config.verifier] if config.verifier else []):
        out += [Setting(speculative_name(copies, config.speculative_copies, checker), "block", DecodingConfig(
            remasking_strategy="speculative", speculative_copies=copies, **common), checker)
            for copies in config.speculative_copies]
    if config.llada:
        out += [Setting("LLaDA-V", "llada", DecodingConfig(steps=block_size, **common))]
    return out


def speculative_name(copies: int | None, every: tuple, checker: str | None = None) -> str:
    """`speculative` when the run has one number of copies, else `speculative/c<copies>` (`speculative/all`);
    ` by NAME` when a separate verifier checks the drafts."""
    name = "speculative" if len(every) == 1 else "speculative/all" if copies is None else f"speculative/c{copies}"
    return name if checker is None else f"{name} by {Path(checker).name}"


class PeakMemory:
    """Peak memory of what runs inside `with`, in MB: CUDA's peak allocation, or on CPU the peak resident set
    above its level at entry (a sampling thread; the process's own high-water mark never goes down)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _resident_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base, self.done = self._resident_mb(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.002):
            self.peak_mb = max(self.peak_mb, self._resident_mb() - self.base)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.done.set()
            self.thread.join()


def decode(setting: Setting, models: dict, processor, inputs: dict):
    """(texts, new tokens, nfe, row forwards, token rows, tokens per verification) of one batch."""
    from ..decoding.baselines import full_sequence_generate
    from ..inference import answer, texts_of
    from ..model import vision_inputs

    if setting.kind == "llada":
        model = models["dvlm"]
        device = next(model.parameters()).device
        inputs = {key: value.to(device) for key, value in inputs.items()}
        vision = vision_inputs(inputs.get("pixel_values"), inputs.get("image_grid_thw"))
        ids = inputs["input_ids"]  # batch size 1: no padding
        size, length = model.block_size, setting.config.max_new_tokens
        out = full_sequence_generate(model, ids, length, size, steps=length, vision=vision)
        rows = out.rows
        return texts_of(processor.tokenizer, rows), sum(map(len, rows)), out.nfe, out.nfe, rows, []
    out = answer(models["ar" if setting.kind == "ar" else "dvlm"], processor, inputs, setting.config,
                 verifier=models["verifier"] if setting.verified_by else None)
    return out.texts, out.tokens, out.nfe, out.row_forwards, out.rows, out.accepted


def measure(setting: Setting, models, processor, inputs: dict, device) -> dict:
    """One batch of one setting, timed: its texts, token rows, tokens per verification, counts and seconds."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        texts, tokens, nfe, row_forwards, rows, accepted = decode(setting, models, processor, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return {"texts": texts, "rows": rows, "accepted": accepted, "tokens": tokens, "nfe": nfe,
            "row_forwards": row_forwards, "seconds": seconds, "latencies": [seconds], "peak_memory_mb": memory.peak_mb}


def joined(parts: list[dict]) -> dict:
    """One pass's measurement from those of its batches (measure's keys): lists joined, counts and seconds added,
    the highest peak memory."""
    out = {key: [item for part in parts for item in part[key]] for key in ("texts", "rows", "accepted", "latencies")}
    out.update({key: sum(part[key] for part in parts) for key in ("tokens", "nfe", "row_forwards", "seconds")})
    return {**out, "peak_memory_mb": max(part["peak_memory_mb"] for part in parts)}


# ---------------------------------------------------------------- the run


def load_models(config: BenchConfig, source: str | None) -> tuple[dict, object]:
    from ..cli import torch_dtype
    from ..inference import open_model, open_processor

    dtype = torch_dtype(config.dtype)
    processor = open_processor(config.model)
    dvlm = open_model(config.model, dtype=dtype, device=config.device, autoregressive=False)
    models = {"dvlm": dvlm}
    if source is not None:
        models["ar"] = open_model(source, dtype=dtype, device=config.device)
    if config.verifier is not None:  # the source itself when named again: one copy in memory
        models["verifier"] = models["ar"] if config.verifier == source else open_model(
            config.verifier, dtype=dtype, device=config.device)
        dvlm.as_verifier(models["verifier"])  # wrapped before any timing (its attention kernel is set once)
    return models, processor


def run(config: BenchConfig, progress: bool = True) -> dict:
    """The result documented in the module docstring: {"settings", "rows", "headline"}."""
    from tqdm.auto import tqdm

    from ..inference import has_causal_mode
    from .prompt_sets import batches_of, prompt_set

    source = config.source if config.source is not None else SOURCES.get(config.model)
    models, processor = load_models(config, source)
    prompts, described = prompt_set(processor, config.samples, config.seed, config.tasks, config.task_file)
    batches = {n: batches_of(prompts, processor, n) for n in {*config.batch_sizes, 1}}
    device = next(models["dvlm"].parameters()).device
    dvlm = models["dvlm"]
    speculative = has_causal_mode(dvlm.config.context_attention, dvlm.config.logit_shift)
    table = settings(dvlm.block_size, config, "ar" in models, speculative)
    checked = [s for s in table if s.config.speculative]
    plan = [(s, n) for s in table for n in config.batch_sizes if s.kind != "llada" or n == 1]
    for setting, n in plan:  # warm-up: the first batch of each
        measure(setting, models, processor, batches[n][0], device)
    runs = {(s.name, n): [] for s, n in plan}
    # a pass answers each batch with every setting in turn (the AR first, the speculative rows next), so that the
    # machine's drift over the minutes of a pass reaches every setting alike: ratios are taken pass by pass
    for _ in tqdm(range(config.repeats), desc="timed passes", disable=not progress or None):
        for n in sorted({n for _, n in plan}):
            group = sorted((s for s, m in plan if m == n),
                           key=lambda s: (s.kind != "ar", not s.name.startswith("speculative")))
            parts = {s.name: [] for s in group}
            for inputs in batches[n]:
                for setting in group:
                    parts[setting.name].append(measure(setting, models, processor, inputs, device))
            for setting in group:
                runs[(setting.name, n)].append(joined(parts[setting.name]))
    ar_texts = runs[("AR", config.batch_sizes[0])][0]["texts"] if "ar" in models else None
    rows = [summarise(setting, n, runs[(setting.name, n)], prompts, ar_texts) for setting, n in plan]
    compare(rows)
    result = {"settings": {**asdict(config), "source": source, "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "block_size": dvlm.block_size, "prompts": len(prompts),
                           "described": described},
              "rows": rows, "headline": headline(rows, config.batch_sizes)}
    if checked:
        from .lossless import reference_rows

        verified = {checker: reference_rows(dvlm, processor, batches[1], config.max_new_tokens,
                                            models["verifier"] if checker else None)
                    for checker in {s.verified_by for s in checked}}
        result["headline"].update(speculative_headline(runs, config, checked, verified))
    return result


def speculative_headline(runs: dict, config: BenchConfig, checked: list[Setting], verified: dict) -> dict:
    """The speculative keys of the headline (module docstring) for the best speculative setting at the smallest
    batch size (the fastest against the AR, else the most tokens per forward); identical means every setting's
    answers equal its verifier's greedy answers (`verified`, by verifier name; None: the causal mode)."""
    one = min(config.batch_sizes)
    keys = {s.name: _speculative_keys(runs[(s.name, one)], runs.get(("AR", one))) for s in checked}
    best = max(keys, key=lambda name: (keys[name].get("speculative_vs_ar_tokens_per_s", 0),
                                       keys[name]["speculative_tokens_per_forward"]))
    identical = all(runs[(s.name, n)][0]["rows"] == verified[s.verified_by] for s in checked
                    for n in config.batch_sizes)
    return {"speculative_setting": best, **keys[best], "speculative_identical_to_verifier": identical}


def _speculative_keys(passes: list[dict], ar: list[dict] | None) -> dict:
    out = {"speculative_tokens_per_forward": passes[0]["tokens"] / max(passes[0]["row_forwards"], 1),
           "speculative_mean_accepted": statistics.mean(passes[0]["accepted"]) if passes[0]["accepted"] else None}
    if ar is not None:
        ratios = [(s["tokens"] / s["seconds"]) / (a["tokens"] / a["seconds"]) for s, a in zip(passes, ar)]
        out["speculative_vs_ar_tokens_per_s"] = statistics.median(ratios)
        out["speculative_vs_ar_spread"] = [min(ratios), max(ratios)]
    return out


def summarise(setting: Setting, batch_size: int, runs: list[dict], prompts, ar_texts) -> dict:
    from .prompt_sets import scores

    first = runs[0]  # greedy: every pass gives the same answers, tokens and forwards
    seconds = statistics.median(r["seconds"] for r in runs)
    latencies = [latency for r in runs for latency in r["latencies"]]
    return {
        "setting": setting.name, "kind": setting.kind, "batch_size": batch_size,
        "accuracy": scores(prompts, first["texts"], ar_texts),
        "tokens": first["tokens"], "nfe": first["nfe"],
        "tokens_per_forward": first["tokens"] / max(first["row_forwards"], 1),
        "tokens_per_s": first["tokens"] / seconds, "seconds": seconds,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
    }


def compare(rows: list[dict]) -> None:
    """vs_ar_tokens_per_s (same batch size) and vs_llada_tokens_per_s (LLaDA-V at batch 1) on every row."""
    ar = {r["batch_size"]: r["tokens_per_s"] for r in rows if r["kind"] == "ar"}
    llada = next((r["tokens_per_s"] for r in rows if r["kind"] == "llada"), None)
    for row in rows:
        row["vs_ar_tokens_per_s"] = row["tokens_per_s"] / ar[row["batch_size"]] if row["batch_size"] in ar else None
        row["vs_llada_tokens_per_s"] = row["tokens_per_s"] / llada if llada else None


def headline(rows: list[dict], batch_sizes) -> dict:
    at = {(r["setting"], r["batch_size"]): r for r in rows}
    static = at[("static", 1)] if 1 in batch_sizes else None
    if static is None or static["accuracy"] is None:  # no reference answers and no AR row to compare with
        return {}
    policies = [r for r in rows if r["batch_size"] == 1 and r["setting"].startswith(("dynamic@", "threshold@"))]
    close = [r for r in policies if static["accuracy"] - r["accuracy"] <= 1.0]
    best = max(close, key=lambda r: r["tokens_per_s"], default=None)
    if best is None:
        return {"best_dynamic": None}
    batch8 = at.get((best["setting"], 8))
    return {
        "best_dynamic": best["setting"],
        "dynamic_vs_ar_tokens_per_s": best["vs_ar_tokens_per_s"],
        "dynamic_vs_llada_tokens_per_s": best["vs_llada_tokens_per_s"],
        "dynamic_accuracy_drop_vs_static": static["accuracy"] - best["accuracy"],
        "batch8_vs_batch1_tokens_per_s": batch8["tokens_per_s"] / best["tokens_per_s"] if batch8 else None,
    }


# ---------------------------------------------------------------- output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import copies_option

    d = BenchConfig()
    parser.add_argument("--model", default=d.model, help="a DiffusionVL checkpoint folder or shipped name "
                        "(minivl-dvlm, smollm2-dlm)")
    parser.add_argument("--source", help="its autoregressive source (default: minivl-ar for minivl-dvlm, smollm2 "
                        "for smollm2-dlm, else none)")
    parser.add_argument("--samples", type=int, default=d.samples, help="MiniVL test samples per task; SmolLM2 "
                        "held-out prompts for a text model; the first lines of a --tasks file")
    parser.add_argument("--batch-sizes", type=comma_separated(int), default=d.batch_sizes, help="e.g. 1,8")
    parser.add_argument("--thresholds", type=comma_separated(float), default=d.thresholds,
                        help="thresholds of the dynamic and threshold policies")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed passes; times are their median")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="answer length limit")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the MiniVL test samples")
    parser.add_argument("--tasks", help="MiniVL tasks to answer, e.g. minivl:caption,scene (default: every "
                        "task), or a JSONL file of questions (as for `diffusionvl eval --tasks`)")
    parser.add_argument("--speculative-copies", type=comma_separated(copies_option), default=d.speculative_copies,
                        metavar="N,...", help="a speculative row per value: noisy copies per verify forward, e.g. "
                        "0,1,2,all (a causal-context model)")
    parser.add_argument("--verifier", help="an AR model (e.g. the --source) that checks speculative drafts too: rows "
                        "`speculative by NAME`, their answers checked against its greedy answers")
    parser.add_argument("--no-llada", dest="llada", action="store_false", help="skip LLaDA-V-style decoding")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=d.dtype,
                        help="weights' dtype; auto keeps the checkpoint's")
    parser.add_argument("--json", help="also write the result (settings, rows, headline) to this JSON file")
    shape = parser.add_argument_group("cost at a real model's shape (random weights; see benchmarks/shapes.py)")
    shape.add_argument("--shape", help="qwen2.5-0.5b or qwen2.5-3b: measure steps and tokens/s at that shape instead")
    shape.add_argument("--layers", type=int, help="decoder layers (default: the shape's own)")
    shape.add_argument("--block-size", type=int, default=8, help="block size of the wrapped model")
    shape.add_argument("--sharpness", type=float, default=64.0, help="final-norm scale making the random model confident")
    shape.add_argument("--gen", type=int, default=256, help="new tokens per prompt")
    shape.add_argument("--shape-threshold", type=float, default=0.9, help="threshold of the dynamic policy")
    parser.add_argument("--plot", help="also draw accuracy against speed to this PNG file")


def main(args: argparse.Namespace) -> None:
    if args.shape:
        from . import shapes

        return shapes.main(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tasks, task_file = tasks_option(args.tasks)
    config = BenchConfig(args.model, args.source, args.samples, args.batch_sizes, args.thresholds, args.repeats,
                         args.max_new_tokens, args.seed, args.llada, device, args.dtype, tasks, task_file,
                         args.speculative_copies, args.verifier)
    if args.plot:
        pyplot()  # a missing matplotlib fails now, not after the run
    result = run(config)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    if args.plot:
        plot(result, args.plot)
