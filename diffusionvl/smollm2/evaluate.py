"""The translated SmolLM2 against its AR source on held-out prompts: the dLM's greedy answers compared with the
AR's (exact match, token F1), the AR model's perplexity of both (fluency), answer length, and speed (tokens
per forward, NFE, tokens/s) for static, dynamic and threshold decoding."""

import json
from pathlib import Path

from transformers import TrainerCallback

from ..decoding.config import DecodingConfig
from ..evaluation.metrics import exact_match, token_f1
from ..evaluation.perplexity import answer_nll, perplexity
from ..evaluation.tally import Tally


def decode_all(model, tokenizer, records: list[dict], decoding: DecodingConfig, batch_size: int) -> dict:
    """Answers to every record's messages: texts, token rows, and the counts summed over batches (a Tally)."""
    from ..inference import answer, chat_inputs

    texts, rows, tally = [], [], Tally()
    for start in range(0, len(records), batch_size):
        batch = records[start: start + batch_size]
        out = answer(model, tokenizer, chat_inputs(tokenizer, [r["messages"] for r in batch]), decoding)
        texts += out.texts
        rows += out.rows
        tally.add(out, out.seconds)
    return {"texts": texts, "rows": rows, "tally": tally}


def agreement(texts: list[str], references: list[str]) -> dict:
    """Exact match and token F1 of answers against the AR's answers, as fractions."""
    pairs = list(zip(texts, references))
    return {"exact_match": sum(exact_match(a, b) for a, b in pairs) / len(pairs),
            "token_f1": sum(token_f1(a, b) for a, b in pairs) / len(pairs)}


class CurveCallback(TrainerCallback):
    """At every checkpoint: the token F1 of the model's static answers against the AR's on a few held-out prompts,
    appended to OUT/curve.jsonl with the training tokens seen so far."""

    def __init__(self, config, out: Path, records: list[dict], tokenizer):
        self.config, self.path, self.records, self.tokenizer = config, out / "curve.jsonl", records, tokenizer
        self.length = mean_sample_tokens(tokenizer, out / "data" / "train.json")

    def on_save(self, args, state, control, model=None, **kwargs):
        if not args.should_save or model is None:
            return
        decoding = DecodingConfig(max_new_tokens=self.config.max_new_tokens, steps=self.config.block_size)
        out = decode_all(model, self.tokenizer, self.records, decoding, self.config.eval_batch_size)
        scores = agreement(out["texts"], [r["answer"] for r in self.records])
        seen = state.global_step * self.config.batch_size
        entry = {"step": state.global_step, "training_tokens": round(seen * self.length), **scores}
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")


