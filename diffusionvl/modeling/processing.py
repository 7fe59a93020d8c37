"""Chat formatting, image placeholders, label masking and image loading, shared by training, evaluation and
serving. A `DiffusionVLProcessor` is an image processor plus a tokenizer, composed rather than subclassed
(Qwen's own processor wants a video processor, which needs torchvision)."""

import torch
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from ..errors import DiffusionVLError
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
        features, counts = self._image_features(images)
        expanded, used = [], 0
        for t in texts:
            n = t.count(IMAGE_PLACEHOLDER)
            expanded.append(self._expand(t, counts[used : used + n]))
            used += n
        self.tokenizer.padding_side = padding_side
        encoded = self.tokenizer(expanded, return_tensors=return_tensors, padding=True, add_special_tokens=False)
        return BatchFeature({**encoded, **features})

    def _image_features(self, images: list) -> tuple[dict, list[int]]:
        """The image processor's tensors and how many image tokens each image takes."""
        if not images:
            return {}, []
        features = dict(self.image_processor(images=images, return_tensors="pt"))
        if "image_grid_thw" in features:  # Qwen: one token per merged patch, so it depends on the image size
            return features, (features["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
        return features, [self.image_seq_length] * len(images)

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
        """Inputs with labels: only assistant content and its end-of-turn token are supervised. Images are
        processed once; the turn boundaries are found by tokenising the text alone."""
        eot_id = self.tokenizer.convert_tokens_to_ids(eot_token or "<|im_end|>")
        text = self.chat_text(messages)
        if text.count(IMAGE_PLACEHOLDER) != len(images or []):
            self(text, images)  # raises the placeholder-count error
        features, counts = self._image_features([load_image(i) for i in (images or [])])
        ids = self._token_ids(text, counts)
        labels = torch.full_like(ids, IGNORE)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self.chat_text(messages[:turn], add_generation_prompt=True) if turn else ""
            start = len(self._token_ids(prefix, counts))  # a conversation may open with the assistant
            stop = len(self._token_ids(self.chat_text(messages[: turn + 1]), counts))
            ends = (ids[start:stop] == eot_id).nonzero()
            end = start + int(ends[0]) + 1 if len(ends) else stop
            labels[start:end] = ids[start:end]
        return BatchFeature({"input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None],
                             "labels": labels[None], **features})

    def _token_ids(self, text: str, counts: list[int]) -> torch.Tensor:
        """(T,) ids of a conversation prefix whose images take `counts` tokens each, in order."""
        expanded = self._expand(text, counts[: text.count(IMAGE_PLACEHOLDER)])
        return torch.tensor(self.tokenizer(expanded, add_special_tokens=False)["input_ids"], dtype=torch.long)
