"""Smoke test of the benchmarks (bench/): the training benchmark runs at a micro size, checks that
picochat and transformers start from the same logits, and ends with its JSON line. The real runs
are not tests (minutes each); see bench/README.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_train_benchmark_micro_prints_its_json_line():
    out = run_module("bench.train", "--sizes", "micro", "--precisions", "fp32", "--warmup", "1", "--windows", "2",
                     "--steps-per-window", "1", "--threads", "1", "--no-memory")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("[micro] same start: max |logit diff|") for line in lines)
    result = json.loads(lines[-1])
    assert result["bench"] == "train"
    rows = {r["framework"]: r for r in result["results"]}
    assert set(rows) == {"picochat", "transformers"}
    for row in rows.values():
        assert row["size"] == "micro" and row["precision"] == "fp32"
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1.5 and len(row["window_tokens_per_s"]) == 2
    assert rows["picochat"]["speedup_vs_transformers"] > 0
    assert result["matmul_peak_tflops"]["fp32"] > 0
    assert result["machine"]["versions"]["torch"]


def test_peak_memory_is_measured_in_a_fresh_process(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench.train import measure_memory

    memory = measure_memory("transformers", "micro", "fp32", threads=1)
    assert memory["peak_rss_mb"] > 100  # torch + transformers are loaded
    assert 0 < memory["train_rss_mb"] < memory["peak_rss_mb"]  # the model's own share, imports excluded


def test_shared_prefill_benchmark_times_four_variants_with_the_same_answers(run_dir):
    out = run_module("bench.shared_prefill", "--run", str(run_dir), "--prompts", "4", "--k", "3", "--new-tokens", "8",
                     "--windows", "1")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert [line.split(" median")[0].strip() for line in lines[1:5]] == [
        "as committed", "every row prefilled", "no_grad, not inference_mode", "neither (before)"]
    assert lines[-1] == "the same answers in all four: True"


def test_generate_benchmark_micro_compiled_gives_transformers_tokens():
    """The generation benchmark with --compile: four runners, each fp32 row token for token
    transformers' (the benchmark fails otherwise), the compiled ones with their compile time."""
    out = run_module("bench.generate", "--micro", "--compile", "--precisions", "fp32", "--batch-sizes", "3",
                     "--new-tokens", "8", "--prompt-len", "8", "--windows", "2", "--threads", "1",
                     timeout=600)  # two compiles with a cold cache on a busy machine
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "generate" and result["settings"]["compiled"] is True
    rows = {r["framework"]: r for r in result["results"]}
    assert set(rows) == {"picochat", "transformers", "picochat compiled", "transformers compiled"}
    for row in rows.values():
        assert row["greedy_rows_equal"] == "3/3" and row["tokens_per_s"] > 0 and row["first_call_s"] > 0
        assert row["speedup_vs_transformers"] > 0 and row["speedup_vs_transformers_compiled"] > 0
