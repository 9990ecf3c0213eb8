"""PPO for language models as small pure functions, each testable against hand-computed numbers.

Conventions (the same for every function here):

- B rows are responses (episodes), T is the number of response tokens (time steps).
- ``mask`` (B, T), float or bool: 1 for the real response tokens up to and including the end
  token, 0 after it (padding). A response is one episode: the action at step t is token t, the
  episode ends at the last valid token.
- Every statistic is taken over valid entries only, and the value of a tensor at a masked
  position never changes a loss, an advantage or a statistic (nor receives a gradient): invalid
  entries are replaced by 0 before any arithmetic, so even a NaN there is harmless.

The pieces, in the order a PPO step uses them:

1. ``core.rollout.logprobs_from_logits`` for the policy and the frozen reference model (B, T).
2. ``token_rewards``: −kl_coef·KL(policy‖ref) on every token plus the reward model's scalar
   score on the last token (Ziegler et al. 2019; InstructGPT).
3. ``gae``: advantages and value targets, backwards over each row.
4. ``masked_whiten`` the advantages, then for a few epochs of minibatches:
   ``policy_loss`` + vf_coef·``value_loss`` − ent_coef·``entropy_from_logits``.
5. ``AdaptiveKLController.update`` with the measured KL.

Log ``approx_kl`` and ``clipfrac`` (policy moved too far?), ``explained_variance`` (is the
critic learning?), and the KL to the reference (is the policy drifting from language?).
"""

from __future__ import annotations

import math

import torch


