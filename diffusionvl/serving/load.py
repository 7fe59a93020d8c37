"""`diffusionvl bench-serve`: what continuous batching buys, measured through the HTTP API a user would call.

    diffusionvl bench-serve [--model minivl-dvlm | --url http://host:port] [--clients 1 4 16] [--requests 48]

The workload is MiniVL test questions with their images (every task in turn), sent as PNG data URLs through the
official `openai` client, non-streaming, temperature 0. First one client sends them one at a time ("serial", the
baseline); then, per `--clients` value c, c threads pull from the same list until it is empty. One warm-up
request comes before any clock starts. With `--repeats` > 1 every level runs once per pass and rates are the
passes' median; latency percentiles pool all passes.

Greedy decoding is deterministic, so every answer under concurrency must equal the serial answer to the same
request; `mismatches` counts those that differ (a batched forward that changes a result is a bug to see, not to
average away). `batch_mean` / `batch_max` (JSON only) sample the server's `diffusionvl_batch_size` gauge (the rows
of the block being decoded) during a level: whether requests decode together.

Without `--url` the server runs in this process (uvicorn in a thread), so the clients' threads share its GIL:
`--url` against `diffusionvl serve` elsewhere separates the two.
"""

import argparse
import base64
import io
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

SEED = 1  # the MiniVL test split's seed: the same questions on every run
IMAGE_SIZE = 112  # the side the shipped MiniVL models were trained on


def workload(count: int) -> list[list[dict]]:
    """`count` chat messages lists, one MiniVL test sample each, the tasks interleaved so that every prefix of
    the list (what a few clients finish first) mixes short and long answers."""
    from ..minivl.generator import TASKS, generate

    per_task = -(-count // len(TASKS))
    samples = [generate(task, "test", SEED, per_task, IMAGE_SIZE) for task in TASKS]
    interleaved = [group[i] for i in range(per_task) for group in samples][:count]
    return [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(s.image)}},
                                          {"type": "text", "text": s.question}]}] for s in interleaved]


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class BatchGauge:
    """Samples the server's batch-size gauge from /metrics in a thread while `with` runs: whether concurrent
    requests decode as one batch or merely queue behind each other."""

    def __init__(self, url: str, every: float = 0.05):
        self.url, self.every, self.values = url + "/metrics", every, []

    def _sample(self, http):
        with http:
            while not self.done.wait(self.every):
                for line in http.get(self.url).text.splitlines():
                    if line.startswith("diffusionvl_batch_size "):
                        self.values.append(float(line.split()[1]))

    def __enter__(self):
        import httpx  # here, not in the thread: openai reads sys.modules["httpx"], which a thread may half-fill

        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, args=(httpx.Client(timeout=5),), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def level(url: str, model: str, requests: list, clients: int, max_tokens: int) -> dict:
    """One pass of `requests` by `clients` threads (0: serial, one client in this thread): per request its
    answer, usage and latency, and the pass's wall time."""
    from openai import OpenAI

    pending, lock, results = list(enumerate(requests)), threading.Lock(), [None] * len(requests)
    # made before the clock: an OpenAI client takes ~15 ms to make, which would bill 16 clients a quarter second
    sessions = [OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
                for _ in range(max(clients, 1))]

    def worker(client):
        while True:
            with lock:
                if not pending:
                    return
                index, messages = pending.pop(0)
            start = time.perf_counter()
            reply = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                   max_tokens=max_tokens)
            u = reply.usage.model_extra or {}
            results[index] = {"text": reply.choices[0].message.content, "tokens": reply.usage.completion_tokens,
                              "nfe": u.get("nfe"), "per_forward": u.get("tokens_per_forward"),
                              "latency": time.perf_counter() - start}

    with BatchGauge(url) as gauge:
        start = time.perf_counter()
        if clients == 0:
            worker(sessions[0])
        else:
            with ThreadPoolExecutor(clients) as pool:
                for future in [pool.submit(worker, client) for client in sessions]:
                    future.result()
        seconds = time.perf_counter() - start
    return {"results": results, "seconds": seconds, "batch": gauge.values}


def summarise(clients, passes: list[dict], serial_texts: list[str]) -> dict:
    """A table row from a level's passes: median rates, pooled latency percentiles, mismatches against serial."""
    latencies = sorted(1000 * r["latency"] for p in passes for r in p["results"])
    first = passes[0]["results"]
    tokens = [sum(r["tokens"] for r in p["results"]) for p in passes]
    known = [r for r in first if r["nfe"] is not None]
    batch = [value for p in passes for value in p["batch"]]
    return {
        "clients": clients, "requests": len(first),
        "requests_per_s": statistics.median(len(p["results"]) / p["seconds"] for p in passes),
        "tokens_per_s": statistics.median(t / p["seconds"] for t, p in zip(tokens, passes)),
        "latency_p50_ms": statistics.median(latencies),
        "latency_p95_ms": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "completion_tokens": tokens[0],
        "mean_nfe": statistics.mean(r["nfe"] for r in known) if known else None,
        "tokens_per_forward": statistics.mean(r["per_forward"] for r in known) if known else None,
        "mismatches": sum(r["text"] != s for p in passes for r, s in zip(p["results"], serial_texts)),
        "batch_mean": statistics.mean(batch) if batch else None, "batch_max": max(batch, default=None),
    }


