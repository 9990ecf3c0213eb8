"""How long a run will take, said before its long stages start.

Each stage's work is counted from the config: tokens it trains on (forward + backward + AdamW),
tokens it only reads (forward passes of frozen models), and batched sampling steps (one step
advances up to 64 answers by one token; evaluations and labeling run up to max_new_tokens steps
per batch). Two speeds of this machine price that work, measured in a few seconds on a freshly
initialised model of the run's architecture: training tokens/s at the pretraining shape, and the
time of one sampling step of 64 rows. Conversation lengths come from the run's chat data when the
world and tokenizer exist, else the configured sequence length stands in (an upper bound).

It is an estimate: it counts every evaluation batch at its full max_new_tokens (most stop early),
and another process competing for the CPU can slow any stage several times over.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from picochat.config import RunConfig
from picochat.core.chat import render_chat
from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT, lm_loss
from picochat.core.precision import autocast, default_device, resolve_precision
from picochat.core.tokenizer import Tokenizer
from picochat.eval.sharpened import SHARPENING_TEMPERATURES
from picochat.layout import stage_reference, tokenizer_file
from picochat.world import read_chat_examples

SAMPLE_ROWS = 64  # rows per sampling batch of the evaluations (picochat.eval.gold_eval.answer_prompts)
FORWARD_COST = 1 / 3  # a forward pass costs about a third of forward + backward
# Labeling batches (64 prompts x K answers) are mostly one-line answers and a few long stories:
# once the short answers finish, the sampler drops their rows and the rest steps at a fraction of
# the cost. Measured on the tiny preset (4,000 x 8): 3.4 min where full-width steps priced 8 min
# (0.42); since each prompt's K answers share one prefill (`generate`), the stage runs 1.41x faster.
LABEL_STEP_SHARE = 0.30
# pretrain.train.compile: the tiny preset's pretraining step with its loss compiled ran 1.58-1.62x faster
# than eager at 2 and 1 threads after ~20 s of compiling (bench/README.md); the probe times eager steps.
COMPILE_SPEEDUP = 1.6
COMPILE_SECONDS = 45.0  # twice: the thread watch's first 1-thread probe compiles again (contention.py)


@dataclass
class Speeds:
    train_tokens_per_s: float
    sample_step_s: float  # one sampling step of SAMPLE_ROWS rows


@dataclass
class Work:
    train_tokens: float = 0.0
    forward_tokens: float = 0.0
    sample_steps: float = 0.0
    fixed_seconds: float = 0.0  # e.g. compiling

    def seconds(self, speeds: Speeds) -> float:
        return (self.fixed_seconds
                + (self.train_tokens + FORWARD_COST * self.forward_tokens) / speeds.train_tokens_per_s
                + self.sample_steps * speeds.sample_step_s)


def measure_speeds(cfg: RunConfig, vocab_size: int, repeats: int = 3) -> Speeds:
    """Training tokens/s and the time of one 64-row sampling step of the run's architecture here:
    the best of a few short timings (as timeit does), so that a moment of competition for the CPU
    does not inflate the whole estimate. The global random state is left as it was: the stages
    after the probe draw the same numbers as without it."""
    with torch.random.fork_rng(devices=[]):
        return _measure_speeds(cfg, vocab_size, repeats)


def _measure_speeds(cfg: RunConfig, vocab_size: int, repeats: int) -> Speeds:
    device = default_device()
    precision = resolve_precision(cfg.pretrain.train.precision, device)
    model = GPT(dataclasses.replace(cfg.model, vocab_size=vocab_size)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    batch = min(cfg.pretrain.train.batch_size, 8)  # enough rows for a steady rate, few enough to be quick
    seq = min(cfg.pretrain.seq_len, cfg.model.max_seq_len)
    ids = torch.randint(0, vocab_size, (batch, seq + 1), generator=gen).to(device)

    def train_step() -> None:
        with autocast(precision, device):
            loss = lm_loss(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s = _best_time(train_step, repeats, device)
    new_tokens = 8
    prompts = torch.randint(0, vocab_size, (SAMPLE_ROWS, 16), generator=gen).tolist()
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, seed=0)  # no stop ids: all steps run
    model.eval()
    with torch.no_grad(), autocast(precision, device):
        sample_s = _best_time(lambda: generate(model, prompts, sampling), repeats, device)
    return Speeds(batch * seq / step_s, sample_s / new_tokens)


def _best_time(fn, repeats: int, device: torch.device) -> float:
    """The shortest of `repeats` timed calls, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def chat_row_tokens(cfg: RunConfig, out: Path, batch_size: int) -> float:
    """Tokens per padded chat row: the mean over random batches of the longest conversation in the
    batch (batches pad to their longest row). From the run's world chat data when it exists."""
    data, tok_file = out / "world" / "chat_train.jsonl", tokenizer_file(out)
    cap = min(cfg.sft.seq_len, cfg.model.max_seq_len)
    if cfg.sft.sources or not data.exists() or not tok_file.exists():
        return float(cap)

    tokenizer = Tokenizer.load(tok_file)
    examples = read_chat_examples(data)[:400]
    lengths = [min(cap, len(render_chat(tokenizer, e.messages)[0])) for e in examples]
    rng = random.Random(0)
    batches = [max(rng.sample(lengths, min(batch_size, len(lengths)))) for _ in range(20)]
    return sum(batches) / len(batches)


