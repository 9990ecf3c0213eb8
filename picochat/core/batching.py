"""Right padding: rows of different lengths laid out as one (N, T) batch.

Training and scoring batches pad on the right: with causal attention a real token never sees the
pads after it, so no attention mask is needed and each row computes what it would alone. (The
sampler pads prompts on the left instead, so every row's next token is in the last column; see
`picochat.core.generate` and `picochat.core.rollout.layout`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def right_pad(rows: Sequence[Sequence[int] | np.ndarray], fill: int | bool, dtype=np.int64) -> torch.Tensor:
    """Rows (token ids, masks, targets...) right-padded with `fill` to the longest: (N, T)."""
    T = max(len(r) for r in rows)
    out = np.full((len(rows), T), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)
