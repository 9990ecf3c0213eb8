"""The trainer's thread-count watch on simulated step times: it must pick 1 thread on a machine
that is busy from the start (every step slow, none standing out), keep all threads on a quiet
machine, react to contention that starts mid-run, and go back to all threads when it ends."""

from __future__ import annotations

import pytest
import torch

from picochat.train.contention import StepTimeWatch


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _run(watch: StepTimeWatch, steps: int, busy) -> list[int]:
    """Feed `steps` step times (a function of the thread count in use and the step) and return the
    thread count each step ran with."""
    used = []
    for i in range(steps):
        threads = torch.get_num_threads()
        used.append(threads)
        watch.observe(busy(i, threads), i + 1)
    return used


def _step_time(busy: bool, threads: int) -> float:
    if busy:  # 2 threads spin at barriers waiting for the busy core
        return 5.0 if threads == 2 else 0.5
    return 0.3 if threads == 2 else 0.5


def test_busy_from_the_start_switches_to_one_thread(two_threads):
    watch = StepTimeWatch(torch.device("cpu"), warmup_steps=10, probe_steps=5, recheck_every=200)
    used = _run(watch, 60, lambda i, t: _step_time(True, t))
    assert used[:10] == [2] * 10 and used[-40:] == [1] * 40
    watch.restore()
    assert torch.get_num_threads() == 2


def test_quiet_machine_keeps_all_threads_and_pays_only_the_probes(two_threads):
    watch = StepTimeWatch(torch.device("cpu"), warmup_steps=10, probe_steps=5, recheck_every=100)
    used = _run(watch, 400, lambda i, t: _step_time(False, t))
    assert used.count(1) == 4 * 5  # probes after steps 10, 110, 210, 310
    assert [i for i, t in enumerate(used) if t == 1][::5] == [10, 110, 210, 310]
    assert used[-1] == 2


def test_contention_mid_run_and_its_end(two_threads):
    watch = StepTimeWatch(torch.device("cpu"), warmup_steps=10, probe_steps=5, recheck_every=100, patience=3)
    busy = lambda i, t: _step_time(50 <= i < 180, t)  # noqa: E731
    used = _run(watch, 300, busy)
    assert used[45:50] == [2] * 5
    assert used[60:110] == [1] * 50  # 3 slow steps and a 5-step probe after the contention began
    assert used[110:115] == [2] * 5 and used[115:180] == [1] * 65  # the scheduled check: 2 still slower
    assert used[210:215] == [2] * 5 and used[215:] == [2] * 85  # the check after step 210: 2 faster again


def test_a_resumed_run_probes_at_the_same_global_steps(two_threads):
    # Thread counts change float rounding: a run resumed at step 100 must run every later step with
    # the thread count the uninterrupted run used.
    quiet = lambda i, t: _step_time(False, t)  # noqa: E731
    whole = _run(StepTimeWatch(torch.device("cpu"), recheck_every=100), 400, quiet)
    torch.set_num_threads(2)
    resumed = StepTimeWatch(torch.device("cpu"), recheck_every=100)
    tail = []
    for i in range(100, 400):
        tail.append(torch.get_num_threads())
        resumed.observe(quiet(i, torch.get_num_threads()), i + 1)
    assert tail == whole[100:]


def test_disabled_off_cpu_and_on_one_thread():
    assert not StepTimeWatch(torch.device("meta")).enabled
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert not StepTimeWatch(torch.device("cpu")).enabled
    finally:
        torch.set_num_threads(before)
