"""Image pipeline benchmark on the real maps: cold pass (decode + resize + cache write) vs warm pass (cache read).

Run: `python benchmarks/image_bench.py [--maps-root ../shared/reasonmap/maps] [--max-pixels 12845056]`.
Targets: the warm pass >= 50x faster than the cold one; peak RSS < 4 GiB.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from rewardmap.data.images import MAX_PIXELS, MIN_PIXELS, load_image


def timed_pass(maps: list[Path], root: Path, cache_dir: Path, max_pixels: int) -> tuple[float, list[tuple]]:
    """Seconds for one pass over `maps` (each ends as an in-memory RGB image), and each (name, size)."""
    start = time.perf_counter()
    sizes = []
    for path in maps:
        image = load_image(str(path), root=root, min_pixels=MIN_PIXELS, max_pixels=max_pixels, cache_dir=cache_dir)
        sizes.append((path.relative_to(root).as_posix(), image.size))
    return time.perf_counter() - start, sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(__file__).resolve().parents[1].parent / "shared" / "reasonmap" / "maps"
    parser.add_argument("--maps-root", type=Path, default=default_root, help="folder of <country>/<city>.png maps")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="pixel budget (recipe: 12,845,056)")
    args = parser.parse_args()
    maps = sorted(args.maps_root.rglob("*.png"))
    if not maps:
        print(f"no maps under {args.maps_root}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as cache_dir:
        cold, sizes = timed_pass(maps, args.maps_root, Path(cache_dir), args.max_pixels)
        warm, _ = timed_pass(maps, args.maps_root, Path(cache_dir), args.max_pixels)
        cache_mb = sum(p.stat().st_size for p in Path(cache_dir).rglob("*.npy")) / 2**20
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    for name, (width, height) in sizes:
        print(f"{name:40s} -> {width} x {height}")
    print(f"maps: {len(maps)}; max_pixels: {args.max_pixels:,}; cache: {cache_mb:.0f} MiB")
    print(f"cold pass: {cold:.2f} s; warm pass: {warm:.3f} s; speed-up: {cold / warm:.1f}x (target >= 50x)")
    print(f"peak RSS: {peak_gib:.2f} GiB (target < 4 GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
