"""DPO beside PPO (picochat/run/side_by_side.py): the same models as one stage after the other,
its output in a log, and a failure beside PPO reported without losing PPO."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_without

from picochat.cli.main import main
from picochat.core.child_process import log_file
from picochat.run import side_by_side


@pytest.fixture
def two_threads():
    """`picochat run` pairs stages only when torch has two threads to split (the tests use one)."""
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


def _copy_without_rl(run_dir, dest):
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    for stage in ("ppo", "dpo"):
        shutil.rmtree(dest / stage)
    return dest


def test_dpo_beside_ppo_trains_the_models_of_one_stage_after_the_other(run_dir, tmp_path, two_threads, capsys,
                                                                        monkeypatch):
    from picochat.train.ppo import PPOTrainer

    run = _copy_without_rl(run_dir, tmp_path / "run")
    ppo_threads = []
    fit = PPOTrainer.fit
    monkeypatch.setattr(PPOTrainer, "fit", lambda self: ppo_threads.append(torch.get_num_threads()) or fit(self))
    assert main(["run", "--out", str(run), "--no-progress", "--stages", "ppo,dpo", *TINY]) == 0
    assert ppo_threads == [1]  # the other thread is DPO's
    printed = capsys.readouterr().out
    assert "dpo trains beside ppo, one thread each" in printed
    assert "[dpo] done:" in printed  # the child's result, said by the parent
    assert torch.get_num_threads() == 2  # the parent's threads are given back
    # one thread each, in either process: the shared run's models (trained one after the other on
    # one thread) bit for bit
    for stage in ("ppo", "dpo"):
        assert (run / stage / "model.safetensors").read_bytes() == (run_dir / stage / "model.safetensors").read_bytes()
        ours = json.loads((run / stage / "summary.json").read_text())
        theirs = json.loads((run_dir / stage / "summary.json").read_text())
        assert ours["gold_score_sampled"] == theirs["gold_score_sampled"] and ours["kl"] == theirs["kl"]
    log = log_file(run, "dpo").read_text(encoding="utf-8")
    assert "[dpo] done:" in log and "[ppo]" not in log  # the child's own output, and only it


def test_a_failure_beside_ppo_names_the_stage_and_its_log_and_keeps_ppo(run_dir, tmp_path, two_threads, capsys):
    run = _copy_without_rl(run_dir, tmp_path / "run")
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": \n', encoding="utf-8")  # no pair DPO could train on
    args = ["run", "--out", str(run), "--no-progress", "--stages", "ppo,dpo", *tiny_without("dpo.eval_samples"),
            f"dpo.sources=[{bad}]", "dpo.eval_samples=4"]  # the copied config.yaml has 1
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "[dpo] stopped with exit code 1 in its own process" in err and str(log_file(run, "dpo")) in err
    assert "pairs.jsonl" in err  # the end of the log says which file is bad
    assert (run / "ppo" / "summary.json").exists()  # PPO finished beside it and is kept
    assert not (run / "dpo" / "summary.json").exists()


def test_side_by_side_false_runs_one_stage_after_the_other(run_dir, tmp_path, two_threads,
                                                                                   capsys):
    run = _copy_without_rl(run_dir, tmp_path / "run")
    assert main(["run", "--out", str(run), "--no-progress", "--stages", "ppo,dpo", *TINY, "side_by_side=false",
                 "dpo.train.max_steps=2"]) == 0
    assert "beside" not in capsys.readouterr().out and not log_file(run, "dpo").exists()


def scores(card: dict) -> dict:
    """A card's results less its timings."""
    return {form: {task: {k: v for k, v in r.items() if k not in ("seconds", "items_per_s")} for task, r in by.items()}
            for form, by in card["results"].items()}


