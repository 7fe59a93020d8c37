"""The OpenAI chat-completions request, checked field by field into what the engine needs.

Every problem becomes an `APIError` carrying the HTTP status and OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`), raised before the request reaches the engine, so a bad
request never disturbs the rows being decoded.
"""

import base64
import binascii
import io
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..decoding.config import SPECULATIVE, DecodingConfig
from ..errors import DiffusionVLError
from .config import ServerConfig

# Fields of the OpenAI request that are honoured, those accepted only at their default, and this server's extras
# (diffusion settings; `trace` streams every denoising step, for the web page).
FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "stream",
          "stream_options", "n", "user"}
DEFAULTS_ONLY = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "n": 1}
EXTRA = {"steps", "remasking_strategy", "confidence_threshold", "top_k", "trace"}
ROLES = ("system", "user", "assistant")


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A checked request. messages: {"role", "content": [{"type": "image"} | {"type": "text", "text"}]};
    images: decoded RGB images in the order of their parts."""

    messages: list[dict]
    images: list[Image.Image]
    config: DecodingConfig
    stream: bool = False
    include_usage: bool = False
    trace: bool = False
    seed: int | None = None


def parse_request(body, server: ServerConfig, served_name: str) -> ChatRequest:
    """The request body (parsed JSON) as a ChatRequest, or an APIError naming the field."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}.")
    unknown = sorted(set(body) - FIELDS - set(DEFAULTS_ONLY) - EXTRA)
    if unknown:
        raise APIError(400, f"unknown field(s) {unknown}; this server takes {sorted(FIELDS | EXTRA)}.", unknown[0],
                       "unknown_field")
    for name, default in DEFAULTS_ONLY.items():
        if name in body and body[name] not in (default, None):
            raise APIError(400, f"{name}={body[name]!r} is not supported; leave it out (or {default!r}).", name,
                           "unsupported_value")
    if "model" not in body:
        raise APIError(400, "the request needs a 'model' field; GET /v1/models lists it.", "model", "missing_field")
    if body["model"] != served_name:
        raise APIError(404, f"the model {body['model']!r} does not exist on this server; it serves {served_name!r}.",
                       "model", "model_not_found")
    messages, images = _messages(body.get("messages"), server)
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise APIError(400, "stream_options takes only {'include_usage': bool}.", "stream_options")
    stop = _stop(body.get("stop"))
    config = _decoding(body, server, stop)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise APIError(400, f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}.", "seed")
    return ChatRequest(messages, images, config, stream, bool(options.get("include_usage")), _flag(body, "trace"),
                       seed)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise APIError(400, f"{name} must be true or false, got {value!r}.", name)
    return value


def _stop(value) -> tuple[str, ...]:
    stops = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else None
    if value is None:
        return ()
    if stops is None or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise APIError(400, f"stop must be a non-empty string or a list of up to 4 of them, got {value!r}.", "stop")
    return stops


