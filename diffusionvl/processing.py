"""Chat formatting, image placeholders, label masking and image loading, shared by training, evaluation and
serving. A `DiffusionVLProcessor` is an image processor plus a tokenizer, composed rather than subclassed
(Qwen's own processor wants a video processor, which needs torchvision)."""

import torch
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .errors import DiffusionVLError
from .images import load_image
from .tokens import IMAGE_TOKEN

IMAGE_PLACEHOLDER = "<image>"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
IGNORE = -100


class DiffusionVLProcessor(ProcessorMixin):
    """Text with `<image>` placeholders + images -> model inputs.

    Each `<image>` becomes as many `image_token`s as the image has merged patches (Qwen) or `image_seq_length`
    (fixed-size encoders), wrapped in
    `vision_start`/`vision_end` when they are given (Qwen's own layout, for "mrope" models; the released
    DiffusionVL checkpoints use no wrapper).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token=IMAGE_TOKEN,
                 vision_start=None, vision_end=None, image_seq_length=None, **kwargs):
        self.image_token, self.vision_start, self.vision_end = image_token, vision_start, vision_end
        self.image_seq_length = image_seq_length  # tokens per image of a fixed-size encoder (SigLIP + newline)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def _expand(self, text: str, counts: list[int]) -> str:
        pieces = text.split(IMAGE_PLACEHOLDER)
        out = pieces[0]
        for count, piece in zip(counts, pieces[1:]):
            tokens = self.image_token * count
            if self.vision_start is not None:
                tokens = self.vision_start + tokens + self.vision_end
            out += tokens + piece
        return out

    def __call__(self, text, images=None, return_tensors="pt", padding_side="left", **kwargs) -> BatchFeature:
        """Tokenise `text` (a string or a list) with its images, in placeholder order. Left padding by default."""
        texts = [text] if isinstance(text, str) else list(text)
        images = [load_image(i) for i in (images or [])]
        wanted = sum(t.count(IMAGE_PLACEHOLDER) for t in texts)
        if wanted != len(images):
            raise DiffusionVLError(
                f"the text has {wanted} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images were given; "
                "put one placeholder where each image belongs."
            )
        features = {}
        counts = []
        if images:
            features = dict(self.image_processor(images=images, return_tensors="pt"))
            if "image_grid_thw" in features:  # Qwen: one token per merged patch, so it depends on the image size
                counts = (features["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
            else:
                counts = [self.image_seq_length] * len(images)
        expanded, used = [], 0
        for t in texts:
            n = t.count(IMAGE_PLACEHOLDER)
            expanded.append(self._expand(t, counts[used : used + n]))
            used += n
        self.tokenizer.padding_side = padding_side
        encoded = self.tokenizer(expanded, return_tensors=return_tensors, padding=True, add_special_tokens=False)
        return BatchFeature({**encoded, **features})

    def chat_text(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The tokenizer's chat template over messages whose content may list {"type": "image"} parts."""
        flat = []
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                content = "".join(IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"] for part in content)
            flat.append({"role": message["role"], "content": content})
        return self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)

    def training_example(self, messages: list[dict], images=None, eot_token: str | None = None) -> BatchFeature:
        """Inputs with labels: only assistant content and its end-of-turn token are supervised."""
        eot_id = self.tokenizer.convert_tokens_to_ids(eot_token or "<|im_end|>")
        full = self(self.chat_text(messages), images, padding_side="right")
        ids = full["input_ids"][0]
        labels = torch.full_like(ids, IGNORE)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = self._length(messages[:turn], add_generation_prompt=True, images=images)
            stop = self._length(messages[: turn + 1], add_generation_prompt=False, images=images)
            ends = (ids[start:stop] == eot_id).nonzero()
            end = start + int(ends[0]) + 1 if len(ends) else stop
            labels[start:end] = ids[start:end]
        full["labels"] = labels[None]
        return full

    def _length(self, messages, add_generation_prompt: bool, images) -> int:
        """Token count of a conversation prefix, with the images its placeholders need."""
        text = self.chat_text(messages, add_generation_prompt=add_generation_prompt) if messages else ""
        needed = list(images or [])[: text.count(IMAGE_PLACEHOLDER)]
        return self(text, needed, padding_side="right")["input_ids"].shape[1] if text else 0