def mean_sample_tokens(tokenizer, data: Path, most: int = 256) -> float:
    """Mean length in tokens of (the first `most`) training conversations, chat template included."""
    records = json.loads(data.read_text())[:most]
    chats = [[{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
              for t in r["conversations"]] for r in records]
    return sum(len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in chats) / len(chats)


def settings(config) -> list[tuple[str, DecodingConfig]]:
    """Every decoding the dLM is evaluated with; the first (static, one token per step) is the reference. With
    steps = block size, the dynamic policy (the static quota of one as its floor) decodes exactly as the threshold
    one (at least one), so only the threshold is run. A translation with a causal mode is also decoded
    speculatively (its drafts verified by that mode: the causal mode's answers, at another speed)."""
    from ..inference import has_causal_mode

    size, limit = config.block_size, config.max_new_tokens
    runs = [("static", DecodingConfig(max_new_tokens=limit, steps=size))]
    runs += [(f"threshold@{t}", DecodingConfig(max_new_tokens=limit, steps=size, remasking_strategy="threshold",
                                               confidence_threshold=t)) for t in config.thresholds]
    if has_causal_mode(config.context_attention, config.logit_shift):
        runs.append(("speculative", DecodingConfig(max_new_tokens=limit, remasking_strategy="speculative")))
    return runs


def _prompt_ids(tokenizer, records: list[dict]) -> list[list[int]]:
    """Each record's prompt as the chat template tokenises it, generation prompt included."""
    return [tokenizer.apply_chat_template(r["messages"], tokenize=True, add_generation_prompt=True, return_dict=False)
            for r in records]


def evaluate_adapter(config, out: Path, adapter: Path, records: list[dict]) -> dict:
    """The results object: the AR row and one row per decoding setting of the dLM (each cached in OUT/eval/), on
    the held-out `records` (recipe.test_records)."""
    from transformers import AutoTokenizer

    from ..loading import load_autoregressive
    from ..training.adapters import build

    ar = load_autoregressive(config.base).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    judge = Judge(ar, tokenizer, records, config)
    cached = out / "eval"
    cached.mkdir(parents=True, exist_ok=True)
    ar_decoding = DecodingConfig(max_new_tokens=config.max_new_tokens)
    rows = [_cached(cached / "ar.json", lambda: judge.row("AR (greedy, KV cache)", ar, ar_decoding))]
    model = None
    for name, decoding in settings(config):
        def run(name=name, decoding=decoding):
            nonlocal model
            model = model if model is not None else build(adapter).eval()  # only when a setting is not cached
            return judge.row(name, model, decoding)
        rows.append(_cached(cached / f"dlm-{name}.json", run))
    if _has_causal_mode(adapter):  # its own causal mode: blocks of one token
        def causal():
            from ..inference import causal_model

            return judge.row("causal mode (KV cache)", causal_model(model or build(adapter).eval()), ar_decoding)
        rows.append(_cached(cached / "dlm-causal.json", causal))
    curve = out / "curve.jsonl"
    return {"rows": rows, "test_prompts": len(records), "ar_perplexity": perplexity(judge.own),
            "curve": [json.loads(line) for line in curve.read_text().splitlines()] if curve.is_file() else []}


def _has_causal_mode(adapter: Path) -> bool:
    """Whether the adapter's translation has a causal mode (inference.causal_model)."""
    from ..inference import has_causal_mode
    from ..training.adapters import adapter_config

    config = adapter_config(adapter)
    return has_causal_mode(config.get("context_attention", "block_causal"), config.get("logit_shift", False))


def _cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    row = compute()
    path.write_text(json.dumps(row, indent=1) + "\n")
    return row


class Judge:
    """Scores a decoder's answers to the test records against the AR's (from the data stage)."""

    def __init__(self, ar, tokenizer, records: list[dict], config):
        self.ar, self.tokenizer, self.records, self.config = ar, tokenizer, records, config
        self.prompts = _prompt_ids(tokenizer, records)
        self.own = self.nll([r["ids"] for r in records])  # the AR's perplexity of its own answers: the yardstick

    def nll(self, rows: list[list[int]]) -> list[tuple[float, int]]:
        return answer_nll(self.ar, self.prompts, rows, pad_id=self.tokenizer.pad_token_id or 0)

    def row(self, name: str, model, decoding: DecodingConfig) -> dict:
        out = decode_all(model, self.tokenizer, self.records, decoding, self.config.eval_batch_size)
        speed = out["tally"].speed()
        return {"name": name, **agreement(out["texts"], [r["answer"] for r in self.records]),
                "perplexity_ratio": perplexity(self.nll(out["rows"])) / perplexity(self.own),
                "mean_tokens": out["tally"].tokens / len(self.records),
                "tokens_per_forward": speed["tokens_per_forward"], "nfe": speed["nfe"],
                "tokens_per_s": speed["tokens_per_s"], "answers": out["texts"],
                **({"mean_accepted": speed["mean_accepted"]} if "mean_accepted" in speed else {})}


def markdown(results: dict) -> str:
    """The comparison table and the training curve, as Markdown."""
    lines = ["## SmolLM2-135M-Instruct: the translated dLM against its AR source", "",
             f"{results['test_prompts']} held-out prompts; exact match and token F1 of each decoder's greedy answer "
             "against the AR's; perplexity ratio: the AR model's perplexity of these answers over its perplexity of "
             f"its own ({results['ar_perplexity']:.2f}).", "",
             "| decoder | exact match | token F1 | perplexity ratio | mean tokens | tokens/forward | NFE | tokens/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results["rows"]:
        lines.append(f"| {row['name']} | {row['exact_match']:.3f} | {row['token_f1']:.3f} | "
                     f"{row['perplexity_ratio']:.2f} | {row['mean_tokens']:.1f} | {row['tokens_per_forward']:.2f} | "
                     f"{row['nfe']} | {row['tokens_per_s']:.0f} |")
    if results["curve"]:
        lines += ["", "Training curve (static decoding, token F1 against the AR on the first held-out prompts):", "",
                  "| step | training tokens | token F1 | exact match |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {c['step']} | {c['training_tokens']} | {c['token_f1']:.3f} | {c['exact_match']:.3f} |"
                  for c in results["curve"]]
    return "\n".join(lines) + "\n"
