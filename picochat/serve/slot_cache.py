"""A KV cache for continuous batching: rows join and leave a running batch at any step.

`picochat.core.model.KVCache` keeps one buffer (n_layers, 2, B, n_kv_heads, max_len, head_dim) and
writes the new keys of *all* rows into the same slots [length, length + T). Continuous batching
keeps exactly that: every decode step writes one token per row into the slot `frontier`, so the
unchanged model code (`GPT.forward` with a `KVCache`) runs it. What is new is that rows no longer
share a history:

- `valid` (rows, slots) marks which slots of a row hold one of its keys. Attention reads it as the
  attention mask, so a row never sees the slots it does not own. Slot order does not matter to
  attention: RoPE is applied to each key at its row's own position before it is cached, and the
  position ids are given per row (`positions`).
- A new request's prompt is prefilled on its own and its keys are copied into a free row at the
  slots just before the frontier (the frontier moves forward first if the prompt is longer), so
  the new row decodes its next token into the frontier slot together with every other row.
- Active rows are kept in 0..n_rows-1: when a row finishes, the last row is moved into its place.
- The frontier only grows; when it reaches the end of the buffer, or wastes more than half of
  the attention width on gaps, `compact()` packs every row's keys to the left.
"""

from __future__ import annotations

import torch

from picochat.core.model import KVCache, ModelConfig


class SlotCache:
    def __init__(self, cfg: ModelConfig, n_slots: int, device: torch.device, dtype: torch.dtype):
        self.cfg, self.n_slots, self.device, self.dtype = cfg, n_slots, device, dtype
        self.kv = torch.zeros(self._shape(0), device=device, dtype=dtype)
        self.valid = torch.zeros((0, n_slots), dtype=torch.bool, device=device)  # (rows, slots)
        self.positions = torch.zeros(0, dtype=torch.long, device=device)  # (rows,) next RoPE position
        self.lengths: list[int] = []  # keys held per active row
        self.frontier = 0  # the slot every row writes its next token into
        self.n_rows = 0
        self.compactions = 0

    def _shape(self, rows: int) -> tuple[int, ...]:
        c = self.cfg
        return (c.n_layers, 2, rows, c.n_kv_heads, self.n_slots, c.head_dim)

    def _reserve(self, rows: int) -> None:
        """Grow the buffers (doubling) so that `rows` rows fit; memory is taken only when used."""
        capacity = self.kv.size(2)
        if rows <= capacity:
            return
        new_capacity = max(rows, 2 * capacity, 4)
        kv = torch.zeros(self._shape(new_capacity), device=self.device, dtype=self.dtype)
        kv[:, :, :capacity] = self.kv
        valid = torch.zeros((new_capacity, self.n_slots), dtype=torch.bool, device=self.device)
        valid[:capacity] = self.valid
        positions = torch.zeros(new_capacity, dtype=torch.long, device=self.device)
        positions[:capacity] = self.positions
        self.kv, self.valid, self.positions = kv, valid, positions

    def add_rows(self, prefill: KVCache, source_rows: list[int], prompt_lengths: list[int]) -> list[int]:
        """Copy prefilled prompts into new rows. `prefill` holds a LEFT-padded batch whose row
        source_rows[i] is a prompt of prompt_lengths[i] tokens (the same source row may be copied
        into several new rows: n answers to one prompt share one prefill). Returns the new rows."""
        longest = max(prompt_lengths)
        if longest >= self.n_slots:
            raise ValueError(f"a prompt of {longest} tokens does not fit the cache's {self.n_slots} slots")
        self.frontier = max(self.frontier, longest)  # rows already running get a masked gap
        first = self.n_rows
        self._reserve(first + len(source_rows))
        padded = prefill.length
        for i, (src, length) in enumerate(zip(source_rows, prompt_lengths)):
            row = first + i
            slots = slice(self.frontier - length, self.frontier)
            self.kv[:, :, row, :, slots] = prefill.kv[:, :, src, :, padded - length:padded]
            self.valid[row] = False
            self.valid[row, slots] = True
            self.positions[row] = length
            self.lengths.append(length)
        self.n_rows += len(source_rows)
        return list(range(first, self.n_rows))

    def step_inputs(self) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """(cache view, position_ids (R, 1), attention_mask (R, frontier + 1)) for one decode
        step of the R active rows; call `advance()` after the forward."""
        if self.frontier + 1 > self.n_slots or self.frontier > 2 * max(self.lengths) + 32:
            self.compact()
        R = self.n_rows
        view = KVCache(self.cfg, R, self.n_slots)
        view.kv = self.kv[:, :, :R]  # a view: the model's writes land in our buffer
        view.length = self.frontier
        mask = torch.cat([self.valid[:R, :self.frontier],
                          torch.ones((R, 1), dtype=torch.bool, device=self.device)], dim=1)
        return view, self.positions[:R, None], mask

    def advance(self) -> None:
        """Record that every active row now holds one more key, in the frontier slot."""
        R = self.n_rows
        self.valid[:R, self.frontier] = True
        self.positions[:R] += 1
        self.lengths = [n + 1 for n in self.lengths]
        self.frontier += 1

    def remove_row(self, row: int) -> int | None:
        """Free `row`; the last active row moves into its place. Returns the index the moved row
        had (so the caller can renumber it), or None when nothing moved."""
        last = self.n_rows - 1
        moved = None
        if row != last:
            self.kv[:, :, row] = self.kv[:, :, last]
            self.valid[row] = self.valid[last]
            self.positions[row] = self.positions[last]
            self.lengths[row] = self.lengths[last]
            moved = last
        self.valid[last] = False
        self.lengths.pop()
        self.n_rows = last
        if self.n_rows == 0:
            self.frontier = 0
        return moved

    def compact(self) -> None:
        """Pack every row's keys into slots 0..length-1 (their order is kept)."""
        width = max(self.lengths, default=0)
        for row in range(self.n_rows):
            slots = self.valid[row].nonzero().squeeze(1)
            n = slots.numel()
            keys = self.kv[:, :, row]  # (n_layers, 2, n_kv_heads, n_slots, head_dim), a view
            keys[:, :, :, width - n:width] = keys[:, :, :, slots].clone()
            self.valid[row] = False
            self.valid[row, width - n:width] = True
        self.frontier = width
        self.compactions += 1
