"""picochat's benchmark scores next to lm-evaluation-harness's, item by item, on the same model.

The picochat model is exported with `picochat export` (a transformers Llama checkpoint) and the
harness scores it with its own `hf` model class, reading the same local files through task YAMLs
with `dataset_path: json`. The YAMLs use the harness's own prompt templates (copied from its
arc_easy.yaml, hellaswag.yaml and utils.py, commonsense_qa/default.yaml); the only code on the
harness side is a `process_docs` that turns the local copies' record shape into the Hub's (ARC's
choices as {"text": [...], "label": [...]}, HellaSwag's `ctx` as `ctx_a` with an empty `ctx_b`).
picochat scores the same items with `picochat.eval.benchmarks`. For every choice of every item
the two log-likelihoods are compared, and acc / acc_norm on both sides.

    pip install lm_eval                     # 0.4.x; it pulls in datasets, evaluate, scikit-learn, ...
    python -m bench.lm_eval_equality --ckpt runs/tiny/sft --data-dir ../shared/data/eval --limit 200

The last line is one JSON object, as in the other benchmarks.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

import torch

from bench.report import emit_json
from picochat.eval.benchmarks.card import score_choices
from picochat.eval.benchmarks.tasks import load_task
from picochat.hf.export import export_model
from picochat.layout import load_model_and_tokenizer

UTILS = '''
import re


def arc(dataset):
    def hub_shape(doc):
        return {"choices": {"text": [c["text"] for c in doc["choices"]], "label": [c["label"] for c in doc["choices"]]}}
    return dataset.map(hub_shape)


def _preprocess(text):  # lm_eval/tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\\\[.*?\\\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag(dataset):
    def process(doc):
        ctx = doc["ctx"] + " " + ""  # ctx_a + " " + ctx_b.capitalize(), ctx_b absent from the local copy
        return {"query": _preprocess(doc["activity_label"] + ": " + ctx),
                "choices": [_preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])}
    return dataset.map(process)
'''

TEMPLATES = {  # the harness's YAML fields for each task (lm_eval 0.4 tasks/)
    "arc_easy": ("arc", 'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
                        'doc_to_target: "{{choices.label.index(answerKey)}}"\ndoc_to_choice: "{{choices.text}}"'),
    "arc_challenge": ("arc", 'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
                             'doc_to_target: "{{choices.label.index(answerKey)}}"\ndoc_to_choice: "{{choices.text}}"'),
    "hellaswag": ("hellaswag", 'doc_to_text: "{{query}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "choices"'),
}
FILES = {"arc_easy": "arc_easy_test", "arc_challenge": "arc_challenge_test", "hellaswag": "hellaswag_val"}


def write_tasks(folder: Path, data_dir: Path, names: list[str]) -> None:
    (folder / "utils.py").write_text(UTILS)
    for name in names:
        processor, fields = TEMPLATES[name]
        data = data_dir / f"{FILES[name]}.jsonl.gz"
        (folder / f"pc_{name}.yaml").write_text(textwrap.dedent(f"""\
            task: pc_{name}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {data}
            test_split: test
            output_type: multiple_choice
            process_docs: !function utils.{processor}
            """) + fields + "\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def harness_scores(hf_dir: Path, task_dir: Path, names: list[str], limit: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    result = simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32,device=cpu",
                             tasks=[f"pc_{n}" for n in names], limit=limit, batch_size=16, log_samples=True,
                             task_manager=TaskManager(include_path=str(task_dir)))
    out = {}
    for name in names:
        samples = sorted(result["samples"][f"pc_{name}"], key=lambda s: s["doc_id"])
        out[name] = {"loglikelihoods": [[float(r[0][0]) for r in s["resps"]] for s in samples],
                     "acc": result["results"][f"pc_{name}"]["acc,none"],
                     "acc_norm": result["results"][f"pc_{name}"]["acc_norm,none"]}
    return out


def picochat_scores(ckpt: str, data_dir: str, names: list[str], limit: int) -> dict:
    model, tokenizer, _ = load_model_and_tokenizer(ckpt)
    return {name: score_choices(model, tokenizer, load_task(name, data_dir, limit=limit), shots=0, precision="fp32",
                                batch_size=32, show_progress=False) for name in names}


def both_sides(ckpt: str, data_dir: str, names: list[str], limit: int) -> tuple[dict, dict]:
    """(picochat's, the harness's) per-item log-likelihoods and acc/acc_norm of each task."""
    ours = picochat_scores(ckpt, data_dir, names, limit)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, task_dir = Path(tmp) / "hf", Path(tmp) / "tasks"
        task_dir.mkdir()
        export_model(ckpt, hf_dir)
        write_tasks(task_dir, Path(data_dir).resolve(), names)
        theirs = harness_scores(hf_dir, task_dir, names, limit)
    return ours, theirs


def compare(ours: dict, theirs: dict, names: list[str]) -> list[dict]:
    """Per task: items, choices, the largest |log-likelihood difference|, acc and acc_norm of both
    sides, and how often the two pick the same choice."""
    results = []
    print(f"{'task':12s} {'items':>5s} {'choices':>7s} {'max |dLL|':>10s} {'acc ours/harness':>18s} "
          f"{'acc_norm ours/harness':>22s} {'argmax agree':>12s}")
    for name in names:
        a, b = ours[name]["loglikelihoods"], theirs[name]["loglikelihoods"]
        if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
            raise SystemExit(f"{name}: the two sides scored different items ({len(a)} vs {len(b)})")
        diffs = [abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys)]
        agree = sum(max(range(len(xs)), key=xs.__getitem__) == max(range(len(ys)), key=ys.__getitem__)
                    for xs, ys in zip(a, b)) / len(a)
        row = {"task": name, "items": len(a), "choices": len(diffs), "max_abs_diff": max(diffs),
               "acc": [ours[name]["acc"], theirs[name]["acc"]],
               "acc_norm": [ours[name]["acc_norm"], theirs[name]["acc_norm"]], "argmax_agreement": agree}
        results.append(row)
        print(f"{name:12s} {len(a):5d} {len(diffs):7d} {max(diffs):10.2e} "
              f"{row['acc'][0]:8.3f}/{row['acc'][1]:.3f} {row['acc_norm'][0]:12.3f}/{row['acc_norm'][1]:.3f} "
              f"{agree:12.3f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a picochat model directory, e.g. runs/tiny/sft")
    parser.add_argument("--data-dir", required=True, help="folder with arc_easy_test.jsonl.gz, hellaswag_val.jsonl.gz")
    parser.add_argument("--tasks", default="arc_easy,hellaswag", help=f"from {','.join(TEMPLATES)}")
    parser.add_argument("--limit", type=int, default=200, help="first N items of each task")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.tasks.split(",")
    ours, theirs = both_sides(args.ckpt, args.data_dir, names, args.limit)
    results = compare(ours, theirs, names)
    emit_json("lm_eval_equality", {"ckpt": args.ckpt, "limit": args.limit, "results": results})


if __name__ == "__main__":
    main()
