"""A KV cache for block decoding: preallocated once, written in place, advanced only by `commit`.

A forward writes its tokens' K/V right after the committed ones and attends to views of the buffer; nothing
is kept unless `commit(n)` says so. A denoising step therefore leaves the cache as it found it without a copy
or a crop (transformers' DynamicCache concatenates the whole cache on every step), and the next step simply
overwrites the same slots. Shapes: (N, heads, capacity, head_dim) per layer.
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer


class BlockLayer(DynamicLayer):
    """One layer's buffer; `length` tokens of it are committed."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        n, heads, _, dim = key_states.shape
        self.keys = key_states.new_zeros(n, heads, self.capacity, dim)
        self.values = value_states.new_zeros(n, value_states.shape[1], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"block cache overflow: {end} tokens for a capacity of {self.capacity}.")
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys, self.values = self.keys[indices], self.values[indices]


class BlockCache(Cache):
    """Committed K/V of every layer, with room for `capacity` tokens per row."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[BlockLayer(capacity) for _ in range(num_layers)])

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def commit(self, tokens: int) -> None:
        """Keep the first `tokens` tokens written by the last forward."""
        for layer in self.layers:
            layer.length += tokens

    def select_rows(self, rows: torch.Tensor, room: int) -> "BlockCache":
        """A new cache holding the committed K/V of `rows` (a copy), with room for `room` more tokens: what the
        rows still denoising a block attend to while the others have left its steps."""
        selected = BlockCache(len(self.layers), self.layers[0].length + room)
        for mine, theirs in zip(selected.layers, self.layers):
            if theirs.is_initialized:
                length = theirs.length
                mine.lazy_initialization(theirs.keys[rows, :, :0], theirs.values[rows, :, :0])
                mine.keys[:, :, :length] = theirs.keys[rows, :, :length]
                mine.values[:, :, :length] = theirs.values[rows, :, :length]
                mine.length = length
        return selected

    def write_rows(self, rows: torch.Tensor, source: "BlockCache", source_rows: torch.Tensor, start: int,
                   count: int) -> None:
        """Copy the K/V at columns [start, start + count) of `source`'s `source_rows` into this cache's `rows`:
        what a forward of a subset of rows wrote into its copy (select_rows) and should keep."""
        for mine, theirs in zip(self.layers, source.layers):
            mine.keys[rows, :, start : start + count] = theirs.keys[source_rows, :, start : start + count]
            mine.values[rows, :, start : start + count] = theirs.values[source_rows, :, start : start + count]

    def rebuilt(self, shift: int, capacity: int, rows: int, joining: "BlockCache | None" = None, start: int = 0,
                new_rows: int = 0) -> "BlockCache":
        """A new cache of `capacity` columns for a decode whose rows change: this cache's `rows` rows, their committed
        K/V moved `shift` columns right (or, negative, with the first -shift columns cut), then `new_rows` more rows:
        the committed K/V of `joining` placed at columns [start, ...), zeros elsewhere (padding, never attended).
        Both end at the same committed length, this one's plus `shift`."""
        length = self.layers[0].length + shift
        out = BlockCache(len(self.layers), capacity)
        theirs = joining.layers if joining is not None else [None] * len(self.layers)
        for mine, old, new in zip(out.layers, self.layers, theirs):
            mine.length = length
            template = old if old.is_initialized else new
            if template is None or not template.is_initialized:
                continue  # nothing computed yet: the first forward allocates (columns before `length` stay padding)
            n = rows
            mine.lazy_initialization(template.keys[:1, :, :0].expand(n + new_rows, -1, -1, -1),
                                     template.values[:1, :, :0].expand(n + new_rows, -1, -1, -1))
            if old.is_initialized:
                keep = old.length - max(0, -shift)
                mine.keys[:n, :, length - keep : length] = old.keys[:, :, old.length - keep : old.length]
                mine.values[:n, :, length - keep : length] = old.values[:, :, old.length - keep : old.length]
            if new is not None and new.is_initialized:
                mine.keys[n:, :, start : start + new.length] = new.keys[:, :, : new.length]
                mine.values[n:, :, start : start + new.length] = new.values[:, :, : new.length]
        return out
