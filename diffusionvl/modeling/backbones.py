"""What the wrapper needs from a wrapped model, one small adapter per family, stating only the differences.

An adapter turns token ids (and images) into input embeddings, names the decoder that takes them with an
explicit 4-D mask and rope positions, names the output head, and computes rope positions. Rope positions are
kept apart from the *sequence index* that defines blocks: under Qwen's M-RoPE they differ. Positions are
(A, N, L): A = 1 for plain 1-D positions, 3 for M-RoPE (temporal, height, width).
"""

from dataclasses import dataclass

import torch

from ..errors import DiffusionVLError


@dataclass
class VisionInputs:
    """Images of a batch, in the order their placeholders appear (row by row, left to right).

    pixel_values: Qwen's patches, (total patches, channels * temporal patch * patch * patch), or whole images
        (images, 3, H, W) for fixed-size encoders such as SigLIP.
    image_grid_thw: (images, 3) patch grid of each image; None for fixed-size encoders.
    """

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor | None = None

    def as_kwargs(self) -> dict:
        """The names a model's forward takes them under."""
        return {"pixel_values": self.pixel_values, "image_grid_thw": self.image_grid_thw}

    def select(self, images: list[int]) -> "VisionInputs | None":
        """The inputs of a subset of images (e.g. one row's), in the given order."""
        if not images:
            return None
        if self.image_grid_thw is None:
            return VisionInputs(self.pixel_values[images])
        patches = self.image_grid_thw.prod(-1).tolist()
        starts = [sum(patches[:i]) for i in range(len(patches))]
        rows = torch.cat([torch.arange(starts[i], starts[i] + patches[i]) for i in images])
        return VisionInputs(self.pixel_values[rows.to(self.pixel_values.device)], self.image_grid_thw[images])


def splice_images(embeds: torch.Tensor, slots: torch.Tensor, features) -> torch.Tensor:
    """Put image features where the placeholder tokens stand. embeds (N, L, H); slots (N, L) bool;
    features: a callable giving (image tokens, H), or None when no images were given (then no slot may be set).
    Callable, so the encoder runs only when there are images."""
    count = int(slots.sum())
    if features is None:
        if count:
            raise DiffusionVLError(
                f"the input holds {count} image tokens but no images were given; pass their pixel_values (and "
                "image_grid_thw), or drop the image tokens from the prompt."
            )
        return embeds
    features = features().to(embeds.dtype)
    if features.shape[0] != count:
        raise DiffusionVLError(
            f"the images give {features.shape[0]} image tokens but the text holds {count} placeholders; each "
            "image needs exactly one placeholder, expanded by the processor to its number of tokens."
        )
    return embeds.masked_scatter(slots[..., None].expand_as(embeds), features)


def assign_images(ids: torch.Tensor, image_token_id: int, sizes: list[int], vision: VisionInputs):
    """Each row's own images: rows take images in order until their placeholder count is used up.

    sizes: image tokens of each image. Returns one VisionInputs (or None) per row.
    """
    rows, image = [], 0
    for row in ids:
        count, mine = int((row == image_token_id).sum()), []
        while count > 0 and image < len(sizes):
            mine.append(image)
            count, image = count - sizes[image], image + 1
        if count != 0:
            raise DiffusionVLError(
                f"row {len(rows)} holds {int((row == image_token_id).sum())} image tokens, which do not add up to the "
                "sizes of the images left for it; build the ids and images together with the processor."
            )
        rows.append(vision.select(mine))
    return rows


class TextBackbone:
    """Any transformers causal LM: token embeddings in, `base_model` as decoder, 1-D positions."""

    position_axes = 1

    def __init__(self, model):
        self.model = model

    @property
    def decoder(self):
        return self.model.base_model

    @property
    def head(self):
        return self.model.get_output_embeddings()

    def embed(self, ids: torch.Tensor, vision: VisionInputs | None = None) -> torch.Tensor:
        if vision is not None:
            raise ValueError(f"{type(self.model).__name__} is a text model and takes no images.")
        return self.model.get_input_embeddings()(ids)

    def positions(self, ids, index: torch.Tensor, valid, vision=None) -> torch.Tensor:
        """(A, N, L) rope positions of a prompt laid out with per-row sequence `index` (N, L)."""
        return index[None]

    def split_rows(self, ids: torch.Tensor, vision: VisionInputs | None) -> list[VisionInputs | None]:
        """Each row's own images (None for a row without any)."""
        if vision is not None:
            raise ValueError(f"{type(self.model).__name__} is a text model and takes no images.")
        return [None] * len(ids)

    def decode(self, embeds, mask, positions, cache=None, use_cache=False) -> torch.Tensor:
        """Hidden states (N, Q, H) of `embeds` (N, Q, H) after the cache; positions (A, N, Q)."""
        position_ids = positions[0] if positions.shape[0] == 1 else positions
        return self.decoder(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, cache=cache,
            use_cache=use_cache,
        ).last_hidden_state


