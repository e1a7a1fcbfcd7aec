"""`python -m experiments` lists the experiments; `python -m experiments all [flags]` runs them.

Each experiment runs in its own process (absl flags are global), with the given flags passed
through (e.g. `--quick`), under runs/<experiment>/<timestamp> unless `--model_dir_root` is set.
"""

import datetime
import json
import os
import subprocess
import sys
import time

from experiments import EXPERIMENTS

USAGE = """usage: python -m experiments                 list the experiments
       python -m experiments all [FLAGS...]    run every experiment in sequence
       python -m experiments NAME [FLAGS...]   run one (same as python -m experiments.NAME)
FLAGS are passed to each experiment, e.g. --quick; --model_dir_root=DIR puts each run in DIR/NAME."""


def list_experiments():
    width = max(len(n) for n in EXPERIMENTS)
    print("experiments (python -m experiments.NAME --help shows every flag):")
    for name, (_, description) in EXPERIMENTS.items():
        print(f"  {name:<{width}}  {description}")


def run_all(names, flags):
    root = None
    passthrough = []
    for flag in flags:
        if flag.startswith("--model_dir_root="):
            root = flag.split("=", 1)[1]
        elif flag.startswith("--model_dir"):
            print("experiments: error: use --model_dir_root with 'all'", file=sys.stderr)
            return 2
        else:
            passthrough.append(flag)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    rows, failed = [], 0
    for name in names:
        model_dir = os.path.join(root, name) if root else os.path.join("runs", name, stamp)
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", EXPERIMENTS[name][0],
                                f"--model_dir={model_dir}", *passthrough])
        seconds = time.perf_counter() - start
        results_path = os.path.join(model_dir, "results.json")
        if code == 0 and os.path.exists(results_path):
            with open(results_path) as f:
                results = json.load(f)
            confirmed = sum(c["verdict"] == "confirmed" for c in results["claims"])
            rows.append((name, results["status"], f"{confirmed}/{len(results['claims'])}",
                         f"{seconds:.0f}s", model_dir))
        else:
            failed += 1
            rows.append((name, f"failed (exit {code})", "-", f"{seconds:.0f}s", model_dir))
    header = ("experiment", "status", "claims confirmed", "time", "model_dir")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    logdir = root or "runs"
    print(f"\nTensorBoard: tensorboard --logdir {logdir} --host 127.0.0.1  (or: make tensorboard)")
    return 1 if failed else 0


def main(argv):
    if not argv:
        list_experiments()
        return 0
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] == "all":
        return run_all(list(EXPERIMENTS), argv[1:])
    if argv[0] in EXPERIMENTS:
        return run_all([argv[0]], argv[1:])
    print(f"experiments: error: unknown experiment {argv[0]!r}; choose from: "
          f"all, {', '.join(EXPERIMENTS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
