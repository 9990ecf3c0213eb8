"""The foundation every other package builds on: the model, tokenizer, chat template, generation
and rollouts, checkpoints, devices and precision, processes, crash-safe files. Imports nothing
else of picochat."""
