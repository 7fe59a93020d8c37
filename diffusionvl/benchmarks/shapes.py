"""`diffusionvl bench --shape qwen2.5-0.5b`: what decoding costs at a real model's shape (random weights).

Accuracy needs real weights (the MiniVL bench); cost only needs the shape. A Qwen2 causal LM is built from the
shape's config with seeded random weights and wrapped as a DiffusionVL (block size `--block-size`); the AR
rows run the same weights through transformers' `generate` with its KV cache.

Random weights are not confident, so dynamic policies would commit one token per forward. To measure cost at the
commit rates real models reach, the final RMSNorm's weight is multiplied by `--sharpness`: larger values sharpen
every softmax, so more positions clear the threshold. The default, 64, gives about 3-4 tokens per forward at
threshold 0.9 and block size 8 with all 24 layers of the 0.5B shape (1 leaves the random model as it is: one
token per forward); tokens per forward are reported next to every speed, and the sharpness is in the JSON. The end-of-turn token's output
row is zeroed (its logit is 0 while the maximum over 151,936 random logits is far above), so every answer runs
to `--gen` tokens and all decoders produce the same number of tokens.

Measured (medians of `--repeats`, after a warm-up, interleaved):
- `ar_step_ms[P]`: one AR decode step, batch 1, after a cache of P tokens (DynamicCache, as `generate` uses);
- `block_step_ms[P]`: one denoising step of the engine (static, one token per step, B steps / B), batch 1,
  after P committed tokens;
- tokens/s of AR `generate` and of dynamic block decoding at batch 1 and 8, `--gen` new tokens each.

JSON keys: `step_vs_ar_step` (block / AR step at P = 512), `step_2048_vs_64` (block step at P = 2048 over
P = 64), `dynamic_vs_ar_tokens_per_s` (batch 1), `batch8_vs_batch1_tokens_per_s` (dynamic), `dtype`, `device`,
`shape`, `layers`, `sharpness`, `tokens_per_forward`, `outside_forwards_share` (of a batch-1 dynamic decode's wall
time, the part outside the model's decoder layers and output head: what the engine itself costs), and the raw
`steps` and `generation` tables.
"""

import statistics
import time

import torch

from ..errors import DiffusionVLError

SHAPES = {  # transformers Qwen2Config fields of the released models
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936),
}
CONTEXTS = (64, 512, 2048)


def build(shape: str, layers: int | None, block_size: int, sharpness: float, dtype, device):
    """(dVLM, its AR model): one set of random weights in the shape, end-of-turn never the argmax."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from ..model import DiffusionVL

    if shape not in SHAPES:
        raise DiffusionVLError(f"unknown --shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    fields = dict(SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)
    if layers is not None:
        fields["num_hidden_layers"] = layers
    vocab = fields["vocab_size"]
    eot, mask = vocab - 2, vocab - 1
    torch.manual_seed(0)
    ar = AutoModelForCausalLM.from_config(Qwen2Config(**fields, eos_token_id=eot, pad_token_id=eot),
                                          attn_implementation="sdpa")
    with torch.no_grad():
        ar.model.norm.weight.mul_(sharpness)
        ar.lm_head.weight[eot] = 0
    ar = ar.to(device=device, dtype=dtype).eval()
    model = DiffusionVL.from_autoregressive(ar, mask_token_id=mask, eot_token_id=eot, pad_token_id=eot,
                                            block_size=block_size).eval()
    return model, ar


def _median_ms(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def ar_step_ms(ar, context: int, repeats: int) -> float:
    device = next(ar.parameters()).device
    prompt = torch.randint(0, 1000, (1, context), device=device)
    cache = ar(input_ids=prompt, use_cache=True).cache
    token = prompt[:, -1:]

    def step():
        ar(input_ids=token, cache=cache, use_cache=True)
        cache.crop(-1)  # drop the new token: every step sees the same context
    return _median_ms(step, repeats)


@torch.no_grad()
def block_step_ms(model, context: int, repeats: int) -> float:
    """One engine step (static, steps = B), after `context` committed tokens: a block's B steps, divided by B."""
    from ..decoding.config import DecodingConfig
    from ..decoding.engine import BlockDecoder
    from ..decoding.prompts import build_prompts

    device = next(model.parameters()).device
    ids = torch.randint(0, 1000, (1, context), device=device)
    config = DecodingConfig(max_new_tokens=4 * model.block_size, steps=model.block_size, commit="separate")
    decoder = BlockDecoder(model, config)
    decoder.admit(build_prompts(model, ids, torch.ones_like(ids, dtype=torch.bool)))
    decoder.batch.fixed = None  # P is a multiple of B: the block holds no prompt token

    def block():
        decoder.batch.block = torch.full_like(decoder.batch.block, model.special_tokens.mask)
        decoder.denoise_block()

    return _median_ms(block, repeats) / model.block_size


