"""Standard benchmarks (ARC, HellaSwag, CommonsenseQA, CMMLU, TruthfulQA, GSM8K): the evaluation card.

`tasks` reads each set from local JSON lines (or `hf:` sources) into items, `prompts` writes an
item as lm-evaluation-harness does (zero- or few-shot), `loglikelihood` scores the choices of many
items in padded batches, `answers` reads a number or a letter out of generated text, and `card`
runs a model over a list of tasks and summarises it (accuracy, centred score, 95% interval).
"""
