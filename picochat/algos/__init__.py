"""The math of the training objectives as pure functions (PPO, reward-model losses, learning-rate
schedules), tested against hand-computed numbers."""