def _gold_eval_steps(n_prompts: int, n_samples: int, max_new: int, n_models: int) -> float:
    """Sampling steps of evaluate_gold on n_models models: greedy plus n_samples samples per prompt."""
    if n_prompts <= 0:
        return 0.0
    batches = math.ceil(n_prompts / SAMPLE_ROWS) + math.ceil(n_prompts * n_samples / SAMPLE_ROWS)
    return n_models * batches * max_new


def _evaluates_sft_as_sft_does(cfg: RunConfig, stage: str) -> bool:
    """Whether PPO or DPO evaluates the SFT model exactly as the SFT stage did (prompts, samples,
    answer length, seed): it then reads those answers from the run's answer cache."""
    s, c = cfg.sft, getattr(cfg, stage)
    same = (s.eval_prompts, s.eval_samples, s.eval_max_new_tokens, s.train.seed, s.train.precision) == \
        (c.eval_prompts, c.eval_samples, c.eval_max_new_tokens, c.train.seed, c.train.precision)
    return same and stage_reference(c.init, "sft") == "sft"


def stage_work(name: str, cfg: RunConfig, chat_tokens: float) -> Work | None:
    """The work of one stage under this config (None: world and tokenizer, which take seconds)."""
    if name == "pretrain":
        t, seq = cfg.pretrain.train, cfg.pretrain.seq_len
        evals = t.max_steps // t.eval_every + 1 if t.eval_every else 1
        speedup = COMPILE_SPEEDUP if t.compile else 1.0
        return Work(train_tokens=t.max_steps * t.batch_size * t.grad_accum_steps * seq / speedup,
                    forward_tokens=evals * t.eval_batches * t.batch_size * seq,
                    fixed_seconds=COMPILE_SECONDS if t.compile else 0.0)
    if name == "sft":
        s = cfg.sft
        t = s.train
        return Work(train_tokens=t.max_steps * t.batch_size * t.grad_accum_steps * chat_tokens,
                    sample_steps=_gold_eval_steps(s.eval_prompts, s.eval_samples, s.eval_max_new_tokens, 2))
    if name == "label":
        lc = cfg.label
        batches = math.ceil(lc.n_prompts / lc.batch_prompts) + math.ceil(lc.n_test_prompts / lc.batch_prompts)
        return Work(sample_steps=batches * lc.max_new_tokens * max(1.0, lc.batch_prompts * lc.k / SAMPLE_ROWS)
                    * LABEL_STEP_SHARE)
    if name == "rm":
        t, lc = cfg.rm.train, cfg.label
        # then it scores the training answers (to fit its normalisation) and the held-out ones
        scored = (min(cfg.rm.normalize_on, lc.n_prompts) + lc.n_test_prompts) * lc.k * chat_tokens
        members = cfg.rm.ensemble
        return Work(train_tokens=members * t.max_steps * t.batch_size * t.grad_accum_steps * lc.k * chat_tokens,
                    forward_tokens=members * scored)
    if name == "ppo":
        p = cfg.ppo
        answers = p.rollout_prompts * p.samples_per_prompt
        rows = answers * (chat_tokens / 2 + p.max_new_tokens)  # a prompt, padded to the longest answer
        trained = 2 if p.advantage == "gae" else 1  # policy (+ value)
        # advantage=best leaves out the rows it does not reinforce (PPOTrainer.skip_idle_rows)
        if p.advantage == "best" and p.update_skips_idle_rows:
            trained /= p.samples_per_prompt
        # policy, reference (+ value) (+ the reward model's members)
        read = 2 + (p.advantage == "gae") + (p.reward == "rm") * cfg.rm.ensemble
        per_iteration = Work(train_tokens=trained * p.epochs * rows, forward_tokens=read * rows,
                             sample_steps=p.max_new_tokens * max(1.0, answers / SAMPLE_ROWS))
        # with your own prompts the evaluation samples answers of the rollout length (ppo.eval_* in config.py)
        eval_new = p.max_new_tokens if p.prompts else p.eval_max_new_tokens
        models = 1 if _evaluates_sft_as_sft_does(cfg, "ppo") and not p.prompts else 2  # policy (+ SFT)
        evals = _gold_eval_steps(p.eval_prompts, p.eval_samples, eval_new, models) \
            + _gold_eval_steps(p.eval_prompts, 0, eval_new, 1)  # + KL samples
        return Work(per_iteration.train_tokens * p.iterations, per_iteration.forward_tokens * p.iterations,
                    per_iteration.sample_steps * p.iterations + evals)
    if name == "dpo":
        d = cfg.dpo
        t = d.train
        pair_tokens = t.max_steps * t.batch_size * t.grad_accum_steps * 2 * chat_tokens
        # the reference pass scores the rows the batches draw (at most pair_tokens' worth)
        models = 1 if _evaluates_sft_as_sft_does(cfg, "dpo") else 2  # policy (+ SFT)
        gold = 0.0 if d.sources else _gold_eval_steps(d.eval_prompts, d.eval_samples, d.eval_max_new_tokens, models)
        evals = gold + _gold_eval_steps(d.eval_prompts, d.kl_samples - 1, d.eval_max_new_tokens, 1)  # + KL samples
        return Work(train_tokens=pair_tokens, forward_tokens=pair_tokens, sample_steps=evals)
    if name == "rounds":
        # each later round: labeling rlhf.prompts (of label.n_prompts + n_test_prompts), a reward
        # model on every ranking so far (its steps do not grow with them), PPO
        label, rm, ppo = (stage_work(s, cfg, chat_tokens) for s in ("label", "rm", "ppo"))
        labeled = cfg.rlhf.prompts / max(1, cfg.label.n_prompts + cfg.label.n_test_prompts)
        later = cfg.rlhf.rounds - 1
        return Work(later * (rm.train_tokens + ppo.train_tokens),
                    later * (rm.forward_tokens + ppo.forward_tokens),
                    later * (labeled * label.sample_steps + ppo.sample_steps))
    if name == "report":
        r = cfg.report
        compare = _gold_eval_steps(r.eval_prompts, 1, r.max_new_tokens, 4 + (cfg.rlhf.rounds > 1))  # + last round
        # the SFT model's best-of-n samples, and its answers at each lower temperature with their KL
        n_best = min(r.best_of_n_prompts, r.eval_prompts)
        best_of_n = math.ceil(n_best * r.best_of_n / SAMPLE_ROWS) * r.max_new_tokens if n_best else 0.0
        sharpened = 2 * len(SHARPENING_TEMPERATURES) * math.ceil(n_best * 4 / SAMPLE_ROWS) * r.max_new_tokens
        card = _benchmark_card_work(cfg)
        return Work(forward_tokens=card.forward_tokens,
                    sample_steps=compare + best_of_n + sharpened + card.sample_steps)
    return None


