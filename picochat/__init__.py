"""picochat: train your own ChatGPT-style assistant from nothing, by the full recipe."""

__version__ = "0.1.0"
