"""`python -m bench.window [--children 100,1000] [--rounds 5]`: the blind
window (the new image's `exec generation=N` -> `ready generation=N`, from the
master's own log) with each number of running children, every Phoenix USR2
right after one of gunicorn's USR2 -> new pidfile (bench/replace.py), all in
one run. Prints, per number of children, Phoenix's and gunicorn's
min/median/max, the ratio of medians and the per-round ratios (each Phoenix
round against the gunicorn round just before it), with the load average at
the start and end of each; `--json FILE` keeps the raw rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import replace
from bench.procs import Registry, loadavg, median


def spread(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{ms[0]:.0f} / {median(ms):.0f} / {ms[-1]:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.window")
    parser.add_argument("--children", default="100,1000", help="comma-separated numbers of running children")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the raw rounds here")
    args = parser.parse_args()

    reg = Registry()
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="phoenix-window-") as tmp:
            for n in (int(c) for c in args.children.split(",")):
                load_start = loadavg()
                t0 = time.monotonic()
                ph, gu = replace.run(reg, Path(tmp) / str(n), n, args.rounds, lambda s: print(s, flush=True))
                blind = [r["blind_s"] for r in ph["rounds"]]
                paired = [p / g for p, g in zip(blind, gu["rounds"], strict=False)]
                results.append({"n": n, "phoenix": ph, "gunicorn": gu, "load_start": load_start,
                                "load_end": loadavg(), "took_s": time.monotonic() - t0})
                print(f"{n} children: phoenix exec -> ready {spread(blind)}; gunicorn USR2 -> pidfile "
                      f"{spread(gu['rounds'])}; ratio of medians {median(blind) / median(gu['rounds']):.2f}x; "
                      f"per round {min(paired):.2f}x / {median(paired):.2f}x / {max(paired):.2f}x; "
                      f"lost beats {ph['lost_beats']}, false kills {ph['false_kills']}, kept "
                      f"{ph['children_kept']}/{n}; load {load_start} -> {loadavg()}", flush=True)
    finally:
        reg.cleanup()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