def test_report_scores_the_benchmark_cards_beside_the_comparison(run_dir, tmp_path, two_threads, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old", "card_*.json",
                                                                "compare.json"))
    eval_data = next(iter(json.loads((run_dir / "report" / "card_sft.json").read_text())["sources"].values()))
    args = ["report", "--out", str(run), "--no-progress", f"eval.data_dir={Path(eval_data).parent}", "eval.limit=3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[report] the benchmark cards of pretrain, sft, ppo, dpo are scored beside the comparison" in printed
    assert "benchmark card of sft" in (run / "logs" / "benchmark_card.log").read_text(encoding="utf-8")
    for stage in ("pretrain", "sft", "ppo", "dpo"):  # the cards of the shared run, scored in its process
        ours, theirs = (json.loads((r / "report" / f"card_{stage}.json").read_text()) for r in (run, run_dir))
        assert ours["key"] == theirs["key"] and scores(ours) == scores(theirs)
    assert torch.get_num_threads() == 2
    # nothing left to score: the report reads the cards and starts no process
    assert main(args) == 0
    assert "beside the comparison" not in capsys.readouterr().out
    # cards to score but the comparison kept: nothing to do beside them, so they take both threads here
    (run / "report" / "card_dpo.json").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "beside the comparison" not in printed and "reusing the comparison" in printed
    assert "benchmark card of dpo" in printed


def _comparison(run: Path) -> dict:
    """compare.json less its timing and the path of its prompts' file."""
    comparison = json.loads((run / "report" / "compare.json").read_text())
    return {k: v for k, v in comparison.items() if k not in ("wall_s", "source")}


def _eval_args(run_dir) -> list[str]:
    eval_data = next(iter(json.loads((run_dir / "report" / "card_sft.json").read_text())["sources"].values()))
    return [f"eval.data_dir={Path(eval_data).parent}", "eval.limit=3"]


def test_the_report_reads_the_work_done_ahead_and_writes_the_same_report(run_dir, tmp_path, capsys):
    from picochat.config import build_config, parse_overrides
    from picochat.report.ahead import report_work_ahead

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old", "report", "cache"))
    cfg = build_config(None, base_file=run / "config.yaml", overrides=parse_overrides(_eval_args(run_dir)))
    report_work_ahead(cfg, run)
    assert "[report] ahead: all done" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "report").glob("card_*.json")) == [
        "card_dpo.json", "card_pretrain.json", "card_sft.json"]  # PPO's needs the PPO model
    assert (run / "report" / "sharpened.json").exists()
    assert main(["report", "--out", str(run), "--no-progress", *_eval_args(run_dir)]) == 0
    printed = capsys.readouterr().out
    for name in ("pretrained", "SFT", "DPO"):
        for decoding in ("greedy", "sampled"):
            assert f"{name}: {decoding}: the same answers as before, read from" in printed
    assert "PPO: greedy: the same answers" not in printed  # computed now
    assert "SFT: best-of-16 samples: the same answers as before" in printed
    assert "the SFT model at lower temperatures: read from" in printed
    assert "benchmark card of ppo" in printed and "benchmark card of sft" not in printed
    # the figures of the report computed in one go
    assert _comparison(run) == _comparison(run_dir)
    for stage in ("pretrain", "sft", "ppo", "dpo"):
        ours, theirs = (json.loads((r / "report" / f"card_{stage}.json").read_text()) for r in (run, run_dir))
        assert ours["key"] == theirs["key"] and scores(ours) == scores(theirs)


