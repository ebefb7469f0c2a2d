"""Break the code on purpose, one way at a time, and show that a test of the normal run fails.

    python scripts/check_breaks.py            # every break (about 4 minutes on 2 cores)
    python scripts/check_breaks.py 3 5        # breaks 3 and 5

Each break is a bug somebody could write: the snippet it replaces, in a module of hpo, and
the tests (of the run without the dev cluster) that must fail because of it. The script
checks out HEAD into a temporary worktree, applies one break, runs those tests there, and
prints whether they failed (caught) or passed (missed). A break whose snippet is no longer
in the code is reported as "stale": update it with the code. Exit 1 when a break is missed
or stale. Not part of CI; docs/testing.md keeps the last table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Break:
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BREAKS = (
    Break("the slot lock removed around the budget's check-then-ask", "hpo/study/shared.py",
          "        with self.slots():\n            verdict = self._budget_verdict()",
          "        if True:  # no lock\n            verdict = self._budget_verdict()",
          ("tests/test_budget.py",)),
    Break("the reaper's dead-process rule removed", "hpo/worker/recovery.py",
          "        if not process_alive(pid):\n            return True",
          "        pass",
          ("tests/test_reaper.py", "tests/test_worker.py::test_killed_worker_trial_is_reaped_and_retried")),
    Break("a log file written before the settings are checked", "hpo/cli/workers.py",
          '    mode = config_mode(flags.pop("reuse_stored"), flags.pop("overwrite"))',
          '    from pathlib import Path\n\n    Path("optuna_logs").mkdir(exist_ok=True)\n'
          '    Path("optuna_logs/launch.log").write_text("starting\\n")\n'
          '    mode = config_mode(flags.pop("reuse_stored"), flags.pop("overwrite"))',
          ("tests/test_worker.py::test_bad_input_exits_2_and_writes_nothing",
           "tests/test_workflows.py::test_bad_objective_setting_exits_2_and_writes_nothing",
           "tests/test_workflows.py::test_config_declares_its_own_settings",
           "tests/test_config.py::test_missing_objective_module_names_it_the_field_and_where_it_looked")),
    Break("the old heartbeat attribute renamed", "hpo/worker/recovery.py",
          'HEARTBEAT_ATTR = "hpo:heartbeat"', 'HEARTBEAT_ATTR = "hpo:beat"',
          ("tests/test_watch.py::test_a_beat_kept_by_older_hpo_in_the_journal_still_counts",)),
    Break("a thread told to stop takes a lock another thread holds", "hpo/system/lock.py",
          "            if deadline is not None and time.monotonic() >= deadline:\n                return False\n"
          "            self._stop_requested(waited_since)",
          "            if deadline is not None and time.monotonic() >= deadline:\n                return False\n"
          "            if self.should_stop():\n                return True",
          ("tests/test_lock.py::test_a_wait_ends_when_should_stop_says_so",)),
    Break("a heartbeat record per beat in the journal, under another key", "hpo/worker/recovery.py",
          "                        write_beat(self._dir, trial_id, self._worker_id, time.time())",
          "                        write_beat(self._dir, trial_id, self._worker_id, time.time())\n"
          '                        self._shared.storage.set_trial_system_attr(trial_id, "hpo:alive", time.time())',
          ("tests/test_worker.py::test_heartbeats_stay_out_of_the_journal",)),
    Break("the transfer objective ignores the config's weights", "hpo/examples/physae_variants.py",
          '    weights = dict(ctx.options.get("weights", {"B2": 1.0}))', '    weights = {"B2": 1.0}',
          ("tests/test_workflows.py::test_seed_004_files_metrics_and_four_figures",)),
)


def run_one(number: int, brk: Break, python: str) -> tuple[str, float]:
    """``caught``, ``missed`` or ``stale``, and the seconds its tests took."""
    with tempfile.TemporaryDirectory(prefix="hpo-break-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), "HEAD"],
                       check=True)
        try:
            target = tree / brk.path
            text = target.read_text()
            if text.count(brk.old) != 1:
                return "stale", 0.0
            target.write_text(text.replace(brk.old, brk.new))
            env = {**os.environ, "PYTHONPATH": str(tree)}
            started = time.monotonic()
            done = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *brk.tests],
                                  cwd=tree, env=env, capture_output=True, text=True)
            summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
            verdict = {1: "caught", 0: "missed"}.get(done.returncode, f"error {done.returncode}")
            return f"{verdict} ({summary.strip('= ').split(' in ')[0]})", time.monotonic() - started
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)


def main(argv: list[str]) -> int:
    chosen = [int(a) for a in argv] or list(range(1, len(BREAKS) + 1))
    python = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable
    print("| # | break | tests that must fail | result | seconds |\n|---|---|---|---|---|")
    bad = 0
    for number in chosen:
        brk = BREAKS[number - 1]
        result, seconds = run_one(number, brk, python)
        bad += not result.startswith("caught")
        tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in brk.tests)
        print(f"| {number} | {brk.what} (`{brk.path}`) | {tests} | {result} | {seconds:.0f} |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
