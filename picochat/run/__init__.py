"""Runs the pipeline: the stage registry, fingerprints and reuse, the plan and its time estimate."""
