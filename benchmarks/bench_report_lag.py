"""How late other processes see a running trial's reports (grouped writes, ``HPO_FLUSH_SECONDS``).

Two ``hpo worker`` processes run trials that report every ``--step`` seconds; each
report's value is the time it was reported. A reader (plain Python, as another worker
or optuna-dashboard would read the file) polls the journal every 20 ms and notes when
each report first appears: lag = appearance - report. Per ``HPO_FLUSH_SECONDS`` value:
the lag's median, p90 and maximum, and the journal appends per trial.

    python benchmarks/bench_report_lag.py --flush 0 5 30 --seconds 70
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OBJECTIVE = r'''
import os, time
def objective(params, ctx):
    for step in range(int(os.environ["B_STEPS"])):
        time.sleep(float(os.environ["B_STEP"]))
        ctx.report(step, time.time())
    return params["x"]
'''


def measure(flush: float, seconds: float, step: float, trial_seconds: float) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="lag-"))
    try:
        (work / "lag_objective.py").write_text(OBJECTIVE)
        (work / "lag.yaml").write_text("study_name: lag\nobjective: lag_objective:objective\n"
                                       "space:\n  x: {type: float, low: 0.0, high: 1.0}\n")
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{work}", "HPO_CONFIG": str(work / "lag.yaml"),
               "MAX_TRIALS": "1000", "OPTUNA_PRUNER": "none", "OPTUNA_SAMPLER": "random", "HPO_EXPORT_AT_END": "0",
               "HPO_FLUSH_SECONDS": str(flush), "B_STEP": str(step), "B_STEPS": str(int(trial_seconds / step))}
        procs = [subprocess.Popen([sys.executable, "-m", "hpo", "worker", "--quiet"], cwd=work, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        journal = work / "optuna_journal" / "lag.journal"
        offset, lags, appends = 0, [], 0
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(0.02)
            if not journal.exists():
                continue
            with open(journal, "rb") as f:
                f.seek(offset)
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            offset += len(whole)
            now = time.time()
            for line in whole.splitlines():
                record = json.loads(line)
                if record["op_code"] == 7:
                    lags.append(now - record["intermediate_value"])
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        ended = journal.read_bytes().count(b'{"op_code":6,')
        appends = len(journal.read_bytes().splitlines())
        lags.sort()
        return {"reports": len(lags), "median": statistics.median(lags), "p90": lags[int(0.9 * (len(lags) - 1))],
                "max": lags[-1], "trials": ended, "records": appends}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flush", type=float, nargs="+", default=[0.0, 5.0, 30.0])
    parser.add_argument("--seconds", type=float, default=70.0, help="how long each setting runs")
    parser.add_argument("--step", type=float, default=0.5, help="seconds between two reports")
    parser.add_argument("--trial-seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; 2 workers, a report every "
          f"{args.step:g} s, {args.trial_seconds:g} s trials, {args.seconds:g} s per row")
    print("| HPO_FLUSH_SECONDS | reports seen | lag median s | lag p90 s | lag max s |")
    print("|---:|---:|---:|---:|---:|")
    for flush in args.flush:
        r = measure(flush, args.seconds, args.step, args.trial_seconds)
        print(f"| {flush:g} | {r['reports']} | {r['median']:.2f} | {r['p90']:.2f} | {r['max']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
