"""Hugging Face interop: export a picochat model as a Llama checkpoint (`picochat.hf.export`) and
import a local Llama checkpoint as a picochat model (`picochat.hf.importer`, `init=hf:PATH`).
Neither needs `transformers`; only the tests use it."""
