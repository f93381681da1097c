"""Timings of the preference stage (Tables 1 and 2, FAU-Net, fit, annotate, whole reproduce).

Usage: python benchmarks/bench_preference.py [RELEASE_PATH] [--repeat N] [--no-reproduce]

Prints wall-clock seconds (best of N runs) for each step on the public release. Targets:
Tables 1 and 2 under 2 s, the whole ``fergi reproduce`` (loading included) under 15 s.
For comparison, the authors' published code needs about 4.5 minutes for Tables 1 and 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "fergi-public"


def best_of(repeat, fn):
    """Best wall-clock time of ``repeat`` runs and the last result."""
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("FERGI_DATA", str(DEFAULT)))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-reproduce", action="store_true", help="skip the end-to-end reproduce")
    args = parser.parse_args()

    import torch

    from fergi.preference import (
        AUcombValence,
        annotate_pairs,
        lopo_evaluate,
        reproduce_paper_tables,
    )
    from fergi.preference._data import load_table
    from fergi.preference._paper import aucomb_tables, faunet_results

    print(f"cpu cores: {os.cpu_count()}, torch threads default: {torch.get_num_threads()}, "
          f"load average: {os.getloadavg()[0]:.2f}")
    t_load, (table, excluded) = best_of(1, lambda: load_table(args.data, screen=True, need_rankings=True))
    print(f"load release + activation values + screening   {t_load:7.2f} s  ({len(table)} images)")
    included = sorted(set(table["participant"]) - set(excluded))
    everyone = sorted(set(table["participant"]))
    t, res = best_of(args.repeat, lambda: aucomb_tables(table, included))
    print(f"Tables 1 and 2 (both formulas) + coverage       {t:7.2f} s  "
          f"(AUcomb {res['table1']['accuracy']['AUcomb']:.2f}% on {res['table1']['n_selected']} pairs)")
    t, fn = best_of(args.repeat, lambda: faunet_results(table, everyone))
    print(f"FAU-Net LOPO (33 folds x 300 epochs) + ensemble {t:7.2f} s  "
          f"(FAU-Net {fn['independent']:.2f}%, ensemble + FAU-Net {fn['ensemble_with_faunet']:.2f}%)")
    t, _ = best_of(args.repeat, lambda: reproduce_paper_tables(table, excluded=excluded))
    print(f"reproduce_paper_tables (all of the above)       {t:7.2f} s")
    screened = table[table["participant"].isin(included)]
    t, _ = best_of(args.repeat, lambda: AUcombValence().fit(screened))
    print(f"AUcombValence().fit, 11,781 grid points          {t:7.2f} s")
    t, r = best_of(args.repeat, lambda: lopo_evaluate(AUcombValence(), screened))
    print(f"lopo_evaluate(AUcombValence()), 30 folds        {t:7.2f} s  ({r.summary()})")
    t, labels = best_of(args.repeat, lambda: annotate_pairs(table))
    print(f"annotate_pairs (default model)                  {t:7.2f} s  ({len(labels)} pairs)")
    if not args.no_reproduce:
        from fergi._reproduce import reproduce

        with tempfile.TemporaryDirectory() as out:
            try:
                t, run = best_of(1, lambda: reproduce(args.data, out, download=False))
            except ImportError as exc:  # a figure function not wired in yet
                print(f"(figures skipped: {exc})")
                t, run = best_of(1, lambda: reproduce(args.data, out, download=False, figures=False))
        steps = ", ".join(f"{k} {v:.2f}" for k, v in run.timings.items())
        print(f"whole reproduce (fergi._reproduce.reproduce)    {t:7.2f} s  ({steps})")


if __name__ == "__main__":
    main()