def measure(url: str, clients: list[int], count: int, max_tokens: int, repeats: int) -> tuple[str, list[dict]]:
    """The served model's id, and rows for serial and every client count, interleaved per pass so drift of a
    shared machine hits all alike."""
    from openai import OpenAI

    model = OpenAI(base_url=url + "/v1", api_key="none").models.list().data[0].id
    requests = workload(count)
    level(url, model, requests[:1], 0, max_tokens)  # warm-up: first forwards, allocator, connections
    plan = [0, *clients]
    passes = {c: [] for c in plan}
    for _ in range(repeats):
        for c in plan:
            passes[c].append(level(url, model, requests, c, max_tokens))
    serial_texts = [r["text"] for r in passes[0][0]["results"]]
    rows = [summarise("serial" if c == 0 else c, passes[c], serial_texts) for c in plan]
    for row in rows:
        row["vs_serial_tokens_per_s"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    return model, rows


def run(model: str = "minivl-dvlm", url: str | None = None, clients=(1, 4, 16), requests: int = 48,
        max_tokens: int = 32, decoding=None, repeats: int = 1, device: str | None = None) -> dict:
    """The whole benchmark: {"settings", "rows", "max_clients", "max_clients_vs_serial_tokens_per_s"}. Without
    `url`, a server for `model` with `decoding` as its defaults runs in this process while it lasts."""
    import torch

    from ..decoding.config import DecodingConfig
    from ..errors import DiffusionVLError

    clients = sorted(set(clients))
    if not clients or clients[0] < 1 or requests < 1 or max_tokens < 1 or repeats < 1:
        raise DiffusionVLError("--clients, --requests, --max-tokens and --repeats must be positive.")
    decoding = decoding or DecodingConfig(max_new_tokens=256)
    own = url is None  # the decoding settings are this command's only when it starts the server
    settings = {"model": model, "url": url, "clients": clients, "requests": requests, "max_tokens": max_tokens,
                "repeats": repeats, "steps": decoding.steps if own else None,
                "strategy": str(decoding.remasking_strategy) if own else None,
                "threshold": decoding.confidence_threshold if own else None, "seed": SEED, "image_size": IMAGE_SIZE}
    if url is None:
        from .cli import build
        from .config import ServerConfig
        from .local import serving

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        app = build(ServerConfig(model=model, decoding=decoding, max_batch=max(clients)), device)
        with serving(app) as local:
            _, rows = measure(local, clients, requests, max_tokens, repeats)
    else:  # the server's own model, whatever --model says
        settings["model"], rows = measure(url.rstrip("/"), clients, requests, max_tokens, repeats)
    top = rows[-1]
    return {"settings": {**settings, "device": device,
                         "torch_threads": torch.get_num_threads() if url is None else None,
                         "torch": torch.__version__, "timestamp": datetime.now(timezone.utc).isoformat()},
            "rows": rows, "max_clients": top["clients"],
            "max_clients_vs_serial_tokens_per_s": top["vs_serial_tokens_per_s"]}


def markdown(result: dict) -> str:
    s = result["settings"]
    where = s["url"] or f"in-process on {s['device']} ({s['torch_threads']} torch threads)"
    decoding = "the server's decoding defaults" if s["url"] else \
        f"{s['strategy']} (steps {s['steps']}, threshold {s['threshold']})"
    title = (f"{s['model']} served {where}: {s['requests']} MiniVL test requests per level, max_tokens "
             f"{s['max_tokens']}, {decoding}, median of {s['repeats']} passes")
    lines = [title, "",
             "| clients | requests/s | tokens/s | p50 ms | p95 ms | tokens/forward | vs serial | mismatches |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        per_forward = "-" if r["tokens_per_forward"] is None else f"{r['tokens_per_forward']:.2f}"
        lines.append(f"| {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} "
                     f"| {r['latency_p50_ms']:.0f} | {r['latency_p95_ms']:.0f} | {per_forward} "
                     f"| {r['vs_serial_tokens_per_s']:.2f}x | {r['mismatches']} |")
    ratio = result["max_clients_vs_serial_tokens_per_s"]
    lines += ["", f"{result['max_clients']} clients vs serial: {ratio:.2f}x tokens/s"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_decoding_arguments

    parser.add_argument("--model", default="minivl-dvlm", help="checkpoint folder or shipped name to serve "
                        "in-process (ignored with --url)")
    parser.add_argument("--url", help="benchmark the server already running at this base URL (http://host:port)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=48, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--repeats", type=int, default=1, help="passes; rates are their median")
    parser.add_argument("--device", help="in-process server: cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--json", help="also write the result to this JSON file")
    add_decoding_arguments(parser)


def main(args: argparse.Namespace) -> None:
    from ..cli import decoding_config
    from ..errors import require_extra
    from .cli import require_serving_packages

    require_extra("serve", "diffusionvl bench-serve", "openai", "httpx")
    if args.url is None:  # it starts a server of its own
        require_serving_packages()

    result = run(args.model, args.url, args.clients, args.requests, args.max_tokens, decoding_config(args),
                 args.repeats, args.device)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
