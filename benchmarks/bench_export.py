"""Throughput and peak memory of ``fergi export-labels`` (Pick-a-Pic parquet shards).

Usage: python benchmarks/bench_export.py [--pairs N [N ...]] [--shard-size S] [--quick]

For each pair count (default 100,000 and 1,000,000) a fresh child process streams that
many synthetic labelled pairs (10 pairs per session, one chunk of 10,000 pairs per
participant, as :func:`fergi.preference.export.iter_labels` yields them) through
the exporter: the decision rule, pseudonyms, ids, JPEG bytes of both images and the
parquet shards. It prints pairs per second, the process's peak resident memory
(``resource.ru_maxrss``) and Arrow's peak allocation. Peak memory should stay flat as
the pair count grows: it depends on the shard size, not on the number of pairs.

The images come from a pool of 64 small PNGs on disk (the pairs reference them by key),
so the figures measure the exporter, not the file system. ``--quick`` runs 2,000 and
20,000 pairs with 1,000-pair shards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POOL = 64
PAIRS_PER_CHUNK = 10_000


class _PoolImages:
    """An :class:`ImageStore` stand-in mapping every image key onto a pool of real PNGs."""

    def __init__(self, folder: Path):
        from fergi.preference.export import ImageStore

        self.store = ImageStore(folder)

    def _pool_key(self, participant, session, image):
        return ("pool", 0, (hash((participant, int(session), int(image))) % POOL) + 1)

    def require(self, participant, session, image):
        return self.store.require(*self._pool_key(participant, session, image))

    def jpeg(self, participant, session, image):
        return self.store.jpeg(*self._pool_key(participant, session, image))


def _chunks(n_pairs: int, seed: int = 0):
    """Synthetic label chunks: 5 images a session, its 10 pairs, random valence scores."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    a_idx, b_idx = np.triu_indices(5, k=1)
    a_idx, b_idx = a_idx + 1, b_idx + 1
    done, chunk_id = 0, 0
    while done < n_pairs:
        n = min(PAIRS_PER_CHUNK, n_pairs - done)
        sessions = np.arange(n) // 10 + 1
        diff = rng.normal(0, 0.3, n)
        ranks = rng.permuted(np.tile(np.arange(1, 6), (len(np.unique(sessions)), 1)), axis=1)
        image_a, image_b = a_idx[np.arange(n) % 10], b_idx[np.arange(n) % 10]
        row = sessions - 1
        preferred = pd.array(np.where(diff > 0, image_a, image_b), dtype="Int64")
        yield pd.DataFrame({
            "participant": f"p{chunk_id:05d}", "session": sessions, "image_a": image_a,
            "image_b": image_b, "preferred": preferred, "score_difference": diff,
            "confidence": np.abs(diff), "confident": np.abs(diff) >= 0.2,
            "label_source": "reactions", "normalization": "baseline_median",
            "rank_a": ranks[row, image_a - 1].astype(float),
            "rank_b": ranks[row, image_b - 1].astype(float),
        })
        done += n
        chunk_id += 1


def _child(n_pairs: int, shard_size: int, folder: Path) -> dict:
    import pyarrow as pa
    from PIL import Image

    from fergi.preference.export import write_labels

    images = folder / "images" / "pool" / "session_0"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(1, POOL + 1):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"image_{k}.png")
    t = time.perf_counter()
    summary = write_labels(_chunks(n_pairs), folder / "out", format="pickapic",
                           images=_PoolImages(folder / "images"), salt=b"b" * 32,
                           all_pairs=True, shard_size=shard_size)
    seconds = time.perf_counter() - t
    size = sum(f.stat().st_size for f in (folder / "out" / "data").iterdir())
    # ru_maxrss is in KiB on Linux.
    return {"pairs": summary.n_rows, "shards": summary.n_shards, "seconds": seconds,
            "pairs_per_s": summary.n_rows / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
            "parquet_mb": size / 2**20}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+")
    parser.add_argument("--shard-size", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shard = args.shard_size or (1_000 if args.quick else 10_000)
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_child(args.child, shard, Path(tmp))))
        return {}
    sizes = args.pairs or ([2_000, 20_000] if args.quick else [100_000, 1_000_000])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"fergi export-labels, Pick-a-Pic parquet, {shard}-pair shards, a fresh process per size")
    print(f"{'pairs':>10} {'shards':>7} {'seconds':>8} {'pairs/s':>9} {'peak RSS MB':>12} "
          f"{'Arrow peak MB':>14} {'parquet MB':>11}")
    figures = {}
    for n in sizes:
        done = subprocess.run([sys.executable, __file__, "--child", str(n), "--shard-size", str(shard)],
                              capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench_export: the {n}-pair run failed:\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        figures[n] = r
        print(f"{r['pairs']:>10,} {r['shards']:>7} {r['seconds']:>8.1f} {r['pairs_per_s']:>9,.0f} "
              f"{r['peak_rss_mb']:>12.0f} {r['arrow_peak_mb']:>14.1f} {r['parquet_mb']:>11.1f}")
    small, large = figures[sizes[0]], figures[sizes[-1]]
    print(f"peak RSS x{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} for "
          f"x{sizes[-1] / sizes[0]:g} pairs")
    return figures


if __name__ == "__main__":
    main()
