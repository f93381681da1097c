"""Time loading, activation values and statistics on the public FERGI release.

Usage: python benchmarks/bench_foundation.py [--data PATH] [--repeat N] [--quick]

"Cold" evicts the release's files from the page cache first (posix_fadvise
DONTNEED, no root needed), so the load reads from disk. ``--quick`` (what the test
suite runs) times the same steps once, on three participants of the release.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _release import QUICK_PARTICIPANTS, default_data, release_subset
from fergi.datasets import fetch_fergi, load_frames, load_images, load_invalid_images
from fergi.features import compute_activation_values, image_table, screen_participants
from fergi.stats import reaction_statistics


def evict(root: Path) -> int:
    n = 0
    # followlinks: the --quick subset links the release's participant folders in.
    for folder, _dirs, names in os.walk(root, followlinks=True):
        for name in names:
            if not name.endswith(".csv"):
                continue
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
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


def main(argv=None) -> dict:
    """Print the figures and return them (seconds, counts, peak RSS in MiB)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=default_data())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"participants {', '.join(QUICK_PARTICIPANTS)} only, --repeat 1 (for tests)",
    )
    args = parser.parse_args(argv)
    root = fetch_fergi(args.data)
    with tempfile.TemporaryDirectory(prefix="fergi-bench-") as tmp:
        if args.quick:
            args.repeat = 1
            root = release_subset(root, QUICK_PARTICIPANTS, Path(tmp) / "release")
            print(f"quick: participants {', '.join(QUICK_PARTICIPANTS)} of {args.data}")
        return _bench(root, args.repeat)


def _bench(root: Path, repeat: int) -> dict:
    n = evict(root)
    frames, cold = timed(load_frames, root)
    n_clips = frames.groupby(["participant", "session", "image", "clip"], observed=True).ngroups
    print(f"load_frames cold ({n} files evicted): {cold:.2f} s  ({len(frames):,} frames, "
          f"{n_clips:,} clips)")
    warm = min(timed(load_frames, root)[1] for _ in range(repeat))
    print(f"load_frames warm (best of {repeat}): {warm:.2f} s")
    images, t_images = timed(load_images, root)
    print(f"load_images: {t_images:.3f} s ({len(images):,} images)")
    clips, t_act = timed(compute_activation_values, frames)
    print(f"compute_activation_values: {t_act:.3f} s ({len(clips):,} clips)")
    excluded, t_screen = timed(screen_participants, clips)
    print(f"screen_participants: {t_screen:.3f} s -> {excluded}")
    table, t_table = timed(image_table, images, clips, load_invalid_images(root))
    print(f"image_table: {t_table:.3f} s ({len(table):,} valid reaction clips)")
    stats, t_stats = timed(reaction_statistics, table)
    n_significant = int(stats["significant"].sum())
    print(f"reaction_statistics: {t_stats:.3f} s ({len(stats)} tests, {n_significant} significant)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")
    return {
        "files_evicted": n,
        "frames": len(frames),
        "clips": n_clips,
        "load_frames_cold_s": cold,
        "load_frames_warm_s": warm,
        "load_images_s": t_images,
        "images": len(images),
        "compute_activation_values_s": t_act,
        "screen_participants_s": t_screen,
        "excluded": list(excluded),
        "image_table_s": t_table,
        "valid_reaction_clips": len(table),
        "reaction_statistics_s": t_stats,
        "tests": len(stats),
        "significant": n_significant,
        "peak_rss_mib": peak,
    }


if __name__ == "__main__":
    main()
