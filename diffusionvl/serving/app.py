"""The OpenAI-compatible HTTP app: /v1/chat/completions (plain and streamed), /v1/models, /health, /metrics and
the web page at /. Requests are checked here (protocol.py), decoded by the scheduler's one engine loop.

Streaming sends one chunk per committed block (a speculative decode: per accepted run, as verified). With the
extra field `trace: true` it also sends, before each block's text, a chunk per denoising step, what the web page
draws:
    {"choices": [], "diffusion": {"block": 2, "step": 0, "tokens": [...], "masked": [...], "prompt": [...]}}
the row's block number and the step within it, then the block's B positions: token text (null while masked),
which are masks, and which hold the prompt's own last tokens (a first block). A speculative decode (a draft
verified by the causal mode, decoding/speculative.py) adds "verdict": per position "draft" (not checked yet),
"accepted" (the verifier agreed), "corrected" (the verifier's own token: a replaced draft or a block's first
token), or null for masks and prompt tokens.
"""

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..decoding.prompts import check_positions
from ..errors import DiffusionVLError
from ..inference import conversation_inputs
from ..model import vision_inputs
from .config import ServerConfig
from .metrics import Metrics
from .protocol import APIError, ChatRequest, TextDelta, parse_request
from .scheduler import Job, Scheduler


def create_app(model, processor, config: ServerConfig, served_name: str, verifier=None) -> FastAPI:
    """The app serving `model` (a DiffusionVL, in eval mode) under `served_name`; `verifier`: the model that checks
    its speculative drafts (model.as_verifier of config.verifier), else its own causal mode."""
    from ..inference import can_speculate

    if config.speculative_default and not can_speculate(model.config, verifier is not None):
        config = replace(config, speculative_default=False)  # nothing to verify drafts with
    tokenizer = getattr(processor, "tokenizer", processor)
    # no token spells more characters than the longest vocabulary entry: a prompt of more characters than the
    # token limit times that (twice, for normalisers that merge characters) is refused before it is tokenized
    max_prompt_chars = 2 * config.max_prompt_tokens * max(map(len, tokenizer.get_vocab()))
    metrics = Metrics()
    scheduler = Scheduler(model, tokenizer, config.max_batch, config.max_queue, metrics, verifier)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.stop()

    keyed = [Depends(key_check(config.api_key))]
    app = FastAPI(title="diffusionvl", lifespan=lifespan)
    app.state.scheduler, app.state.metrics = scheduler, metrics
    add_error_handlers(app, metrics)

    @app.get("/health")
    async def health():
        state = {"model": served_name, "active": scheduler.active, "queued": len(scheduler.waiting),
                 "auth": config.api_key is not None}
        if not scheduler.alive:  # nothing would answer a request: say so, so that a supervisor restarts us
            return JSONResponse({"status": "engine stopped", **state}, status_code=503)
        return {"status": "ok", **state}

    @app.get("/v1/models", dependencies=keyed)
    async def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": 0,
                                            "owned_by": "diffusionvl"}]}

    @app.get("/metrics", dependencies=[] if config.metrics_without_key else keyed)
    async def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat(request: Request):
        raw = await read_body(request, config.max_request_bytes, config.body_timeout)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON: {error}.", code="invalid_json") from None
        parsed = await run_in_threadpool(parse_request, body, config, served_name)
        ids, vision = await run_in_threadpool(prepare, model, processor, parsed, config, max_prompt_chars)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def send(kind, payload):  # called on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))
        job = Job(ids, vision, parsed.config, send, parsed.trace, parsed.seed,
                  time.monotonic() + config.request_timeout)
        scheduler.submit(job)
        reply = Reply(served_name, int(ids.shape[1]), TextDelta(tokenizer, parsed.config.stop_strings), tokenizer)
        if parsed.stream:
            return StreamingResponse(stream(reply, job, events, parsed, metrics), media_type="text/event-stream")
        return await complete(reply, job, events, request, metrics)

    return app


def key_check(api_key: str | None):
    """The dependency that guards a route: with an API key set, `Authorization: Bearer KEY` or a 401 in OpenAI's
    shape (compared in constant time)."""
    def authorized(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "this server needs an API key: send the header 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
    return authorized


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error answers in OpenAI's shape and is counted by status."""
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        metrics.count(error.status)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        """Whatever escaped the checks still answers in OpenAI's shape: a user error 400, anything else 500."""
        status = 400 if isinstance(error, DiffusionVLError) else 500
        metrics.count(status)
        kind = "invalid_request_error" if status == 400 else "server_error"
        return JSONResponse(APIError(status, f"{type(error).__name__}: {error}", kind=kind).body(), status_code=status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone):
        metrics.count(499)  # nginx's "client closed request": counted apart from the server's own errors
        return Response(status_code=499)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(error.status_code, str(error.detail), kind=kind).body(),
                            status_code=error.status_code)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused with 413 once it passes `limit` bytes (by its Content-Length, or while it streams in
    without one), so an oversized request is never held in memory whole; with 408 when it pauses for `timeout`
    seconds (a slow partial body would hold its connection forever); a client that leaves is `ClientGone`."""
    too_large = APIError(413, f"the request is over this server's limit of {limit:,} bytes; send smaller images.",
                         code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size, stream = [], 0, request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), timeout)
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body paused for over {timeout:g} s; send it whole.",
                           code="body_timeout", kind="timeout") from None
        except ClientDisconnect:
            raise ClientGone() from None
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer, nothing went wrong."""


