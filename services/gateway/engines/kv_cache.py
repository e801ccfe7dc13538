"""The batch KV cache of the transformers engine's continuous batching.

A ``transformers.DynamicCache`` whose per-layer tensors are ``[batch, kv_heads, T, head_dim]``,
left-padded: each sequence has its own real length and position ids, the 2-D attention mask
([batch, T], 1 for real positions) hides its padding (the causal mask is index-based and the
rotary positions come from ``position_ids``, so mixing lengths is exact). Layers keep spare room
along T so a decoding step writes its token in place. Sequences join with :func:`merge` after
their prefill and leave with :func:`keep_rows`, which also trims padding no sequence needs.
"""

from __future__ import annotations

from typing import Any

import torch


def _make_cache_classes() -> tuple[type, type]:
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A KV-cache layer whose ``keys``/``values`` ([B, H, T, D]) are views of buffers with
        spare room along T: a decoding step writes its token in place instead of concatenating
        (copying) the whole cache of the layer."""

        SPARE = 64  # extra positions reserved at each reallocation

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self._kbuf: torch.Tensor | None = None
            self._vbuf: torch.Tensor | None = None

        def _length(self) -> int:
            return 0 if self._kbuf is None else self.keys.shape[-2]

        def assign(self, keys: torch.Tensor, values: torch.Tensor, spare: int | None = None) -> None:
            """Replace the contents with ``keys``/``values`` (copied into new buffers)."""
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            n = keys.shape[-2]
            cap = n + (self.SPARE if spare is None else spare)
            shape = (keys.shape[0], keys.shape[1], cap, keys.shape[3])
            self._kbuf = keys.new_empty(shape)
            self._vbuf = values.new_empty((values.shape[0], values.shape[1], cap, values.shape[3]))
            self._kbuf[:, :, :n].copy_(keys)
            self._vbuf[:, :, :n].copy_(values)
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]

        def select(self, rows: torch.Tensor, start: int) -> None:
            """Keep batch ``rows`` and drop the first ``start`` positions (one copy, spare room kept)."""
            n = self._length()
            self._kbuf = self._kbuf.index_select(0, rows)[:, :, start:]
            self._vbuf = self._vbuf.index_select(0, rows)[:, :, start:]
            self.keys, self.values = self._kbuf[:, :, : n - start], self._vbuf[:, :, : n - start]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, m = self._length(), key_states.shape[-2]
            if self._kbuf is None:
                self.assign(key_states, value_states)
                return self.keys, self.values
            if n + m > self._kbuf.shape[-2]:
                self.assign(self.keys, self.values, spare=m + self.SPARE)
            self._kbuf[:, :, n:n + m].copy_(key_states)
            self._vbuf[:, :, n:n + m].copy_(value_states)
            self.keys, self.values = self._kbuf[:, :, :n + m], self._vbuf[:, :, :n + m]
            return self.keys, self.values

    class BatchCache(DynamicCache):
        """A ``DynamicCache`` of :class:`GrowingLayer` layers (full attention in every layer; the
        model's masks still apply sliding windows)."""

        def __init__(self) -> None:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    return GrowingLayer, BatchCache


_CACHE_CLASSES: tuple[type, type] | None = None


def new_batch_cache() -> Any:
    """An empty batch cache (a ``transformers.DynamicCache`` of growing layers) for a forward."""
    global _CACHE_CLASSES
    if _CACHE_CLASSES is None:
        _CACHE_CLASSES = _make_cache_classes()
    return _CACHE_CLASSES[1]()


def zero_padding(cache: Any, mask: torch.Tensor) -> None:
    """Zero the KV of the padding positions (``mask`` [B, T] 0) so nothing undefined ever enters
    the batch cache."""
    pad = (mask == 0)[:, None, :, None]
    for layer in cache.layers:
        layer.keys.masked_fill_(pad, 0)
        layer.values.masked_fill_(pad, 0)


def take_rows(cache: Any, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values of batch ``rows`` (copies)."""
    return [(layer.keys.index_select(0, rows), layer.values.index_select(0, rows)) for layer in cache.layers]


def _lpad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(batch: Any, mask: torch.Tensor | None, fresh: Any, new_kv: list[tuple[torch.Tensor, torch.Tensor]],
          new_mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Append the sequences ``new_kv`` / ``new_mask`` ([b, L], just prefilled into ``fresh``)
    to the running ``batch`` cache and its ``mask`` ([B, T]), left-padding the shorter side.
    Without a running batch (``batch`` None), ``fresh`` becomes the batch. Returns the batch
    cache and its mask ([B + b, max(T, L)])."""
    if batch is None or mask is None:
        for layer, (k, v) in zip(fresh.layers, new_kv):
            layer.assign(k, v)
        return fresh, new_mask
    T, L = mask.shape[1], new_mask.shape[1]
    width = max(T, L)
    for layer, (k, v) in zip(batch.layers, new_kv):
        layer.assign(torch.cat([_lpad(layer.keys, width - T, 2), _lpad(k, width - L, 2)], dim=0),
                     torch.cat([_lpad(layer.values, width - T, 2), _lpad(v, width - L, 2)], dim=0))
    return batch, torch.cat([_lpad(mask, width - T, 1), _lpad(new_mask, width - L, 1)], dim=0)


def keep_rows(cache: Any, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Keep batch ``rows`` of the cache and trim the padding columns no kept row needs any more;
    returns the new mask."""
    mask = mask.index_select(0, rows)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else 0
    for layer in cache.layers:
        layer.select(rows, start)
    return mask[:, start:]
