"""Start-up time of the CLI: wall time of `rn-deploy --help` and `rn-deploy <cmd> --help` in fresh processes.

    python bench/cli_start.py --runs 5 --out cli_start.json

Each command runs ``--runs`` times as a new ``python -m rn_deploy.cli`` process (what the console script
does); the median wall time is reported (goal: <= 0.5 s on a 2-core machine), with whether the process
imported torch (it must not) and the 1-minute load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROBE = ("import sys, runpy; sys.argv = ['rn-deploy', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('rn_deploy.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules))")


def measure(args: list[str], runs: int) -> dict[str, object]:
    times, torch_loaded = [], False
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t)
        torch_loaded |= "TORCH=True" in p.stderr
    return {"command": "rn-deploy " + " ".join(args), "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3), "runs": runs, "imports_torch": torch_loaded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = [measure(args, a.runs) for args in (["--help"], ["export", "--help"], ["build", "--help"], ["train", "--help"])]
    res = {"load_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "python": sys.version.split()[0],
           "target_s": 0.5, "results": rows}
    for r in rows:
        print(f"{r['command']:<28} median {r['median_s']:.3f}s  min {r['min_s']:.3f}s  torch: {r['imports_torch']}")
    print(f"load (1 min) {res['load_1min']} on {res['cpus']} CPUs")
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
