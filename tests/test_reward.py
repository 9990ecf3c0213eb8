"""Reward model: losses against hand-computed values, K-wise batching, score position, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from picochat.algos.reward_losses import best_of_k_loss, pairwise_loss, scalar_loss
from picochat.core.model import GPT, ModelConfig
from picochat.data.preferences import PreferenceRecord
from picochat.reward_model import pad_right, reward_input_ids, scores_at
from picochat.train.reward import EncodedRecord, best_of_n_gold, collate, fit_normalization, pair_metrics, reward_loss


def test_pairwise_loss_matches_hand_computed_values():
    scores = torch.tensor([1.0, 0.0, -1.0, 0.5, 0.5])
    # prompt 0: responses 0 > 1 > 2 (3 pairs, margins 1, 2, 1); prompt 1: response 3 > 4 (margin 0)
    winners, losers = torch.tensor([0, 0, 1, 3]), torch.tensor([1, 2, 2, 4])
    pair_prompt = torch.tensor([0, 0, 0, 1])
    nl = lambda x: -math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    expected = ((nl(1) * 2 + nl(2)) / 3 + math.log(2)) / 2  # mean over prompts of per-prompt means
    assert pairwise_loss(scores, winners, losers, pair_prompt, 2).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.47215, abs=1e-4)


def test_best_of_k_and_scalar_losses():
    scores = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0])
    row_prompt = torch.tensor([0, 0, 0, 1, 1])
    is_best = torch.tensor([True, False, False, True, True])  # prompt 1: all tied -> skipped
    expected = -(2 - math.log(math.exp(2) + 2))
    assert best_of_k_loss(scores, row_prompt, is_best, 2).item() == pytest.approx(expected, abs=1e-6)
    assert scalar_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 3.0]), "mse").item() == pytest.approx(0.5)
    assert scalar_loss(torch.tensor([0.0]), torch.tensor([1.0]), "bce").item() == pytest.approx(math.log(2))


@pytest.fixture(scope="module")
def tiny_rm(world_tokenizer):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64 * ((world_tokenizer.vocab_size + 63) // 64), d_model=32, n_layers=2,
                            n_heads=2, n_kv_heads=2, ffn_hidden=64, max_seq_len=128, head="scalar"))
    return model.eval()


PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]
ANSWERS = ["2 + 3 = 5.", "It is 6.", "Five, I think, maybe.", "7"]


def test_k_wise_batching_equals_the_explicit_pair_list(tiny_rm, world_tokenizer):
    kwise = PreferenceRecord(prompt=PROMPT, responses=ANSWERS, ranking=[[0], [2], [1], [3]])
    pairs = [PreferenceRecord(prompt=PROMPT, responses=[ANSWERS[w], ANSWERS[l]], ranking=[[0], [1]])
             for w, l in kwise.pairs()]
    assert len(pairs) == 6
    enc = lambda rs: [EncodedRecord(r, world_tokenizer, 128) for r in rs]  # noqa: E731
    with torch.no_grad():
        a = reward_loss(tiny_rm, collate(enc([kwise]), world_tokenizer.pad_id), "pairwise")
        b = reward_loss(tiny_rm, collate(enc(pairs), world_tokenizer.pad_id), "pairwise")
    assert a.item() == pytest.approx(b.item(), abs=1e-5)


def test_ties_are_dropped_when_pairing(world_tokenizer):
    rec = PreferenceRecord(prompt=PROMPT, responses=ANSWERS, ranking=[[0], [1, 2], [3]])
    assert sorted(EncodedRecord(rec, world_tokenizer, 128).pairs) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]


def test_score_is_read_at_the_last_real_token_whatever_the_padding(tiny_rm, world_tokenizer):
    tok = world_tokenizer
    rows = [reward_input_ids(tok, PROMPT, a)[0] for a in ANSWERS]
    assert all(r[-1] == tok.im_end_id for r in rows)  # finished answers end on <|im_end|>
    unfinished, _ = reward_input_ids(tok, PROMPT, ANSWERS[0], finished=False)
    assert unfinished == rows[0][:-1]
    with torch.no_grad():
        alone = [scores_at(tiny_rm, torch.tensor([r]), torch.tensor([len(r) - 1])).item() for r in rows]
        ids, last = pad_right(rows, tok.pad_id)
        right = scores_at(tiny_rm, ids, last).tolist()
        # Left padding with an attention mask: the last column is every row's last real token.
        T = ids.shape[1]
        left = torch.full((len(rows), T), tok.pad_id)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            left[i, T - len(r):] = torch.tensor(r)
            mask[i, T - len(r):] = 1
        left_scores = tiny_rm(left, attention_mask=mask)[:, -1].tolist()
    assert right == pytest.approx(alone, abs=1e-5)
    assert left_scores == pytest.approx(alone, abs=1e-5)


def test_normalization_gives_mean_zero_std_one():
    scores = [[1.0, 2.0, 3.0], [4.0, 5.0]]
    gain, bias = fit_normalization(scores, fit_gain=True)
    flat = [gain * x + bias for s in scores for x in s]
    assert sum(flat) / len(flat) == pytest.approx(0.0, abs=1e-9)
    assert (sum(x * x for x in flat) / len(flat)) == pytest.approx(1.0)
    gain, bias = fit_normalization(scores, fit_gain=False)
    assert gain == 1.0 and bias == pytest.approx(-3.0)


def test_pair_metrics_against_gold_and_noise_ceiling(world_tokenizer):
    # Labels say 1 > 0 (a flipped annotator); gold says 0 > 1. The model agrees with gold.
    rec = PreferenceRecord(prompt=PROMPT, responses=ANSWERS[:2], ranking=[[1], [0]],
                           meta={"gold_ranking": [[0], [1]]})
    m = pair_metrics([EncodedRecord(rec, world_tokenizer, 128)], [[1.0, 0.0]])
    assert m["pair_accuracy"] == 0.0 and m["gold_pair_accuracy"] == 1.0 and m["label_gold_agreement"] == 0.0
    assert m["pair_log_loss"] == pytest.approx(-math.log(1 / (1 + math.e)))


def test_best_of_n_gold_gain_against_hand_computed_values(world_tokenizer):
    # Prompt A: gold 1, 0, 0.5, 0 ; RM prefers answer 2, then 0. Prompt B: gold 0, 1 (2 answers
    # only: it counts for n=2, not n=4). Prompts without gold scores, or with malformed ones (not
    # one number per response), count for nothing.
    gold_a, gold_b = [1.0, 0.0, 0.5, 0.0], [0.0, 1.0]
    recs = [PreferenceRecord(prompt=PROMPT, responses=ANSWERS, ranking=[[0], [2], [1, 3]],
                             meta={"gold_scores": gold_a}),
            PreferenceRecord(prompt=PROMPT, responses=ANSWERS[:2], ranking=[[1], [0]], meta={"gold_scores": gold_b}),
            PreferenceRecord(prompt=PROMPT, responses=ANSWERS[:2], ranking=[[1], [0]]),
            PreferenceRecord(prompt=PROMPT, responses=ANSWERS[:2], ranking=[[1], [0]],
                             meta={"gold_scores": [0.0, 0.0, 1.0]}),
            PreferenceRecord(prompt=PROMPT, responses=ANSWERS[:2], ranking=[[1], [0]], meta={"gold_scores": ["a", 1]})]
    enc = [EncodedRecord(r, world_tokenizer, 128) for r in recs]
    scores = [[0.5, -1.0, 0.9, 0.0], [2.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    m = best_of_n_gold(enc, scores, ns=(2, 4, 8))
    # n=2: A picks answer 0 (1.0 - 0.5 = +0.5), B picks answer 0 (0.0 - 0.5 = -0.5); oracle +0.5 each.
    assert m["best_of_2_gold_gain"] == pytest.approx(0.0)
    assert m["best_of_2_oracle_gain"] == pytest.approx(0.5)
    # n=4: A only, picks answer 2: 0.5 - 0.375; oracle 1.0 - 0.375.
    assert m["best_of_4_gold_gain"] == pytest.approx(0.125)
    assert m["best_of_4_oracle_gain"] == pytest.approx(0.625)
    assert "best_of_8_gold_gain" not in m and (m["best_of_2_prompts"], m["best_of_4_prompts"]) == (2, 1)


def test_long_inputs_keep_their_end(world_tokenizer):
    long_prompt = [{"role": "user", "content": "word " * 300}]
    a, cut_a = reward_input_ids(world_tokenizer, long_prompt, "Yes.", max_len=64)
    b, cut_b = reward_input_ids(world_tokenizer, long_prompt, "No.", max_len=64)
    assert cut_a and cut_b and len(a) == len(b) == 64
    assert a != b and a[-1] == b[-1] == world_tokenizer.im_end_id


def test_scores_in_length_groups_equal_one_padded_forward():
    # Rows of very different lengths, right-padded: grouping them by length (each group cut to its
    # own longest row) must give the scores and the gradients of one forward over the padded batch.
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                            max_seq_len=40, head="scalar"))
    lengths = [3, 30, 5, 7, 2, 40, 4, 6, 9]
    ids = torch.zeros(len(lengths), 40, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 50, (n,))
    last = torch.tensor(lengths) - 1
    results = []
    for groups in (1, 4):
        model.zero_grad()
        s = scores_at(model, ids, last, length_groups=groups)
        (s * torch.arange(1.0, len(lengths) + 1)).sum().backward()
        results.append((s.detach(), [p.grad.clone() for p in model.parameters()]))
    (s1, g1), (s4, g4) = results
    torch.testing.assert_close(s4, s1, rtol=1e-5, atol=1e-6)
    for a, b in zip(g4, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_plackett_luce_equals_the_pairwise_loss_at_k2():
    import torch

    from picochat.algos.reward_losses import pairwise_loss, plackett_luce_loss

    torch.manual_seed(0)
    scores = torch.randn(6)  # three prompts of two answers; the winner is row 1, 2 and 5
    row_prompt = torch.tensor([0, 0, 1, 1, 2, 2])
    rank_group = torch.tensor([1, 0, 0, 1, 1, 0])
    pl = plackett_luce_loss(scores, row_prompt, rank_group, 3)
    pw = pairwise_loss(scores, torch.tensor([1, 2, 5]), torch.tensor([0, 3, 4]), torch.tensor([0, 1, 2]), 3)
    assert torch.allclose(pl, pw)


def test_plackett_luce_against_a_hand_computed_k3_ranking():
    import math

    import torch

    from picochat.algos.reward_losses import plackett_luce_loss

    s = [1.0, 0.0, 2.0]  # ranking: answer 2 > answer 0 > answer 1
    first = -(s[2] - math.log(sum(math.exp(x) for x in s)))  # answer 2 chosen from all three
    second = -(s[0] - math.log(math.exp(s[0]) + math.exp(s[1])))  # then answer 0 from the two left
    loss = plackett_luce_loss(torch.tensor(s), torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 0]), 1)
    assert abs(float(loss) - (first + second) / 2) < 1e-6
    # ties: two best answers share a place, each chosen from all three; the last one's choice is empty
    tied = plackett_luce_loss(torch.tensor(s), torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 0]), 1)
    lse = math.log(sum(math.exp(x) for x in s))
    assert abs(float(tied) - ((lse - s[0]) + (lse - s[2])) / 2) < 1e-6
    # a prompt whose answers all tied teaches nothing
    all_tied = torch.zeros(3, dtype=torch.long)
    assert float(plackett_luce_loss(torch.tensor(s), torch.zeros(3, dtype=torch.long), all_tied, 1)) == 0.0