def test_dpo_s_process_works_ahead_for_the_report_until_ppo_is_done(run_dir, tmp_path, two_threads, capsys,
                                                                   monkeypatch):
    from picochat.train.ppo import PPOTrainer

    run = _copy_without_rl(run_dir, tmp_path / "run")
    shutil.rmtree(run / "report")
    shutil.rmtree(run / "cache")
    fit = PPOTrainer.fit

    def fit_after_the_work_ahead(self):  # PPO ends after it, as on the tiny preset
        deadline = time.time() + 240
        while "ahead: all done" not in (log_file(run, "dpo").read_text(encoding="utf-8")
                                        if log_file(run, "dpo").exists() else ""):
            assert time.time() < deadline, "the work ahead did not end"
            time.sleep(0.1)
        return fit(self)

    monkeypatch.setattr(PPOTrainer, "fit", fit_after_the_work_ahead)
    args = ["run", "--out", str(run), "--no-progress", "--stages", "ppo,dpo,report", *TINY, *_eval_args(run_dir)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "then, until ppo is done, the report's work that needs no ppo model" in printed
    assert "the benchmark cards of ppo are scored beside the comparison" in printed  # the others are done
    assert "DPO: sampled: the same answers as before" in printed
    assert "[report] ahead: the benchmark card of sft" in log_file(run, "dpo").read_text(encoding="utf-8")
    assert _comparison(run) == _comparison(run_dir)


def _stage_then_a_minute_of_work(run_stage, name, cfg, out, started) -> None:
    """A fake `run_stage` (done at once) whose work ahead would last a minute."""
    side_by_side.report_work_ahead = lambda cfg, out: _a_minute_in_steps()  # in the child's own interpreter
    side_by_side._stage_then_report_ahead(lambda *args: None, name, cfg, out, started)


def _fails(started) -> None:
    raise ValueError("the stage failed")


def test_the_work_ahead_is_stopped_when_the_parent_is_done_even_with_sigint_ignored(tmp_path):
    """A run started in the background by a script (or with nohup) ignores SIGINT, and its children
    inherit that: the parent must still stop the work ahead at once."""
    import multiprocessing
    import signal

    from picochat.core.child_process import ChildProcess

    started = multiprocessing.get_context("spawn").Event()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = ChildProcess("dpo", tmp_path / "dpo.log", _stage_then_a_minute_of_work, None, "dpo", None, tmp_path,
                             started).start()
    finally:
        signal.signal(signal.SIGINT, before)
    assert started.wait(timeout=120)  # the child's interpreter is up and in its work ahead
    t0 = time.time()
    side_by_side.finish_stage_process(child, started)
    assert time.time() - t0 < 30 and not child.process.is_alive()
    assert "[report] ahead: stopped" in (tmp_path / "dpo.log").read_text(encoding="utf-8")
    started = multiprocessing.get_context("spawn").Event()
    child = ChildProcess("dpo", tmp_path / "failed.log", _fails, started).start()
    with pytest.raises(RuntimeError, match="stopped with exit code 1"):
        side_by_side.finish_stage_process(child, started)


def _a_minute_in_steps() -> None:
    """A minute of work in short steps, as a stage works. Not one sleep(60): the child's imports
    start threads, and a SIGINT the kernel hands to one of them runs Python's handler only once the
    main thread's current call returns (7-13% of stops here took the whole minute)."""
    for _ in range(600):
        time.sleep(0.1)


def _waits_a_minute() -> None:
    print("waiting", flush=True)
    try:
        _a_minute_in_steps()
    except KeyboardInterrupt:
        print("interrupted")


def test_a_child_stops_on_the_parent_s_sigint_even_when_the_run_ignores_sigint(tmp_path):
    """`ChildProcess.stop()` (a failed or interrupted stage beside it) sends SIGINT. A run started
    in the background ignores SIGINT and a spawned child inherits that; the child listens anyway."""
    import signal

    from picochat.core.child_process import ChildProcess

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = ChildProcess("dpo", tmp_path / "dpo.log", _waits_a_minute).start()
    finally:
        signal.signal(signal.SIGINT, before)
    log = tmp_path / "dpo.log"
    deadline = time.time() + 120
    while "waiting" not in (log.read_text(encoding="utf-8") if log.exists() else ""):  # its interpreter is up
        assert time.time() < deadline
        time.sleep(0.05)
    t0 = time.time()
    child.stop()
    assert time.time() - t0 < 30
    assert "interrupted" in (tmp_path / "dpo.log").read_text(encoding="utf-8")


def test_a_stop_while_the_child_starts_is_not_lost_when_the_run_ignores_sigint(tmp_path):
    """stop() right after start(), while the child's interpreter is still importing: a SIGINT sent
    then would be ignored (inherited), so stop() waits until the child listens, then stops it."""
    import signal

    from picochat.core.child_process import ChildProcess

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = ChildProcess("dpo", tmp_path / "dpo.log", _waits_a_minute).start()
    finally:
        signal.signal(signal.SIGINT, before)
    t0 = time.time()
    child.stop()
    assert time.time() - t0 < 45  # the interpreter's start, not the child's minute
    assert not child.process.is_alive()


def test_ctrl_c_stops_both_stages_with_their_checkpoints_and_the_rerun_ends_where_one_run_ends(
        run_dir, tmp_path, two_threads):
    """Ctrl-C at the terminal reaches both processes: each stops after its step with a checkpoint,
    and the same command again ends with the models of a run never interrupted."""
    import os
    import signal
    import subprocess
    import sys

    args = [*TINY, "ppo.train.max_steps=12", "ppo.train.ckpt_every=1", "dpo.train.max_steps=150"]
    clean = _copy_without_rl(run_dir, tmp_path / "clean")
    assert main(["run", "--out", str(clean), "--no-progress", "--stages", "ppo,dpo", *args]) == 0
    run = _copy_without_rl(run_dir, tmp_path / "run")
    command = [sys.executable, "-m", "picochat", "run", "--out", str(run), "--no-progress", "--stages", "ppo,dpo",
               *args]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}  # two threads to split
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    state = run / "ppo" / "checkpoint" / "trainer_state.pt"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(state, weights_only=True)["iteration"] >= 3:
                break
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole process group
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output
    assert "dpo trains beside ppo" in output and "rerun the same command to resume" in output
    assert not (run / "ppo" / "summary.json").exists() and state.exists()
    assert main(["run", "--out", str(run), "--no-progress", "--stages", "ppo,dpo", *args]) == 0
    for stage in ("ppo", "dpo"):
        assert (run / stage / "model.safetensors").read_bytes() == (clean / stage / "model.safetensors").read_bytes()


