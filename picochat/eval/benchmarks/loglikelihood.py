"""Log-likelihood of continuations given contexts, the way lm-evaluation-harness computes it.

A request is (context, continuation). As in the harness's `_encode_pair`, spaces that end the
context move to the continuation, the two are tokenized together and the continuation's tokens are
those after the context's own tokenization; the model reads the last max_seq_len tokens of context
+ continuation (minus the final token) and the answer is the sum of the continuation tokens' log
probabilities, with whether each was the greedy choice. Requests are sorted longest first and
scored in right-padded batches: with causal attention, padding after a row's tokens cannot change
them, so no attention mask (and no KV cache) is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from picochat.core.batching import right_pad
from picochat.core.precision import autocast
from picochat.core.tokenizer import Tokenizer


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of the context and of the continuation as the harness splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:  # the harness conditions an empty context on its end-of-text token
        return [tokenizer.eot_id], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def model_window(context_ids: Sequence[int], continuation_ids: Sequence[int], max_len: int) -> list[int]:
    """The tokens the model reads: context + continuation without its last token, cut from the left
    to `max_len` (the harness's `(context + continuation)[-(max_length + 1):][:-1]`)."""
    if not continuation_ids:
        raise ValueError("a continuation tokenized to nothing; every choice must have text")
    if len(continuation_ids) > max_len:
        raise ValueError(f"a continuation of {len(continuation_ids)} tokens does not fit the model's "
                         f"max_seq_len={max_len}")
    return (list(context_ids) + list(continuation_ids))[-(max_len + 1):][:-1]


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    precision: str = "fp32",
    batch_size: int = 32,
    show_progress: bool = False,
    desc: str = "log-likelihoods",
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), every token greedy) for each (context_ids,
    continuation_ids) request, in the order given."""
    device = next(model.parameters()).device
    max_len = model.cfg.max_seq_len
    windows = [model_window(c, x, max_len) for c, x in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(windows[i]))  # similar lengths batch together
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress, leave=False):
        chunk = order[start:start + batch_size]
        input_ids = right_pad([windows[i] for i in chunk], 0).to(device)  # (B, T)
        with autocast(precision, device):
            logits = model(input_ids)  # (B, T, V)
        for row, i in enumerate(chunk):
            n_input, targets = len(windows[i]), torch.tensor(requests[i][1], device=device)
            row_logits = logits[row, n_input - len(targets):n_input].float()  # (n_cont, V)
            logprobs = F.log_softmax(row_logits, dim=-1)
            total = logprobs.gather(-1, targets[:, None]).sum().item()
            greedy = bool((row_logits.argmax(-1) == targets).all())
            results[i] = (total, greedy)
    return results  # type: ignore[return-value]
