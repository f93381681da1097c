"""Label quality of every annotation-model variant under strict LOPO, on the public release.

Usage: python benchmarks/bench_labels.py [RELEASE_PATH] [--quick] [--bootstrap B]

For each variant (valence model x normalisation) on the 30 screened participants, prints
with 95 % participant-bootstrap intervals:

* Table 1 style: accuracy on the pairs above each fold's own abstention threshold, and
  the share of pairs selected;
* independent accuracy on all pairs;
* integrated with the ImageReward / PickScore / HPS v2 ensemble (eq. 10), all pairs;
* selective accuracy on the top 10, 19.4 and 30 % of pairs by |score difference|, for the
  reaction score alone and for the integrated score (the labels a user would export);

then how the labels react to rescaled AUs (a random factor in [0.3, 3] per participant,
and a random increasing power transform per participant and AU), and the time each
evaluation took. ``--quick`` runs two variants on 8 participants with 200 replicates.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "fergi-public"
VARIANTS = (
    ("aucomb", "none"),
    ("aucomb", "baseline_median"),
    ("aucomb", "quantile"),
    ("linear12", "baseline_median"),
    ("linear12", "quantile"),
    ("faunet", "baseline_median"),
)
QUICK_VARIANTS = (("aucomb", "none"), ("aucomb", "baseline_median"))


def _fmt(entry) -> str:
    lo, hi = entry["ci"]
    return f"{entry['accuracy']:6.2f} [{lo:5.2f}, {hi:5.2f}]"


def _agreement(a, b) -> float:
    keys = ["participant", "session", "image_a", "image_b"]
    a, b = a.sort_values(keys, ignore_index=True), b.sort_values(keys, ignore_index=True)
    same = (a["preferred"].astype("Int64") == b["preferred"].astype("Int64")).fillna(False)
    same &= a["confident"].to_numpy() == b["confident"].to_numpy()
    return 100.0 * float(same.mean())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("FERGI_DATA", str(DEFAULT)))
    parser.add_argument("--quick", action="store_true", help="two variants, 8 participants")
    parser.add_argument("--bootstrap", type=int, default=None, help="replicates (default 2000, quick 200)")
    args = parser.parse_args(argv)

    from fergi.preference import (
        RAW_MODEL,
        AnnotationModel,
        default_model_path,
        default_valence,
        evaluate_lopo,
        load_model,
        load_reaction_data,
        paired_difference,
    )

    n_boot = args.bootstrap or (200 if args.quick else 2000)
    t = time.perf_counter()
    data, excluded = load_reaction_data(args.data, screen=True, need_rankings=True)
    people = [p for p in data.participants if p not in excluded]
    if args.quick:
        people = people[:8]
    data = data.subset(people)
    print(f"load {time.perf_counter() - t:.2f} s: {len(people)} participants "
          f"(screened out {', '.join(excluded) or 'none'}), features {data.provenance.describe()}")
    print(f"strict leave-one-participant-out, 95 % participant-bootstrap intervals ({n_boot} replicates)")
    header = (f"{'model':<10}{'normalization':<17}{'selective (cov.)':>31}{'independent':>24}"
              f"{'integrated':>24}{'time s':>8}")
    print(header)
    results = {}
    for name, norm in (QUICK_VARIANTS if args.quick else VARIANTS):
        t = time.perf_counter()
        res = evaluate_lopo(AnnotationModel(default_valence(name, norm), norm), data, n_boot=n_boot)
        seconds = time.perf_counter() - t
        results[(name, norm)] = {**res, "seconds": seconds}
        sel = res["selective"]
        integ = _fmt(res["integrated"]) if "integrated" in res else "-"
        print(f"{name:<10}{norm:<17}{_fmt(sel):>22} ({sel['coverage']:5.2f}%)"
              f"{_fmt(res['independent']):>24}{integ:>24}{seconds:>8.1f}")
    print("\nselective accuracy on the top x % of pairs by |difference| (pooled out-of-fold scores)")
    print(f"{'model':<10}{'normalization':<17}" + "".join(
        f"{f'{kind} {p}%':>24}" for kind in ("AU", "integrated") for p in ("10", "19.4", "30")))
    for (name, norm), res in results.items():
        cells = [_fmt(res["at_coverage"][kind][p]) for kind in ("au", "integrated")
                 for p in ("10", "19.4", "30") if kind in res["at_coverage"]]
        print(f"{name:<10}{norm:<17}" + "".join(f"{c:>24}" for c in cells))
    if ("linear12", "baseline_median") in results:
        a = results[("linear12", "baseline_median")]["per_participant"]
        b = results[("aucomb", "baseline_median")]["per_participant"]
        for key, label in (("n_correct_all", "independent"), ("n_correct_integrated", "integrated")):
            gain = paired_difference(a[key], b[key], a["n_pairs"], n_boot=n_boot)
            print(f"linear12 - aucomb (baseline_median), {label}: {gain['difference']:+.2f} points "
                  f"[{gain['ci'][0]:+.2f}, {gain['ci'][1]:+.2f}]")

    print("\nlabels under per-participant AU distortions (shipped models, all pairs)")
    default, raw = load_model(), load_model(default_model_path(RAW_MODEL))
    scaled = data.with_transformed_aus(lambda x, rng: x * rng.uniform(0.3, 3.0), seed=1)

    def power(x, rng):
        return rng.uniform(0.3, 3.0, x.shape[1]) * (x + 2.0) ** rng.uniform(0.5, 2.0, x.shape[1])

    warped = data.with_transformed_aus(power, seed=2)
    invariance = {}
    for label, model, distorted in (("baseline_median, x factor", default, scaled),
                                    ("quantile, power transform", default.fallback_, warped),
                                    ("raw (paper), x factor", raw, scaled)):
        before, after = model.annotate(data), model.annotate(distorted)
        cov_before = before.groupby("participant")["confident"].mean() * 100
        cov_after = after.groupby("participant")["confident"].mean() * 100
        change = float((cov_after - cov_before).abs().mean())
        invariance[label] = {"agreement": _agreement(before, after), "coverage_change": change}
        print(f"  {label:<28} labels identical on {invariance[label]['agreement']:6.2f} % of pairs; "
              f"mean per-participant coverage change {change:5.2f} points")
    return {"variants": {f"{k[0]}/{k[1]}": {key: v[key] for key in
                                            ("selective", "independent", "integrated", "at_coverage", "seconds")
                                            if key in v}
                         for k, v in results.items()},
            "invariance": invariance}


if __name__ == "__main__":
    main()