def _decoding(body: dict, server: ServerConfig, stop: tuple[str, ...]) -> DecodingConfig:
    """The server's decoding defaults with the request's settings; max_tokens within the server's limit."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if limit is not None and not isinstance(limit, bool) and isinstance(limit, int) and limit > server.max_tokens:
        raise APIError(400, f"{name}={limit} is over this server's limit of {server.max_tokens}; ask for fewer.",
                       name, "max_tokens_exceeded")
    options = dict(max_new_tokens=limit, temperature=body.get("temperature"), top_p=body.get("top_p"),
                   top_k=body.get("top_k"), steps=body.get("steps"), remasking_strategy=body.get("remasking_strategy"),
                   confidence_threshold=body.get("confidence_threshold"), stop_strings=stop or None)
    names = {"max_new_tokens": name}  # the request's own field name; the others are spelled alike
    for key, value in options.items():
        if key == "remasking_strategy" and value is not None and not isinstance(value, str):
            raise APIError(400, f"remasking_strategy must be a string, got {value!r}.", key)
        try:
            DecodingConfig.from_options(server.decoding, **{key: value})
        except DiffusionVLError as error:
            raise APIError(400, str(error), names.get(key, key)) from None
    if server.speculative_default and options["remasking_strategy"] is None and not options["temperature"]:
        options["remasking_strategy"] = SPECULATIVE  # greedy: lossless, the causal mode's own answer
    return DecodingConfig.from_options(server.decoding, **options)


def _messages(value, server: ServerConfig) -> tuple[list[dict], list[Image.Image]]:
    if not isinstance(value, list) or not value:
        raise APIError(400, "messages must be a non-empty list of {'role', 'content'} objects.", "messages")
    messages, images = [], []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES or "content" not in message:
            raise APIError(400, f"{where} must be an object with a role in {ROLES} and a content.", where)
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise APIError(400, f"{where}.content must be a string or a list of parts.", f"{where}.content")
        converted = []
        for number, part in enumerate(parts):
            converted.append(_part(part, f"{where}.content[{number}]", images, server))
        messages.append({"role": message["role"], "content": converted})
    if messages[-1]["role"] != "user":
        raise APIError(400, "the last message must be the user's: the model answers it.", "messages")
    if not any(part.get("text", "").strip() or part["type"] == "image" for m in messages for part in m["content"]):
        raise APIError(400, "the messages hold no text and no image: the prompt is empty.", "messages")
    return messages, images


def _part(part, where: str, images: list, server: ServerConfig) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        try:
            part["text"].encode("utf-8")
        except UnicodeEncodeError as error:  # JSON's "\ud800": a lone surrogate is no character at all
            raise APIError(400, f"{where}.text holds {part['text'][error.start]!r} at {error.start}, half of a "
                           "UTF-16 surrogate pair, which is not text; send the whole pair or remove it.",
                           where) from None
        return {"type": "text", "text": part["text"]}
    if kind != "image_url":
        raise APIError(400, f"{where} must be a text part {{'type': 'text', 'text'}} or an image part "
                       "{'type': 'image_url', 'image_url': {'url'}}.", where)
    url = part.get("image_url", {}).get("url") if isinstance(part.get("image_url"), dict) else None
    if not isinstance(url, str):
        raise APIError(400, f"{where}.image_url.url must be a string (a data URL).", where)
    if len(images) >= server.max_images:
        raise APIError(413, f"more than {server.max_images} images in one request; send fewer.", where,
                       "too_many_images")
    images.append(decode_image(_image_bytes(url, where, server), where, server))
    return {"type": "image"}


def _image_bytes(url: str, where: str, server: ServerConfig) -> bytes:
    """The bytes behind an image URL: a data URL always, a path or http(s) URL only where the server allows."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if not header.endswith(";base64"):
            raise APIError(400, f"{where}: a data URL must be base64 (data:image/png;base64,...).", where)
        if len(data) > server.max_image_bytes * 4 // 3 + 4:
            raise APIError(413, f"{where}: the image is over {server.max_image_bytes:,} bytes; send a smaller one.",
                           where, "image_too_large")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, f"{where}: the data URL is not valid base64.", where) from None
    if url.startswith(("http://", "https://")):
        if not server.allow_remote_images:
            raise APIError(400, f"{where}: image URLs are off on this server (start it with --allow-remote-images); "
                           "send the image as a data URL.", where, "remote_images_disabled")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                data = response.read(server.max_image_bytes + 1)
        except OSError as error:
            raise APIError(400, f"{where}: could not fetch {url}: {error}.", where) from None
    else:
        if not server.allow_local_images:
            raise APIError(400, f"{where}: file paths are off on this server (start it with --allow-local-images); "
                           "send the image as a data URL.", where, "local_images_disabled")
        path = Path(url.removeprefix("file://"))
        if not path.is_file():
            raise APIError(400, f"{where}: no image file at {path}.", where)
        data = path.read_bytes()[: server.max_image_bytes + 1]
    if len(data) > server.max_image_bytes:
        raise APIError(413, f"{where}: the image is over {server.max_image_bytes:,} bytes; send a smaller one.", where,
                       "image_too_large")
    return data


def decode_image(data: bytes, where: str, server: ServerConfig) -> Image.Image:
    """A decoded RGB image, its size checked from the header before any pixel is decoded."""
    from ..modeling.images import load_image

    try:
        with Image.open(io.BytesIO(data)) as header:
            pixels = header.width * header.height
    except Exception:  # noqa: BLE001 - load_image below names the failure
        pixels = 0
    if pixels > server.max_image_pixels:
        raise APIError(413, f"{where}: the image has {pixels:,} pixels, over this server's {server.max_image_pixels:,};"
                       " downscale it.", where, "image_too_large")
    try:
        return load_image(data)
    except DiffusionVLError as error:
        raise APIError(400, f"{where}: {error}", where, "invalid_image") from None


class TextDelta:
    """Text of a growing token list, handed out in pieces: what is new since the last piece, minus any tail that
    could still become a stop string (held back until the next block says) or an unfinished UTF-8 character."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop, self.sent, self.tokens = tokenizer, stop, "", []

    def text(self) -> str:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stop if s in text]
        return text[: min(cuts)] if cuts else text

    def feed(self, tokens: list[int], final: bool = False) -> str:
        self.tokens.extend(tokens)
        text = self.text()
        if not final:
            text = text.rstrip("\ufffd")
            hold = max([n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])], default=0)
            text = text[: len(text) - hold]
        if not text.startswith(self.sent):  # a tokenizer that re-spaces earlier text: send nothing new until final
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
