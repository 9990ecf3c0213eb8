"""Hugging Face interop: export a picochat model as a Llama checkpoint (`picochat.hf.export`) and
import a local Llama checkpoint as a picochat model (`picochat.hf.importer`, `init=hf:PATH`).
Neither needs `transformers`; only the tests use it."""

# `hf:` names something of Hugging Face: a local Llama checkpoint where a model is expected
# (`sft.init=hf:DIR`), a dataset on the Hub where data is (`sft.sources=[hf:NAME?split=S]`).
HF_PREFIX = "hf:"

