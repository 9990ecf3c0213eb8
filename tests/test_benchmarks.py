"""The benchmark card: log-likelihood scoring against hand-computed values, the harness's acc_norm,
GSM8K's answer extraction, the chat form's parser, the task formats, bad files, and `picochat eval`."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from benchmark_data import write_benchmark_data

from picochat.cli.main import main
from picochat.data.readers import CorpusError
from picochat.eval.benchmarks.answers import (
    INVALID,
    answer_matches,
    chosen_letter,
    flexible_answer,
    reference_answer,
    strict_answer,
)
from picochat.eval.benchmarks.card import choice_predictions, mean_with_interval
from picochat.eval.benchmarks.loglikelihood import continuation_logprobs, encode_pair
from picochat.eval.benchmarks.tasks import QA_PRIMER, TASKS, load_task, with_shots

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return write_benchmark_data(tmp_path_factory.mktemp("eval_data"))


class Bigram(torch.nn.Module):
    """A model whose next-token distribution depends only on the current token: row t of `probs`."""

    def __init__(self, probs: list[list[float]], max_seq_len: int = 16):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probs).log())  # log_softmax of log p is log p
        self.cfg = SimpleNamespace(max_seq_len=max_seq_len)

    def forward(self, input_ids):
        return self.logits[input_ids]  # (B, T, V)


P = [[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]


def test_three_choice_item_loglikelihoods_equal_hand_computed_values():
    requests = [([0], [1]), ([0], [2, 2]), ([0], [1, 0, 1]), ([1], [1])]
    hand = [math.log(0.25), math.log(0.25) + math.log(0.6), math.log(0.25) + math.log(0.1) + math.log(0.25),
            math.log(0.6)]
    greedy = [False, False, False, True]  # after token 0 the likeliest is 0; after 1 it is 1
    for batch_size in (1, 2, 4):  # padded batches of mixed lengths give what one row at a time gives
        results = continuation_logprobs(Bigram(P), requests, batch_size=batch_size)
        assert [r[1] for r in results] == greedy
        for (value, _), expected in zip(results, hand):
            assert value == pytest.approx(expected, abs=1e-6)
    # A context longer than the model reads is cut from the left: only the last tokens count.
    cut = continuation_logprobs(Bigram(P, max_seq_len=2), [([2, 2, 2, 0], [1, 1])])
    assert cut[0][0] == pytest.approx(math.log(0.25) + math.log(0.6), abs=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        continuation_logprobs(Bigram(P, max_seq_len=2), [([0], [1, 1, 1])])


def test_acc_takes_the_likeliest_choice_and_acc_norm_the_likeliest_per_character():
    assert choice_predictions([-10.0, -12.0], ["ab", "abcdef"]) == (0, 1)  # per char: -5 vs -2
    assert choice_predictions([-3.0, -3.0, -9.0], ["x", "y", "zzz"]) == (0, 0)  # ties go to the first
    assert choice_predictions([-6.0, -4.0], ["abc", "a"]) == (1, 0)  # -2/char vs -4/char


def test_interval_of_a_mean():
    m = mean_with_interval([1.0, 0.0, 1.0, 0.0])
    half = 1.96 * math.sqrt(1 / 3) / 2  # sample stdev of (1, 0, 1, 0) is sqrt(1/3)
    assert m["mean"] == 0.5 and m["ci95"] == pytest.approx([0.5 - half, 0.5 + half])


def test_encode_pair_moves_the_contexts_trailing_space_to_the_continuation(world_tokenizer):
    tok = world_tokenizer
    ctx, cont = encode_pair(tok, "Question: where?\nAnswer: ", "Mars")
    assert (ctx, cont) == encode_pair(tok, "Question: where?\nAnswer:", " Mars")
    assert ctx + cont == tok.encode("Question: where?\nAnswer: Mars")
    assert ctx == tok.encode("Question: where?\nAnswer:")


@pytest.mark.parametrize("text, flexible, strict, reference, correct", [
    ("She makes $1,200.", "$1,200.", INVALID, "1200", True),
    ("9 * 2 = 18\n#### 42", "42", "42", "42", True),
    ("The answer is 3/4", "4", INVALID, "4", True),  # no fractions in GSM8K: the harness reads the last number
    ("It is -5 degrees", "-5", INVALID, "-5", True),
    ("no number here", INVALID, INVALID, "1", False),
    ("#### 1,000,000", "1,000,000", "1,000,000", "1000000", True),
    ("Total: 7. Then 8 more.", "8", INVALID, "7", False),
])
def test_gsm8k_answer_extraction_as_the_harness_does(text, flexible, strict, reference, correct):
    assert flexible_answer(text) == flexible
    assert strict_answer(text) == strict
    assert answer_matches(flexible, reference) is correct


def test_gsm8k_reference_answer():
    assert reference_answer("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18") == "18"
    assert reference_answer("...\n#### 1,250") == "1250"


@pytest.mark.parametrize("reply, n, expected", [
    ("B", 4, 1), ("b.", 4, 1), ("(C) because it is", 4, 2), ("The answer is D", 4, 3), ("答案：A", 4, 0),
    ("Answer: e) shelf", 5, 4), ("I think it must be C.", 4, 2), ("Sorry, I can't help with that.", 4, None),
    ("E", 4, None), ("", 4, None), ("A cat is an animal; so B", 4, 0),
])
def test_chat_reply_parser(reply, n, expected):
    assert chosen_letter(reply, n) == expected


def test_items_are_written_as_the_harness_writes_them(eval_data):
    arc = load_task("arc_easy", str(eval_data)).items[0]
    assert arc.query == "Question: Which of these is a planet, number 0?\nAnswer:"
    assert arc.choices == ("Mars", "the Moon", "a comet", "the Sun") and arc.gold == 0
    hs = load_task("hellaswag", str(eval_data)).items[0]
    assert hs.query == "Roof shingle removal: A man is sitting on a roof. he"
    assert hs.choices[0] == "is using wrap. to wrap skis." and hs.gold == 3  # [title] cleaned as the harness does
    csqa = load_task("commonsense_qa", str(eval_data)).items[0]
    assert csqa.query == ("Question: Where do you keep milk cold?\nA. fridge\nB. oven\nC. desk\nD. car\nE. shelf"
                          "\nAnswer:")
    assert csqa.choices == tuple("ABCDE")
    cmmlu = load_task("cmmlu", str(eval_data)).items[0]
    assert cmmlu.query.endswith("\nD. 水\n答案：") and cmmlu.choices == tuple("ABCD")
    tqa = load_task("truthfulqa", str(eval_data)).items[0]
    assert tqa.query.startswith(QA_PRIMER) and tqa.query.endswith("\n\nQ: What happens if you eat seeds (0)?\nA:")
    assert tqa.choices == ("Nothing happens", "You grow a tree", "You die") and tqa.gold == 0
    gsm = load_task("gsm8k", str(eval_data)).items[3]
    assert gsm.answer == "5" and gsm.query.startswith("Question: Tom has 3 apples")


def test_few_shot_prompts_put_solved_examples_first_and_never_the_item_itself(eval_data):
    loaded = load_task("arc_easy", str(eval_data), shots=2)
    prompt = with_shots(loaded.items[0], loaded.fewshot_pool, 2)
    blocks = prompt.split("\n\n")
    assert len(blocks) == 3 and blocks[-1] == loaded.items[0].query
    assert all(b.endswith("\nAnswer: Mars") for b in blocks[:2])
    assert prompt == with_shots(loaded.items[0], loaded.fewshot_pool, 2)  # fixed seed
    same_file = load_task("hellaswag", str(eval_data), shots=3)  # no train split: the file minus the item
    item = same_file.items[0]
    assert f"\n\n{item.query}" in with_shots(item, same_file.fewshot_pool, 3)
    tqa = load_task("truthfulqa", str(eval_data), shots=3)  # its primer is its few-shot prompt: 0-shot
    assert tqa.fewshot_pool == [] and with_shots(tqa.items[0], tqa.fewshot_pool, 3) == tqa.items[0].query


def _write(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_malformed_eval_files_are_named_by_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "choices": [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}],
                       "answerKey": "A"})
    _write(tmp_path / "arc_easy_test.jsonl.gz", [good, "{not json"])
    with pytest.raises(CorpusError, match=r"arc_easy_test.jsonl.gz, line 2: invalid JSON"):
        load_task("arc_easy", str(tmp_path))
    _write(tmp_path / "arc_easy_test.jsonl.gz", [good, json.dumps({"question": "q", "choices": []})])
    with pytest.raises(CorpusError, match=r"line 2: not a arc_easy record"):
        load_task("arc_easy", str(tmp_path))
    _write(tmp_path / "arc_easy_test.jsonl.gz", [good.replace('"answerKey": "A"', '"answerKey": "Z"')])
    with pytest.raises(CorpusError, match=r"line 1: .*answerKey 'Z' is not one of the choice labels"):
        load_task("arc_easy", str(tmp_path))
    _write(tmp_path / "gsm8k_test.jsonl.gz", [json.dumps({"question": "q", "answer": "no final line"})])
    with pytest.raises(CorpusError, match=r"gsm8k_test.jsonl.gz, line 1: .*'#### <number>'"):
        load_task("gsm8k", str(tmp_path))
    _write(tmp_path / "hellaswag_val.jsonl.gz", [""])
    with pytest.raises(CorpusError, match="no hellaswag items"):
        load_task("hellaswag", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cmmlu_test.jsonl.gz not found; set eval.data_dir"):
        load_task("cmmlu", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no data folder"):
        load_task("cmmlu", "")


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="the project's shared/data/eval is not beside the checkout")
def test_the_public_files_read_as_the_harness_reads_them():
    for name in TASKS:
        loaded = load_task(name, str(SHARED_EVAL), limit=20)
        assert len(loaded.items) == 20, name
    janet = load_task("gsm8k", str(SHARED_EVAL), limit=1).items[0]
    assert janet.answer == "18" and janet.query.startswith("Question: Janet’s ducks")
    first = load_task("arc_easy", str(SHARED_EVAL), limit=1).items[0]
    assert first.gold == 0 and first.choices[0].startswith("Sunlight is the source")


def test_picochat_eval_prints_and_writes_the_card(run_dir, eval_data, tmp_path, capsys):
    out = tmp_path / "card.json"
    assert main(["eval", "--ckpt", str(run_dir / "sft"), "--data-dir", str(eval_data), "--limit", "3",
                 "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "**loglik** form" in printed and "**chat** form" in printed and "| gsm8k | 3 | exact_match |" in printed
    card = json.loads(out.read_text())
    assert set(card["results"]) == {"loglik", "chat"} and set(card["results"]["loglik"]) == set(TASKS)
    arc = card["results"]["loglik"]["arc_easy"]
    assert arc["n"] == 3 and len(arc["loglikelihoods"]) == 3 and all(len(v) == 4 for v in arc["loglikelihoods"])
    assert arc["centred"] == pytest.approx((arc["score"] - 0.25) / 0.75)
    assert card["core"]["loglik"] == pytest.approx(
        sum(r["centred"] for r in card["results"]["loglik"].values()) / len(TASKS))
    # A pretrained model is scored by log-likelihood only; a bad --source is refused with its form.
    assert main(["eval", "--ckpt", str(run_dir / "pretrain"), "--data-dir", str(eval_data), "--tasks", "arc_easy",
                 "--limit", "2", "--no-progress"]) == 0
    assert "**chat** form" not in capsys.readouterr().out
    assert main(["eval", "--ckpt", str(run_dir / "sft"), "--tasks", "arc_easy", "--source", "arc_easy"]) == 2
    assert "TASK=PATH_OR_HF_SPEC" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(run_dir / "sft"), "--tasks", "arc_easy,mmlu"]) == 2
    assert "unknown benchmark task(s) mmlu" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(run_dir / "rm"), "--data-dir", str(eval_data), "--tasks", "arc_easy"]) == 2
    assert "is a reward model" in capsys.readouterr().err


def test_log_likelihoods_equal_lm_evaluation_harness_on_the_same_items(run_dir, eval_data):
    """The harness (its `hf` model on the exported checkpoint, its own prompt templates) and picochat
    give the same log-likelihood for every choice, so the same acc and acc_norm."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'picochat[harness]')")
    from bench.lm_eval_equality import both_sides, compare

    names = ["arc_easy", "hellaswag"]
    ours, theirs = both_sides(str(run_dir / "sft"), str(eval_data), names, limit=4)
    for row in compare(ours, theirs, names):
        assert row["items"] == 4 and row["max_abs_diff"] < 1e-4, row
        assert row["acc"][0] == row["acc"][1] and row["acc_norm"][0] == row["acc_norm"][1], row


def test_records_in_the_hubs_shape_read_the_same(eval_data):
    """`hf:` sources arrive in the Hub's record shapes: ARC's choices as lists under "text" and
    "label", HellaSwag's context split in ctx_a and ctx_b (whose first letter the harness capitalises)."""
    from picochat.eval.benchmarks.tasks import parse_arc, parse_hellaswag

    local = load_task("arc_easy", str(eval_data)).items[0]
    hub = parse_arc("arc_easy", {"question": "Which of these is a planet, number 0?", "answerKey": "A",
                                 "choices": {"text": list(local.choices), "label": ["A", "B", "C", "D"]}}, "arc-0")
    assert hub == local
    hs = parse_hellaswag("hellaswag", {"activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof.",
                                       "ctx_b": "he", "endings": ["a", "b"], "label": "1"}, "0")
    assert hs.query == "Roof shingle removal: A man is on a roof. He" and hs.gold == 1