class Qwen2_5_VLBackbone(TextBackbone):
    """Qwen2.5-VL: the ViT and merger features replace the image placeholder embeddings.

    position_mode "1d": the sequence index on all three M-RoPE axes (what the released DiffusionVL checkpoints
    were trained with); "mrope": Qwen's own 3-D positions, text after an image continuing at its max + 1.
    """

    def __init__(self, model, position_mode: str, image_token_id: int):
        super().__init__(model)
        self.position_mode, self.image_token_id = position_mode, image_token_id
        self.position_axes = 3 if position_mode == "mrope" else 1

    @property
    def decoder(self):
        return self.model.model.language_model

    def check_grid(self, vision: VisionInputs) -> None:
        """image_grid_thw (images, 3) must describe pixel_values' rows exactly, in whole merge windows; else the
        ViT fails deep inside with an IndexError."""
        grid, merge = vision.image_grid_thw, self.model.model.visual.spatial_merge_size
        if grid is None:
            raise DiffusionVLError("Qwen2.5-VL pixel_values need image_grid_thw (the image processor returns both).")
        fix = "pass the pixel_values and image_grid_thw that the image processor returned together."
        if grid.dim() != 2 or grid.shape[1] != 3 or grid.is_floating_point():
            raise DiffusionVLError(
                f"image_grid_thw must be an integer (images, 3) tensor of (t, h, w), got {tuple(grid.shape)} "
                f"{grid.dtype}; {fix}"
            )
        patches, rows = int(grid.prod(-1).sum()), vision.pixel_values.shape[0]
        if patches != rows:
            raise DiffusionVLError(
                f"image_grid_thw describes {patches} patches (t*h*w summed over {len(grid)} images) but pixel_values "
                f"holds {rows} rows; {fix}"
            )
        if bool((grid[:, 1:] % merge).any()):
            raise DiffusionVLError(
                f"image_grid_thw {grid.tolist()} has an h or w that is not a multiple of the spatial merge size "
                f"{merge}; {fix}"
            )

    def image_features(self, vision: VisionInputs) -> torch.Tensor:
        """(image tokens, H): every image's merged patch features, concatenated in order."""
        self.check_grid(vision)
        visual = self.model.model.visual
        out = visual(vision.pixel_values.type(visual.dtype), grid_thw=vision.image_grid_thw)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def embed(self, ids: torch.Tensor, vision: VisionInputs | None = None) -> torch.Tensor:
        features = None if vision is None else lambda: self.image_features(vision)
        return splice_images(self.model.get_input_embeddings()(ids), ids == self.image_token_id, features)

    def split_rows(self, ids, vision):
        if vision is None:
            return [None] * len(ids)
        self.check_grid(vision)
        merge = self.model.model.visual.spatial_merge_size
        return assign_images(ids, self.image_token_id, (vision.image_grid_thw.prod(-1) // merge**2).tolist(), vision)

    def positions(self, ids, index, valid, vision=None):
        if self.position_mode == "1d":
            return index[None]
        grid = vision.image_grid_thw if vision is not None else None
        kinds = (ids == self.image_token_id).int()
        rope, _ = self.model.model.get_rope_index(ids, kinds, image_grid_thw=grid, attention_mask=valid.long())
        return rope


class CompositeBackbone(TextBackbone):
    """`VisionLanguageModel` (encoder + projector + causal LM): its LM decodes, its `embed` splices images."""

    @property
    def decoder(self):
        return self.model.language_model.base_model

    def embed(self, ids, vision=None):
        if vision is None:
            return self.model.embed(ids, None)
        return self.model.embed(ids, vision.pixel_values, vision.image_grid_thw)

    def split_rows(self, ids, vision):
        if vision is None:
            return [None] * len(ids)
        sizes = self.model.image_token_counts(vision.image_grid_thw, len(vision.pixel_values))
        return assign_images(ids, self.model.config.image_token_id, sizes, vision)
