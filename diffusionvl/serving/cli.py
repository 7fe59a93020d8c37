"""`diffusionvl serve`: the OpenAI-compatible server, from the command line.

    diffusionvl serve [--model minivl-dvlm] [--host 127.0.0.1] [--port 8000] [--strategy ...]

Greedy requests are decoded speculatively where the model can (ServerConfig.speculative_default), unless
--strategy names the server's strategy; sampled ones with --strategy's (default: low_confidence_static).

Then: open http://127.0.0.1:8000/ for the web page, or use any OpenAI client with base_url .../v1.
"""

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_decoding_arguments, add_verifier_argument

    parser.add_argument("--model", default=None, help="a DiffusionVL checkpoint folder, or a model name: minivl-dvlm "
                        "(default), smollm2-dlm")
    parser.add_argument("--served-name", help="the model id clients ask for (default: the --model value)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="weights' dtype; auto keeps the checkpoint's")
    parser.add_argument("--max-batch", type=int, default=32, help="requests decoded together")
    parser.add_argument("--max-queue", type=int, default=256, help="waiting requests before answering 503")
    parser.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a request may ask")
    parser.add_argument("--max-prompt-tokens", type=int, default=8192, help="the longest prompt, images included")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds before a request gets 408")
    parser.add_argument("--body-timeout", type=float, default=30.0,
                        help="seconds a request body may pause before its connection is closed with 408")
    parser.add_argument("--api-key", default=os.environ.get("DIFFUSIONVL_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/* (default: $DIFFUSIONVL_API_KEY; none: open)")
    parser.add_argument("--metrics-without-key", action="store_true", help="leave /metrics open when a key is set")
    parser.add_argument("--allow-local-images", action="store_true", help="accept image_url values that are paths")
    parser.add_argument("--allow-remote-images", action="store_true", help="accept http(s) image URLs (fetched here)")
    add_decoding_arguments(parser)
    add_verifier_argument(parser)
    parser.set_defaults(strategy=None)  # None: speculative for greedy requests where the model has a causal mode


def server_config(args: argparse.Namespace):
    """The ServerConfig of the flags; bad values fail here, before any weight is read."""
    from ..checkpoints.folders import DEFAULT_MODEL
    from ..cli import decoding_config
    from .config import ServerConfig

    model = args.model or DEFAULT_MODEL
    return ServerConfig(model=model, served_name=args.served_name or Path(model).name, host=args.host,
                        port=args.port, max_batch=args.max_batch, max_queue=args.max_queue, max_tokens=args.max_tokens,
                        max_prompt_tokens=args.max_prompt_tokens,
                        request_timeout=args.request_timeout, body_timeout=args.body_timeout,
                        allow_local_images=args.allow_local_images, allow_remote_images=args.allow_remote_images,
                        api_key=args.api_key, metrics_without_key=args.metrics_without_key,
                        decoding=decoding_config(argparse.Namespace(**{  # the verifier checks speculative
                            **vars(args), "strategy": args.strategy or "low_confidence_static", "verifier": None})),
                        speculative_default=args.strategy is None, verifier=args.verifier)


def require_serving_packages() -> None:
    """The server's packages are an extra: say how to install them instead of failing on an import."""
    from ..errors import require_extra

    require_extra("serve", "diffusionvl serve", "fastapi", "uvicorn", "prometheus_client")


def loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False


def build(config, device=None, dtype=None):
    """The app of `config`: its model loaded (a DiffusionVL; an AR folder is refused with the fix)."""
    require_serving_packages()
    from ..inference import open_model, open_processor
    from .app import create_app

    processor = open_processor(config.model)  # cheap: a wrong folder fails before the weights are read
    model = open_model(config.model, dtype=dtype, device=device, autoregressive=False)
    verifier = None
    if config.verifier is not None:
        verifier = model.as_verifier(open_model(config.verifier, dtype=dtype, device=device))
    return create_app(model, processor, config, config.served_name or Path(config.model).name, verifier)


def main(args: argparse.Namespace) -> None:
    require_serving_packages()  # before any import of them
    import torch
    import uvicorn

    from ..cli import torch_dtype

    config = server_config(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.api_key is None and not loopback(config.host):
        print(f"warning: serving on {config.host} without an API key: anyone who reaches this port can use it; "
              "set --api-key (or DIFFUSIONVL_API_KEY).", file=sys.stderr, flush=True)
    app = build(config, device, torch_dtype(args.dtype))
    print(f"serving {app.title} model {config.served_name} on http://{config.host}:{config.port}/ "
          f"(OpenAI base_url http://{config.host}:{config.port}/v1)", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
