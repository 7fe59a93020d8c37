"""Settings of `diffusionvl serve`, one frozen dataclass validated on construction."""

from dataclasses import dataclass, field

from ..decoding.config import DecodingConfig
from ..errors import DiffusionVLError


@dataclass(frozen=True)
class ServerConfig:
    """What the server accepts and how it batches.

    model: a checkpoint folder or a shipped name; served under `served_name` (default: the name or folder name).
    max_batch: rows decoded together; more requests wait in a queue of `max_queue`, beyond which a request gets 503.
    max_tokens: the largest max_tokens (max_completion_tokens) a request may ask for.
    max_prompt_tokens: the longest prompt, images' tokens included (the model's positions also bound it).
    max_image_bytes, max_image_pixels, max_images: per image (decoded bytes, width x height) and per request.
    request_timeout: seconds from arrival to the last token; a request past it is dropped with 408.
    body_timeout: seconds a request's body may pause between two chunks; a slower one is closed with 408.
    allow_local_images / allow_remote_images: accept `image_url` values that are file paths / http(s) URLs. Off by
        default: a server reachable by others should not read its own disk or fetch URLs on their behalf.
    api_key: when set, /v1/* (and /metrics, unless metrics_without_key) need `Authorization: Bearer <api_key>`;
        /health and the page stay open (the page asks for the key).
    decoding: the settings a request gets for what it does not set (steps, strategy, threshold, sampling).
    speculative_default: a greedy request that names no remasking_strategy is decoded speculatively where the model
        can (causal context and logit shift: its drafts verified by its own causal mode, lossless and faster);
        sampled requests, and every request to a model without a causal mode, get `decoding`'s strategy.
        `diffusionvl serve --strategy` names the strategy and turns this off.
    verifier: an autoregressive model (a folder or shipped name, e.g. minivl-ar) that checks speculative drafts, so
        those answers are its own greedy answers; it also lets a model without a causal mode (but with logit shift)
        decode speculatively. None: the model's own causal mode.
    """

    model: str = "minivl-dvlm"
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_queue: int = 256
    max_tokens: int = 1024
    max_prompt_tokens: int = 8192
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    request_timeout: float = 300.0
    body_timeout: float = 30.0
    allow_local_images: bool = False
    allow_remote_images: bool = False
    api_key: str | None = None
    metrics_without_key: bool = False
    decoding: DecodingConfig = field(default_factory=lambda: DecodingConfig(max_new_tokens=256))
    speculative_default: bool = True
    verifier: str | None = None

    def __post_init__(self):
        for name in ("port", "max_batch", "max_queue", "max_tokens", "max_prompt_tokens", "max_image_bytes",
                     "max_image_pixels", "max_images"):
            value = getattr(self, name)
            too_large = name == "port" and isinstance(value, int) and value > 65535
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or too_large:
                raise DiffusionVLError(f"{name} must be a positive integer{' up to 65535' if name == 'port' else ''}, "
                                       f"got {value!r}.")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise DiffusionVLError("api_key must be a non-empty string (or None for an open server).")
        for name in ("request_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise DiffusionVLError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}.")

    @property
    def max_request_bytes(self) -> int:
        """The largest body worth reading: every image as base64 (4/3 of its bytes), plus 1 MiB of text."""
        return self.max_images * (self.max_image_bytes * 4 // 3 + 1024) + 2**20