def _valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with its masked entries replaced by 0 (where, not multiply: NaN/inf there stay out)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is 1; over all dims (a scalar) or along ``dim``."""
    m = mask.to(x.dtype)
    if dim is None:
        return _valid(x, mask).sum() / m.sum()
    return _valid(x, mask).sum(dim) / m.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over valid entries (a scalar); unbiased divides by n − 1 (Bessel)."""
    mean = masked_mean(x, mask)
    var = masked_mean((_valid(x, mask) - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 valid entries, got {int(n.item())}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / sqrt(var + 1e-8) with mean and (unbiased) var over valid entries only.

    shift_mean=False adds the mean back (rescale only; TRL uses this for rewards). Masked entries
    come out as 0.
    """
    return whiten_with(x, mask, masked_mean(x, mask), masked_var(x, mask), shift_mean)


def whiten_with(x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                shift_mean: bool = True) -> torch.Tensor:
    """`masked_whiten` with given statistics (e.g. those of all processes' rollouts together)."""
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return _valid(whitened, mask)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy‖ref) from the log-probs of the sampled tokens (B, T).

    Tokens are sampled from the policy, so with d = lp − ref (http://joschu.net/blog/kl-approx.html):
    - "k1": d. Unbiased, but negative on single tokens; the InstructGPT penalty.
    - "k3": (r − 1) − log r with r = exp(ref − lp) = exp(−d). Unbiased and ≥ 0, lower variance.
    - "abs": |d|;  "mse": ½ d² (the "k2" estimator; biased, ≥ 0).
    """
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k3":
        return torch.expm1(-d) + d  # (r − 1) − log r, with log r = −d
    if kind == "abs":
        return d.abs()
    if kind == "mse":
        return 0.5 * d * d
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of k1, k3, abs, mse")


def _last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last valid token of each row (0 for an empty row)."""
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).argmax(dim=1)  # largest valid t


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of Ziegler et al. (2019) / InstructGPT.

    score (B,) is the reward model's scalar for the whole response; logprobs, ref_logprobs, mask
    (B, T). reward_t = −kl_coef·KL_t on every valid token, and the last valid token also gets
    the score; 0 after the end. Returns (rewards (B, T), kl (B, T)), both zero where masked.
    The KL is a per-token penalty so the policy pays for drifting from the reference where it
    drifts, which gives the critic something to predict at every step.
    """
    kl = _valid(kl_penalty(logprobs, ref_logprobs, kind), mask)  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    has_tokens = mask.bool().any(dim=1)  # (B,) an empty row gets no score
    last = _last_valid_index(mask)  # (B,)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += torch.where(has_tokens, score.to(rewards.dtype), torch.zeros_like(rewards[rows, last]))
    return rewards, kl


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95,
        last_values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over each row.

    rewards, values, mask (B, T); last_values (B,) is V of the state after the last valid token:
    None (the default) means 0, the episode ended (a finished response). Pass the critic's value
    there to bootstrap a row that was cut off before its episode ended (a rollout that ran out
    of steps, a time limit; see examples/cartpole_ppo.py).

        delta_t = r_t + gamma * V_{t+1} − V_t
        A_t     = delta_t + gamma * lam * A_{t+1}

    where V_{t+1} and A_{t+1} past the last valid token are last_values and 0. Returns
    (advantages (B, T), returns = advantages + values (B, T)), both 0 where masked. No gradient.
    """
    valid = mask.bool()
    rewards, values = _valid(rewards, valid), _valid(values, valid)
    B, T = rewards.shape
    if last_values is None:
        last_values = torch.zeros(B, dtype=values.dtype, device=values.device)
    last_values = last_values.to(values.dtype)  # (B,)
    advantages = torch.zeros_like(rewards)  # (B, T)
    for t in reversed(range(T)):
        if t + 1 < T:
            next_value = torch.where(valid[:, t + 1], values[:, t + 1], last_values)  # (B,) V_{t+1}
            next_advantage = advantages[:, t + 1]  # (B,) A_{t+1}, already 0 past the end
        else:
            next_value, next_advantage = last_values, torch.zeros_like(last_values)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(valid[:, t], advantage, torch.zeros_like(advantage))
    returns = _valid(advantages + values, valid)
    return advantages, returns


def rloo_advantages(seq_rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): seq_rewards (P, k), the rewards of k samples of
    each of P prompts -> (P, k), each minus the mean reward of the other k − 1 samples of its prompt.

    The baseline is the prompt's own difficulty, measured without the sample itself, so the
    estimate stays unbiased and a prompt whose samples all score alike teaches nothing."""
    k = seq_rewards.shape[1]
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got {k}")
    others_mean = (seq_rewards.sum(1, keepdim=True) - seq_rewards) / (k - 1)
    return seq_rewards - others_mean


def grpo_advantages(seq_rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024): seq_rewards (P, k) -> (P, k), each reward
    minus its prompt's mean, divided by its prompt's (unbiased) standard deviation + eps."""
    if seq_rewards.shape[1] < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt, got {seq_rewards.shape[1]}")
    mean = seq_rewards.mean(1, keepdim=True)
    std = seq_rewards.std(1, keepdim=True)
    return (seq_rewards - mean) / (std + eps)


def best_of_group_advantages(seq_rewards: torch.Tensor) -> torch.Tensor:
    """Reinforce only each prompt's best answer (RAFT, Dong et al. 2023; best-of-n distillation):
    seq_rewards (P, k) -> (P, k) with 1 for the highest reward of each row (the first on a tie) and
    0 elsewhere. No answer is pushed down, so probability mass moves towards the best answers
    rather than away from the worst ones."""
    best = seq_rewards.argmax(1, keepdim=True)  # (P, 1): the first maximum
    return torch.zeros_like(seq_rewards).scatter_(1, best, 1.0)


def sequence_to_token_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per response (B,) -> (B, T): the same value on every response token, 0 on padding."""
    return advantages[:, None].to(mask.dtype) * mask


def k3_kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The KL to the reference as a loss term (GRPO), instead of a penalty inside the reward: the
    mean over valid tokens of the k3 estimate exp(ref − lp) − (ref − lp) − 1 (Schulman 2020), which
    is ≥ 0, unbiased for KL(policy‖ref) on the policy's own samples, and differentiable in lp."""
    return masked_mean(kl_penalty(_valid(logprobs, mask), _valid(ref_logprobs, mask), "k3"), mask)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017), a loss to minimise (a scalar).

    logprobs (B, T) of the current policy (with grad); old_logprobs (B, T) of the policy that
    sampled the rollout; advantages (B, T). ratio = exp(lp − old);
    loss = mean over valid tokens of max(−A·ratio, −A·clip(ratio, 1 − eps, 1 + eps)):
    once the ratio has moved past the clip range in the direction the advantage favours, the
    clipped term wins the max and its gradient is 0, so one batch cannot push the policy far.

    stats (floats): approx_kl = mean((ratio − 1) − log ratio), the k3 estimate of KL(old‖new);
    clipfrac = fraction of tokens with |ratio − 1| > eps; ratio_mean, ratio_var.
    """
    log_ratio = _valid(logprobs - old_logprobs, mask)  # (B, T)
    ratio = torch.exp(log_ratio)
    advantages = _valid(advantages, mask)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask).item(),
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_range).to(ratio.dtype), mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_var": masked_var(ratio, mask).item() if mask.bool().sum() > 1 else 0.0,
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped value loss (as in the OpenAI baselines and cleanRL), a scalar.

    values (B, T) of the current critic (with grad), old_values (B, T) from the rollout, returns
    (B, T) from ``gae``. v_clip = old + clip(v − old, −eps, eps);
    loss = ½ · mean over valid of max((v − R)², (v_clip − R)²).
    stats (floats): vf_clipfrac = fraction of tokens where the clipped term is the larger one
    (its gradient is 0 there), value_mean.
    """
    values, old_values, returns = _valid(values, mask), _valid(old_values, mask), _valid(returns, mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask).item(),
            "value_mean": masked_mean(values, mask).item(),
        }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens of the entropy of the next-token distribution (a scalar, fp32).

    logits (B, T, V). H = logsumexp(z) − Σ softmax(z)·z. For logging (entropy collapsing to 0
    means the policy stopped exploring) and for an optional entropy bonus.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)  # (B, T)
    return masked_mean(entropy, mask)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R] over valid tokens: 1 is a perfect critic, 0 no better than a
    constant, negative worse than one. NaN when the returns do not vary."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0.0:
        return math.nan
    return (1.0 - masked_var(returns - values, mask) / var_returns).item()


class AdaptiveKLController:
    """Ziegler et al. (2019): steer the KL coefficient so the measured KL tracks a target.

    kl_coef *= 1 + clip(kl / target − 1, −0.2, 0.2) · n_steps / horizon. Too much KL raises the
    penalty, too little lowers it; the clip and the horizon keep each change small.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), float(state["horizon"])


class FixedKLController:
    """Same interface as AdaptiveKLController; the coefficient never changes."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
