"""What `diffusionvl bench` prints and draws: the markdown table with its headline lines, and the plot of
accuracy against speed. Both read only the result dict that benchmarks/decoding.py's `run` returns."""

from ..errors import require_extra


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _accuracy(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    s = result["settings"]
    title = (f"{s['model']} (block size {s['block_size']}) vs {s['source'] or 'no AR source'}, {s['described']}, "
             f"answers up to {s['max_new_tokens']} tokens, median of {s['repeats']} "
             f"passes, torch {s['torch']} on {s['device']} ({s['threads']} threads), dtype {s['dtype']}")
    lines = [title, "",
             "| setting | batch | accuracy | tokens/s | NFE | tokens/forward | p50 ms/batch | peak MB | vs AR | vs LLaDA-V |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['setting']} | {r['batch_size']} | {_accuracy(r['accuracy'])} | {r['tokens_per_s']:.0f} | {r['nfe']} "
                     f"| {r['tokens_per_forward']:.2f} | {r['latency_p50_ms']:.1f} | {r['peak_memory_mb']:.0f} "
                     f"| {_ratio(r['vs_ar_tokens_per_s'])} | {_ratio(r['vs_llada_tokens_per_s'])} |")
    h = result["headline"]
    if h.get("best_dynamic"):
        lines += ["", (f"best dynamic within 1 point of static: {h['best_dynamic']} "
                       f"({h['dynamic_accuracy_drop_vs_static']:.1f} points below): "
                       f"{_ratio(h['dynamic_vs_ar_tokens_per_s'])} AR's tokens/s, "
                       f"{_ratio(h['dynamic_vs_llada_tokens_per_s'])} LLaDA-V's; batch 8 vs 1: "
                       f"{_ratio(h['batch8_vs_batch1_tokens_per_s'])}")]
    if "speculative_identical_to_verifier" in h:
        spread = h.get("speculative_vs_ar_spread")
        vs_ar = "" if spread is None else (f"{_ratio(h['speculative_vs_ar_tokens_per_s'])} AR's tokens/s (passes "
                                           f"{spread[0]:.2f}-{spread[1]:.2f}), ")
        accepted = h["speculative_mean_accepted"]
        lines += ["", (f"{h['speculative_setting']}: {vs_ar}{h['speculative_tokens_per_forward']:.2f} tokens/forward, "
                       f"{'-' if accepted is None else f'{accepted:.2f}'} tokens per verification; every "
                       f"speculative row identical to its verifier's greedy answers: "
                       f"{'yes' if h['speculative_identical_to_verifier'] else 'NO'}")]
    return "\n".join(lines)


def pyplot():
    require_extra("bench", "--plot", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot(result: dict, path) -> None:
    """Accuracy against tokens/s and against tokens per forward: one colour per setting, one marker per batch
    size (the AR source in black), named in the legend."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    names = list(dict.fromkeys(r["setting"] for r in result["rows"]))
    markers = dict(zip(sorted({r["batch_size"] for r in result["rows"]}), "o^sDv"))
    for axis, key, label in ((axes[0], "tokens_per_s", "tokens / s"), (axes[1], "tokens_per_forward", "tokens / forward")):
        for r in (r for r in result["rows"] if r["accuracy"] is not None):
            colour = "black" if r["kind"] == "ar" else plt.cm.tab10(names.index(r["setting"]) % 10)
            axis.scatter(r[key], r["accuracy"], color=colour, marker=markers[r["batch_size"]], s=60 if r["kind"] == "ar" else 40,
                         alpha=0.85, label=f"{r['setting']}, batch {r['batch_size']}")
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%): exact match, or the AR's answer where a prompt has no reference")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    s = result["settings"]
    figure.suptitle(f"{s['model']} against {s['source']} ({s['described']}, {s['device']}, {s['dtype']})",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