def test_the_side_by_side_benchmark_times_both_modes_on_copies(run_dir):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "bench.side_by_side", "--run", str(run_dir), "--windows", "1"],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["window 1, side_by_side=false", "window 1, side_by_side=true",
                                                      "label", "ppo+dpo", "report"]
    assert lines[-1].endswith("x") and "(medians)" in lines[-1]


def test_stages_go_side_by_side_only_with_threads_and_memory_to_spare(two_threads, monkeypatch):
    from picochat.config import build_config
    from picochat.core import child_process
    from picochat.run import side_by_side

    cfg = build_config("tiny")
    names = ["sft", "rm", "ppo", "dpo"]
    pending = lambda stage: True  # noqa: E731
    monkeypatch.setattr(child_process, "available_memory_gb", lambda: 16.0)
    assert side_by_side.stage_beside(cfg, "ppo", names, pending) == "dpo"
    assert side_by_side.stage_beside(cfg, "dpo", names, pending) is None  # the pair is started from PPO
    assert side_by_side.stage_beside(cfg, "ppo", ["ppo"], pending) is None
    assert side_by_side.stage_beside(cfg, "ppo", names, lambda stage: stage != "dpo") is None  # DPO is done
    monkeypatch.setattr(child_process, "available_memory_gb", lambda: 4.0)  # both peaks need ≈6 GB
    assert side_by_side.stage_beside(cfg, "ppo", names, pending) is None
    monkeypatch.setattr(child_process, "available_memory_gb", lambda: None)  # unknown (not Linux): go ahead
    assert side_by_side.stage_beside(cfg, "ppo", names, pending) == "dpo"
    cfg.dpo.train.threads = 2
    assert side_by_side.stage_beside(cfg, "ppo", names, pending) is None
    cfg.dpo.train.threads = 0
    torch.set_num_threads(1)
    assert side_by_side.stage_beside(cfg, "ppo", names, pending) is None