# Tokens of one multiple-choice item (every choice is a sequence): ~4 choices of ~100 tokens, and
# TruthfulQA's primer (~250 tokens) repeated for ~8 choices. Counted on the shared sets' first
# items with the tiny tokenizer.
CARD_ITEM_TOKENS = {"truthfulqa": 2400}
CARD_ITEM_TOKENS_DEFAULT = 500
CARD_CHAT_REPLY_TOKENS = 16  # the chat form's lettered reply (picochat.eval.benchmarks.card)


def _benchmark_card_work(cfg: RunConfig) -> Work:
    """The report's benchmark card: the 4 models by log-likelihood, the 3 chat models also in the
    chat form; GSM8K is greedy generation in both (a whole set, limit 0, counted as 1,000 items)."""
    e = cfg.eval
    if not e.tasks or not (e.data_dir or e.sources):
        return Work()
    items = e.limit or 1000
    batches = math.ceil(items / e.batch_size)
    choice_tasks = [t for t in e.tasks if t != "gsm8k"]
    chat_forms = 3 if "chat" in (e.forms or ["chat"]) else 0
    tokens = 4 * items * sum(CARD_ITEM_TOKENS.get(t, CARD_ITEM_TOKENS_DEFAULT) for t in choice_tasks)
    steps = chat_forms * len(choice_tasks) * batches * CARD_CHAT_REPLY_TOKENS
    if "gsm8k" in e.tasks:
        steps += (4 + chat_forms) * batches * e.max_new_tokens
    return Work(forward_tokens=tokens, sample_steps=steps * e.batch_size / SAMPLE_ROWS)


def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_seconds(cfg: RunConfig, out: Path, names: list[str], speeds: Speeds) -> dict[str, float | None]:
    chat_tokens = chat_row_tokens(cfg, Path(out), cfg.sft.train.batch_size)
    result: dict[str, float | None] = {}
    for name in names:
        work = stage_work(name, cfg, chat_tokens)
        result[name] = work.seconds(speeds) if work is not None else None
    return result
