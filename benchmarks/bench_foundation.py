"""Time loading, activation values and statistics on the public FERGI release.

Usage: python benchmarks/bench_foundation.py [--data PATH] [--repeat N]

"Cold" evicts the release's files from the page cache first (posix_fadvise
DONTNEED, no root needed), so the load reads from disk.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from fergi.datasets import fetch_fergi, load_frames, load_images, load_invalid_images
from fergi.features import compute_activation_values, image_table, screen_participants
from fergi.stats import reaction_statistics

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "fergi-public"


def evict(root: Path) -> int:
    n = 0
    for path in root.rglob("*.csv"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("FERGI_DATA") or (str(DEFAULT) if DEFAULT.exists() else None))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = fetch_fergi(args.data)
    n = evict(root)
    frames, cold = timed(load_frames, root)
    print(f"load_frames cold ({n} files evicted): {cold:.2f} s  ({len(frames):,} frames, "
          f"{frames.groupby(['participant', 'session', 'image', 'clip'], observed=True).ngroups:,} clips)")
    warm = min(timed(load_frames, root)[1] for _ in range(args.repeat))
    print(f"load_frames warm (best of {args.repeat}): {warm:.2f} s")
    images, t_images = timed(load_images, root)
    print(f"load_images: {t_images:.3f} s ({len(images):,} images)")
    clips, t_act = timed(compute_activation_values, frames)
    print(f"compute_activation_values: {t_act:.3f} s ({len(clips):,} clips)")
    excluded, t_screen = timed(screen_participants, clips)
    print(f"screen_participants: {t_screen:.3f} s -> {excluded}")
    table, t_table = timed(image_table, images, clips, load_invalid_images(root))
    print(f"image_table: {t_table:.3f} s ({len(table):,} valid reaction clips)")
    stats, t_stats = timed(reaction_statistics, table)
    print(f"reaction_statistics: {t_stats:.3f} s ({len(stats)} tests, {int(stats['significant'].sum())} significant)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