@torch.no_grad()
def generation(model, ar, batch: int, prompt: int, gen: int, threshold: float, repeats: int) -> dict:
    """Tokens/s (and tokens per forward) of AR `generate` and dynamic block decoding, `batch` prompts."""
    from ..decoding.config import DecodingConfig

    device = next(model.parameters()).device
    ids = torch.randint(0, 1000, (batch, prompt), device=device, generator=torch.Generator(device).manual_seed(1))
    eot = model.special_tokens.eot
    dynamic = DecodingConfig(max_new_tokens=gen, steps=model.block_size, confidence_threshold=threshold,
                             remasking_strategy="low_confidence_dynamic")
    outputs = {}

    def run_ar():
        outputs["ar"] = ar.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=gen, do_sample=False,
                                    eos_token_id=eot, pad_token_id=eot)

    def run_dynamic():
        outputs["dynamic"] = model.generate(ids, generation_config=dynamic, return_dict_in_generate=True)
    times = {name: [] for name in ("ar", "dynamic")}
    for run in (run_ar, run_dynamic):
        run()  # warm-up
    outside = outside_forwards_share(model, run_dynamic)  # one more, untimed, profiled
    for _ in range(repeats):  # interleaved
        for name, run in (("ar", run_ar), ("dynamic", run_dynamic)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    tokens = {"ar": (outputs["ar"][:, prompt:] != eot).sum().item(),
              "dynamic": (outputs["dynamic"].sequences != eot).sum().item()}
    result = {name: {"tokens": tokens[name], "seconds": statistics.median(times[name]),
                     "tokens_per_s": tokens[name] / statistics.median(times[name]),
                     "tokens_per_forward": 1.0 if name == "ar" else outputs["dynamic"].tokens_per_forward}
              for name in times}
    result["dynamic"]["outside_forwards_share"] = outside
    return result


@torch.no_grad()
def outside_forwards_share(model, run) -> float:
    """Share of one decode's wall time spent outside the model (its decoder layers and its output head): sampling,
    the policy, masks, cache and row bookkeeping, everything the engine adds to the model's own work."""
    backbone, spent = model.backbone, [0.0]
    synchronize = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)

    def timed(function):
        def wrapper(*args, **kwargs):
            synchronize()
            start = time.perf_counter()
            out = function(*args, **kwargs)
            synchronize()
            spent[0] += time.perf_counter() - start
            return out
        return wrapper
    head = backbone.head  # an nn.Linear (a property of the backbone): its forward is wrapped
    backbone.decode, head.forward = timed(backbone.decode), timed(head.forward)  # instance attributes, removed below
    try:
        start = time.perf_counter()
        run()
        synchronize()
        total = time.perf_counter() - start
    finally:
        del backbone.decode, head.forward
    return 1 - spent[0] / total


def run(args) -> dict:
    from ..cli import torch_dtype

    dtype = torch_dtype(args.dtype) or torch.float32
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, ar = build(args.shape, args.layers, args.block_size, args.sharpness, dtype, device)
    steps = {p: {"ar_step_ms": ar_step_ms(ar, p, args.repeats), "block_step_ms": block_step_ms(model, p, args.repeats)}
             for p in CONTEXTS}
    generated = {n: generation(model, ar, n, 64, args.gen, args.shape_threshold, max(1, args.repeats // 3))
                 for n in args.batch_sizes}
    first, last = generated[min(generated)], generated[max(generated)]
    return {
        "shape": args.shape, "layers": model.backbone.decoder.config.num_hidden_layers, "dtype": str(dtype),
        "device": str(device), "block_size": args.block_size, "sharpness": args.sharpness, "gen": args.gen,
        "threshold": args.shape_threshold, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "step_vs_ar_step": steps[512]["block_step_ms"] / steps[512]["ar_step_ms"],
        "step_2048_vs_64": steps[2048]["block_step_ms"] / steps[64]["block_step_ms"],
        "dynamic_vs_ar_tokens_per_s": first["dynamic"]["tokens_per_s"] / first["ar"]["tokens_per_s"],
        f"batch{max(generated)}_vs_batch{min(generated)}_tokens_per_s":
            last["dynamic"]["tokens_per_s"] / first["dynamic"]["tokens_per_s"],
        "tokens_per_forward": first["dynamic"]["tokens_per_forward"],
        "outside_forwards_share": first["dynamic"]["outside_forwards_share"],
        "steps": steps, "generation": generated,
    }


def markdown(result: dict) -> str:
    title = (f"{result['shape']} shape, {result['layers']} layers, random weights (sharpness {result['sharpness']}), "
             f"{result['dtype']} on {result['device']} ({result['threads']} threads), block size {result['block_size']}")
    lines = [title, "", "| context P | AR step (ms) | block step (ms) | block / AR |", "| ---: | ---: | ---: | ---: |"]
    for p, row in result["steps"].items():
        lines.append(f"| {p} | {row['ar_step_ms']:.1f} | {row['block_step_ms']:.1f} | "
                     f"{row['block_step_ms'] / row['ar_step_ms']:.2f} |")
    lines += ["", f"| batch | AR tokens/s | dynamic@{result['threshold']} tokens/s | tokens/forward | dynamic / AR |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for n, row in result["generation"].items():
        lines.append(f"| {n} | {row['ar']['tokens_per_s']:.1f} | {row['dynamic']['tokens_per_s']:.1f} | "
                     f"{row['dynamic']['tokens_per_forward']:.2f} | "
                     f"{row['dynamic']['tokens_per_s'] / row['ar']['tokens_per_s']:.2f}x |")
    keys = [k for k in result if k.endswith(("_vs_ar_step", "_vs_64", "_vs_ar_tokens_per_s")) or "_vs_batch" in k]
    lines += ["", ", ".join(f"{k} = {result[k]:.2f}" for k in keys),
              f"outside the forwards (batch 1, dynamic): {100 * result['outside_forwards_share']:.1f}% of the time"]
    return "\n".join(lines)


def main(args) -> None:
    import json

    result = run(args)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