def _copy_up_to_sft(run_dir, dest):
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    for stage in ("label", "rm", "ppo", "dpo", "report"):
        shutil.rmtree(dest / stage)
    return dest


def _records(path: Path) -> list[dict]:
    """A label file's records, less the time each was written."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for r in records:
        del r["meta"]["time"]
    return records


LABEL_FILES = ("preferences.jsonl", "preferences_test.jsonl")


def test_two_processes_label_what_one_process_labels(run_dir, tmp_path, two_threads, capsys):
    run = _copy_up_to_sft(run_dir, tmp_path / "run")
    assert main(["run", "--out", str(run), "--no-progress", "--stages", "label", *TINY]) == 0
    assert "a child labels every other batch" in capsys.readouterr().out
    assert "[label] process 2 of 2 labeled 8 train prompts" in log_file(run, "label").read_text(encoding="utf-8")
    for name in LABEL_FILES:  # the shared run's labels, made in one process on one thread, in order
        assert _records(run / "label" / name) == _records(run_dir / "label" / name)
    assert not list((run / "label").glob("*.part*"))  # the parts are joined and removed
    ours, theirs = (json.loads((r / "label" / "summary.json").read_text()) for r in (run, run_dir))
    for key in ("n_prompts", "mean_gold", "pair_agreement_with_gold", "n_tied_pairs", "n_new", "tokens"):
        assert ours[key] == theirs[key], key
    assert ours["test"]["n_prompts"] == theirs["test"]["n_prompts"] == 12
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("side_by_side", ["true", "false"])
def test_labeling_cut_short_in_either_mode_resumes_to_the_labels_of_one_run(run_dir, tmp_path, two_threads,
                                                                             side_by_side, capsys):
    """What a killed run leaves: labels of one process in the stage's file, of two in their part
    files (one torn mid-line). Either mode picks all of them up and labels only the rest."""
    run = _copy_up_to_sft(run_dir, tmp_path / "run")
    label = run / "label"
    label.mkdir()
    shutil.copy(run_dir / "label" / "stage.json", label)  # written when the stage starts
    lines = (run_dir / "label" / "preferences.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # batches of 8 prompts: batch 0 in the stage's file (one process), half of batch 1 by process 1,
    # batch 2 by process 0 but for its last record, torn mid-line
    (label / "preferences.jsonl").write_text("".join(lines[:8]), encoding="utf-8")
    (label / "preferences.part1.jsonl").write_text("".join(lines[8:12]), encoding="utf-8")
    (label / "preferences.part0.jsonl").write_text("".join(lines[16:23]) + lines[23][:30], encoding="utf-8")
    assert main(["run", "--out", str(run), "--no-progress", "--stages", "label", *TINY,
                 f"side_by_side={side_by_side}"]) == 0
    if side_by_side == "true":  # batch 2's last prompt here, and in the child the rest of batch 1
        assert "[label] process 1 of 2 labeled 1 train prompts" in capsys.readouterr().out
        assert "[label] process 2 of 2 labeled 4 train prompts" in log_file(run, "label").read_text(encoding="utf-8")
    for name in LABEL_FILES:
        assert _records(label / name) == _records(run_dir / "label" / name)
    kept = [r["meta"]["time"] for r in map(json.loads, (label / "preferences.jsonl").read_text().splitlines())]
    before = [json.loads(line)["meta"]["time"] for line in lines[:12] + lines[16:23]]
    assert [kept[i] for i in [*range(12), *range(16, 23)]] == before  # labeled once, not again
    assert not list(label.glob("*.part*"))
    assert json.loads((label / "summary.json").read_text())["n_new"] == 24 - 19  # the train prompts left