def prepare(model, processor, request: ChatRequest, config: ServerConfig, max_chars: int):
    """Token ids (1, L) and vision inputs of a checked request, or an APIError (images on a text model, a prompt
    over the limits: over `max_chars` characters before tokenizing, then over the token limit)."""
    if request.images and not hasattr(processor, "chat_text"):
        raise APIError(400, "this model takes no images (it has no image processor); send text only.", "messages")
    chars = sum(len(part.get("text", "")) for message in request.messages for part in message["content"])
    if chars > max_chars:
        raise APIError(400, f"the prompt is {chars:,} characters, more than this server's {config.max_prompt_tokens} "
                       "tokens can hold; shorten it.", "messages", "context_length_exceeded")
    inputs = conversation_inputs(processor, request.messages, request.images)
    ids = inputs["input_ids"]
    if ids.shape[1] > config.max_prompt_tokens:
        raise APIError(400, f"the prompt is {ids.shape[1]} tokens, over this server's {config.max_prompt_tokens}; "
                       "shorten it.", "messages", "context_length_exceeded")
    try:
        check_positions(model, [ids.shape[1]], request.config)
    except DiffusionVLError as error:
        raise APIError(400, str(error), "messages", "context_length_exceeded") from None
    return ids, vision_inputs(inputs.get("pixel_values"), inputs.get("image_grid_thw"))


class Reply:
    """The pieces of OpenAI's response objects for one request."""

    def __init__(self, model: str, prompt_tokens: int, text: TextDelta, tokenizer):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.prompt_tokens, self.text, self.tokenizer = prompt_tokens, text, tokenizer

    def usage(self, job: Job) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": job.tokens,
                "total_tokens": self.prompt_tokens + job.tokens, "nfe": job.forwards,
                "tokens_per_forward": round(job.tokens / max(job.forwards, 1), 4)}

    def chunk(self, delta: dict | None, finish: str | None = None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    def step(self, trace: dict) -> str:
        tokens = [None if hidden else self.tokenizer.decode([token]) for token, hidden in zip(trace["ids"],
                                                                                                 trace["masked"])]
        diffusion = {"block": trace["block"], "step": trace["step"], "tokens": tokens, "masked": trace["masked"],
                     "prompt": trace["prompt"]}
        if "verdict" in trace:
            diffusion["verdict"] = trace["verdict"]
        return self.chunk(None, diffusion=diffusion)


async def stream(reply: Reply, job: Job, events: asyncio.Queue, request: ChatRequest, metrics: Metrics):
    """Server-sent events: the role, a chunk per block with text, the finish reason, usage if asked, [DONE]."""
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while True:
            kind, payload = await events.get()
            if kind == "step":
                yield reply.step(payload)
            elif kind == "tokens":
                text = reply.text.feed(payload)
                if text:
                    yield reply.chunk({"content": text})
            elif kind == "error":
                metrics.count(payload.status)
                yield f"data: {json.dumps(payload.body())}\n\n"
                return
            else:
                text = reply.text.feed([], final=True)
                if text:
                    yield reply.chunk({"content": text})
                yield reply.chunk({}, payload)
                if request.include_usage:
                    yield reply.chunk(None, usage=reply.usage(job))
                yield "data: [DONE]\n\n"
                metrics.count(200)
                return
    finally:
        job.cancelled = True  # a no-op once finished; frees the row when the client went away


async def complete(reply: Reply, job: Job, events: asyncio.Queue, request: Request, metrics: Metrics):
    """Wait for the whole answer while a watcher looks for the client going away (which frees the row)."""
    async def watch():
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)
        events.put_nowait(("gone", None))
    watcher = asyncio.create_task(watch())
    try:
        while True:
            kind, payload = await events.get()
            if kind == "tokens":
                reply.text.tokens.extend(payload)
            elif kind == "error":
                raise payload
            elif kind == "gone":
                return Response(status_code=499)  # nobody reads it; the row leaves at the end of the block
            elif kind == "done":
                metrics.count(200)
                message = {"role": "assistant", "content": reply.text.text()}
                return {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
                        "choices": [{"index": 0, "message": message, "finish_reason": payload}],
                        "usage": reply.usage(job)}
    finally:
        watcher.cancel()
        job.cancelled = True
