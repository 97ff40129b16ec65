"""Peak host memory of UDM.transfer on large images (tiled inference), default model sizes.

Usage: python bench/memory_tiling.py HEIGHT WIDTH [--tile N]
Prints one JSON line: size, tile size, seconds, peak RSS in MiB (ru_maxrss of this process).
Run one size per process so each peak is its own.
"""

import argparse
import json
import resource
import time

import torch

from udm_fast import UDM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("height", type=int)
    parser.add_argument("width", type=int)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--filters", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = UDM(filters=args.filters).eval()
    for c in (model.global_compressor, model.local_compressor):
        c.model.update(force=True)
    model.tile_size = args.tile
    x = torch.rand(1, 3, args.height, args.width)
    y = torch.rand(1, 3, args.height, args.width)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        out = model.transfer(x, y, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "height": args.height,
                "width": args.width,
                "tile": args.tile,
                "filters": args.filters,
                "threads": torch.get_num_threads(),
                "seconds": round(seconds, 1),
                "peak_rss_mib": round(peak),
                "rss_before_mib": round(base),
                "finite": bool(torch.isfinite(out).all()),
            }
        )
    )


if __name__ == "__main__":
    main()
