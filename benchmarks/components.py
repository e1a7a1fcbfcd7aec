"""Every component benchmark in one process, printed as one table.

Each area module `benchmarks.bench_<area>` exposes `run(quick: bool = False) -> list[dict]`,
one dict per comparison with keys name, ours_ms, peer, peer_ms, ratio (ours / peer) and
target (the largest acceptable ratio, or None for a reference row). An area that fails to
import or to run prints its error and the others still run.

Run: `python -m benchmarks.components [--quick] [--only=nms,optimizers]`.
"""

import importlib
import os
import sys
import time
import traceback

AREAS = ("optimizers", "layers_core", "attention", "nms")


def machine():
    """One line describing where the numbers were taken."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    gpu = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    return f"{os.cpu_count()} CPUs, {gpu}, TensorFlow {tf.__version__}, Keras {keras.__version__}"


def run_area(area, quick):
    """Imports and runs one area. Returns (rows, error message or None, seconds)."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.bench_{area}")
    except Exception as e:  # noqa: BLE001 -- report any import failure and go on
        return [], f"does not import: {type(e).__name__}: {e}", time.perf_counter() - start
    try:
        rows = module.run(quick=quick)
    except Exception as e:  # noqa: BLE001 -- one failing area must not stop the others
        traceback.print_exc()
        return [], f"failed: {type(e).__name__}: {e}", time.perf_counter() - start
    return rows, None, time.perf_counter() - start


def verdict(row):
    """"pass", "MISS" or "-" (a reference row without a target)."""
    if row.get("target") is None:
        return "-"
    return "pass" if row["ratio"] <= row["target"] else "MISS"


def print_table(results):
    name_w = max([len("name")] + [len(r["name"]) for rows, _, _ in results.values() for r in rows])
    peer_w = max([len("peer")] + [len(r["peer"]) for rows, _, _ in results.values() for r in rows])
    header = (f"{'area':<12} {'name':<{name_w}} {'ours ms':>9} {'peer ms':>9} {'ratio':>6} "
              f"{'target':>6} {'ok':>4}  {'peer':<{peer_w}}")
    print(header)
    print("-" * len(header))
    for area, (rows, error, _) in results.items():
        if error:
            print(f"{area:<12} ERROR: {error}")
            continue
        for r in rows:
            target = "-" if r.get("target") is None else f"{r['target']:.2f}"
            print(f"{area:<12} {r['name']:<{name_w}} {r['ours_ms']:9.3f} {r['peer_ms']:9.3f} "
                  f"{r['ratio']:6.3f} {target:>6} {verdict(r):>4}  {r['peer']:<{peer_w}}")


def parse_only(argv):
    for arg in argv:
        if arg.startswith("--only="):
            chosen = [a.strip() for a in arg.split("=", 1)[1].split(",") if a.strip()]
            unknown = sorted(set(chosen) - set(AREAS))
            if unknown:
                raise SystemExit(f"--only: unknown area(s) {unknown}; choose from {list(AREAS)}")
            return chosen
    return list(AREAS)


def main(argv):
    quick = "--quick" in argv
    areas = parse_only(argv)
    results = {}
    for area in areas:
        print(f"[{area}] running{' (quick)' if quick else ''} ...", flush=True)
        results[area] = run_area(area, quick)
        rows, error, seconds = results[area]
        print(f"[{area}] {'ERROR: ' + error if error else f'{len(rows)} rows'} in {seconds:.1f}s",
              flush=True)
    print()
    print(f"Component benchmarks{' (quick)' if quick else ''}: {machine()}")
    print_table(results)
    scored = [r for rows, _, _ in results.values() for r in rows if r.get("target") is not None]
    misses = [r for r in scored if verdict(r) == "MISS"]
    failed = [a for a, (_, error, _) in results.items() if error]
    print(f"\n{len(scored) - len(misses)}/{len(scored)} within target"
          + (f"; {len(misses)} miss" if misses else "")
          + (f"; areas with errors: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
