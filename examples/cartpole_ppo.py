"""PPO on CartPole-v1, with the very functions picochat uses to train a language model.

If the PPO math in ``picochat.algos.ppo`` is right, it must solve a classic control task
too: this script is cleanRL's ``ppo.py`` (same network, same hyperparameters) with its GAE loop
and losses replaced by imports. It reaches the maximum return of 500 in a few hundred thousand
steps, in about a minute on one CPU core. Read it top to bottom.

    pip install 'picochat[rl]'          # gymnasium
    python examples/cartpole_ppo.py --total-timesteps 500000 --seed 1

The one difference from a language model is the shape of the data. For a language model a row
is one response: it starts at the prompt and ends at the end token. Here a rollout is
``num_steps`` steps of ``num_envs`` environments, and an episode can end anywhere inside it (the
environment then resets itself) or be cut off by the end of the rollout. We keep ``gae``
ignorant of that: ``episodes_as_rows`` cuts the rollout into one row per episode piece, exactly
like a batch of responses (mask 1 on its steps, 0 after), and ``gae``'s ``last_values`` gives
the value of the state after a row's last step: 0 if the pole fell (the episode is over),
V(next state) if the rollout or CartPole's 500-step time limit cut the episode short.
(cleanRL instead threads a ``dones`` array through its GAE loop and treats a time limit like a
fall.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from picochat.algos.ppo import explained_variance, gae, masked_mean, masked_whiten, policy_loss, value_loss


@dataclass
class Args:
    """cleanRL's defaults for CartPole; every field is also a --flag."""

    total_timesteps: int = field(default=500_000, metadata={"help": "environment steps in all, over all envs"})
    seed: int = field(default=1, metadata={"help": "seed for torch and the environments"})
    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id (discrete actions)"})
    num_envs: int = field(default=4, metadata={"help": "environments stepped side by side"})
    num_steps: int = field(default=128, metadata={"help": "steps per environment per rollout"})
    learning_rate: float = field(default=2.5e-4, metadata={"help": "Adam learning rate at the start"})
    anneal_lr: bool = field(default=True, metadata={"help": "decay the learning rate linearly to 0"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda (bias/variance of advantages)"})
    num_minibatches: int = field(default=4, metadata={"help": "minibatches per epoch over the rollout"})
    update_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    clip_coef: float = field(default=0.2, metadata={"help": "PPO clip range for the ratio and the value"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient clipping norm"})
    eval_episodes: int = field(default=20, metadata={"help": "greedy-policy episodes evaluated at the end"})
    log_every: int = field(default=1, metadata={"help": "print one line every this many iterations (0: never)"})


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (as in cleanRL and the OpenAI baselines)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs, 2 x 64 tanh units each."""

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, 64)), nn.Tanh(),
            layer_init(nn.Linear(64, n_actions), std=0.01),  # near-uniform policy at the start
        )

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)  # (N,)

    def policy(self, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.actor(obs))  # over (N, n_actions)


def episodes_as_rows(dones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a rollout into one row per episode piece, the layout ``gae`` expects.

    dones (E, T) bool, True where an episode ended at that step. A row ends at a done or at the
    rollout's last step. Returns env_idx, step_idx, mask, each (S, T): row s covers steps
    step_idx[s, :L] of env env_idx[s, 0], mask 1 on those L steps and 0 after (indices there 0).
    So ``x[env_idx, step_idx]`` turns any (E, T) rollout tensor into (S, T) rows.
    """
    E, T = dones.shape
    segments = []  # (env, first step, one past the last step)
    for env in range(E):
        start = 0
        for t in range(T):
            if dones[env, t] or t == T - 1:
                segments.append((env, start, t + 1))
                start = t + 1
    env_idx = torch.zeros(len(segments), T, dtype=torch.long)
    step_idx = torch.zeros(len(segments), T, dtype=torch.long)
    mask = torch.zeros(len(segments), T, dtype=torch.bool)
    for row, (env, start, end) in enumerate(segments):
        env_idx[row] = env
        step_idx[row, : end - start] = torch.arange(start, end)
        mask[row, : end - start] = True
    return env_idx, step_idx, mask


@torch.no_grad()
def evaluate(agent: Agent, env_id: str, episodes: int, seed: int) -> list[float]:
    """Returns of the greedy policy (argmax action) over fresh episodes."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        episode_return, done = 0.0, False
        while not done:
            logits = agent.actor(torch.as_tensor(obs, dtype=torch.float32))
            obs, reward, terminated, truncated, _ = env.step(int(logits.argmax()))
            episode_return += float(reward)
            done = terminated or truncated
        returns.append(episode_return)
    env.close()
    return returns


def train(total_timesteps: int = Args.total_timesteps, seed: int = Args.seed, verbose: bool = True,
          **overrides) -> dict:
    """Train PPO; returns {"final_eval_return", "steps", "seconds", "episode_returns", ...}.

    overrides: any other field of Args (num_envs=8, ent_coef=0.0, eval_episodes=0, ...).
    """
    args = Args(total_timesteps=total_timesteps, seed=seed, **overrides)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t0 = time.time()

    # SAME_STEP: when an episode ends, step() already returns the first observation of the next
    # one, and the true last observation in info["final_obs"] (gymnasium >= 1.1).
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(args.env_id) for _ in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = Agent(obs_dim, n_actions)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    E, T = args.num_envs, args.num_steps
    batch_size = E * T
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = args.total_timesteps // batch_size
    obs = torch.zeros(E, T, obs_dim)
    actions = torch.zeros(E, T, dtype=torch.long)
    logprobs, rewards, values = torch.zeros(E, T), torch.zeros(E, T), torch.zeros(E, T)
    dones = torch.zeros(E, T, dtype=torch.bool)
    next_values = torch.zeros(E, T)  # V(state after step t), read only where a row ends

    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32)  # (E, obs_dim)
    envs.action_space.seed(args.seed)
    running_returns = np.zeros(E)
    episode_returns: list[float] = []
    global_step = 0

    for iteration in range(1, num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - (iteration - 1.0) / num_iterations)

        # --- rollout: T steps of E environments with the current policy -----------------------
        n_episodes_before = len(episode_returns)
        next_values.zero_()
        for t in range(T):
            global_step += E
            obs[:, t] = next_obs
            with torch.no_grad():
                dist = agent.policy(next_obs)
                action = dist.sample()  # (E,)
                logprobs[:, t] = dist.log_prob(action)
                values[:, t] = agent.value(next_obs)
            actions[:, t] = action
            next_obs_np, reward, terminated, truncated, info = envs.step(action.numpy())
            rewards[:, t] = torch.as_tensor(reward, dtype=torch.float32)
            dones[:, t] = torch.as_tensor(terminated | truncated)
            next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32)
            # The pole fell: V(after) = 0 (next_values stays 0). Time limit: the episode could have
            # gone on, so bootstrap from the value of its true last observation.
            cut_short = truncated & ~terminated
            if cut_short.any():
                final_obs = torch.as_tensor(np.stack(info["final_obs"][cut_short]), dtype=torch.float32)
                with torch.no_grad():
                    next_values[torch.as_tensor(cut_short), t] = agent.value(final_obs)
            running_returns += reward
            for env in np.flatnonzero(terminated | truncated):
                episode_returns.append(float(running_returns[env]))
                running_returns[env] = 0.0
        with torch.no_grad():  # rows cut by the end of the rollout bootstrap from the next state
            next_values[:, T - 1] = torch.where(dones[:, T - 1], next_values[:, T - 1], agent.value(next_obs))

        # --- advantages: one row per episode piece, then back to (E, T) ----------------------
        env_idx, step_idx, mask = episodes_as_rows(dones)  # (S, T) each
        last_step = step_idx.max(dim=1).values  # (S,) padding indices are 0, so the max is the last step
        row_advantages, row_returns = gae(rewards[env_idx, step_idx], values[env_idx, step_idx], mask,
                                          gamma=args.gamma, lam=args.gae_lambda,
                                          last_values=next_values[env_idx[:, 0], last_step])  # (S, T) each
        advantages, returns = torch.zeros(E, T), torch.zeros(E, T)
        advantages[env_idx[mask], step_idx[mask]] = row_advantages[mask]
        returns[env_idx[mask], step_idx[mask]] = row_returns[mask]

        # --- PPO update: a few epochs of minibatches over the flattened rollout ---------------
        b_obs, b_actions, b_logprobs = obs.reshape(-1, obs_dim), actions.reshape(-1), logprobs.reshape(-1)
        b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        ones = torch.ones(minibatch_size)  # every transition is valid: the mask of a full row
        for _epoch in range(args.update_epochs):
            permutation = torch.randperm(batch_size)
            for start in range(0, batch_size, minibatch_size):
                mb = permutation[start:start + minibatch_size]
                dist = agent.policy(b_obs[mb])
                mb_advantages = masked_whiten(b_advantages[mb], ones)
                pg_loss, pg_stats = policy_loss(dist.log_prob(b_actions[mb]), b_logprobs[mb], mb_advantages, ones,
                                                clip_range=args.clip_coef)
                v_loss, v_stats = value_loss(agent.value(b_obs[mb]), b_values[mb], b_returns[mb], ones,
                                             clip_range=args.clip_coef)
                entropy = masked_mean(dist.entropy(), ones)
                loss = pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

        # --- diagnostics (of the last minibatch, as in cleanRL) ------------------------------
        if verbose and args.log_every and (iteration % args.log_every == 0 or iteration == num_iterations):
            new_returns = episode_returns[n_episodes_before:]
            mean_return = f"{np.mean(new_returns):6.1f}" if new_returns else "   n/a"
            ev = explained_variance(b_values, b_returns, torch.ones(batch_size))
            sps = int(global_step / (time.time() - t0))
            print(f"iter {iteration:4d}/{num_iterations} | step {global_step:7d} | return {mean_return} | "
                  f"sps {sps:5d} | approx_kl {pg_stats['approx_kl']:.5f} | clipfrac {pg_stats['clipfrac']:.3f} | "
                  f"vf_clipfrac {v_stats['vf_clipfrac']:.3f} | entropy {entropy.item():.3f} | "
                  f"explained_var {ev:.3f} | lr {optimizer.param_groups[0]['lr']:.2e}")
    envs.close()

    eval_returns = (evaluate(agent, args.env_id, args.eval_episodes, seed=args.seed + 10_000)
                    if args.eval_episodes else [])
    return {
        "final_eval_return": float(np.mean(eval_returns)) if eval_returns else float("nan"),
        "last_episodes_mean_return": float(np.mean(episode_returns[-20:])) if episode_returns else float("nan"),
        "steps": global_step,
        "seconds": round(time.time() - t0, 1),
        "episode_returns": episode_returns,
        "agent": agent,
    }


def parse_args() -> Args:
    """--flags from the fields of Args (one place per default and per help line)."""
    parse_bool = lambda s: s.lower() in ("1", "true", "yes")  # noqa: E731
    types = {"int": int, "float": float, "str": str, "bool": parse_bool}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        kind = types[f.type]  # annotations are strings (from __future__ import annotations)
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata.get("help"))
    return Args(**vars(parser.parse_args()))


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    args = parse_args()
    result = train(**dataclasses.asdict(args))
    print(json.dumps({k: result[k] for k in ("final_eval_return", "last_episodes_mean_return", "steps", "seconds")}))
