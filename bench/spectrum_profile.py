"""What a transfer does to each frequency ring, next to what the true degradation does:

    python bench/spectrum_profile.py --clean PHOTOS/heldout [--weights W] [--seed 1000003 | --seed clean]

Central crops of the photos (as ``udm-fast eval --clean``) under the degradation ``udm_fast.degrade`` draws
with ``--seed`` (``clean``: y = x, the code of the clean image itself); prints, per ring, the power of y and of
the transfer ŷ over the clean image's, in dB (mean over photos), and both spectrum distances to y. A model
whose ŷ/x row falls off where y/x is flat blurs what it should leave alone (bench/RESULTS.md, session 9).
"""

from __future__ import annotations

import argparse

import torch

from udm_fast.cli.evaluate import _clean_crops
from udm_fast.eval.transfer import degradation_grid, radial_power_spectrum, spectrum_distance
from udm_fast.models.loading import load_model
from udm_fast.models.udm import GLOBAL_CODES


def ring_profile(model, x: torch.Tensor, y: torch.Tensor, rings: int) -> dict:
    """{frequency, y/x dB, ŷ/x dB: [rings] each, distance identity, distance model: floats} for x, y [N, 3, H, W]."""
    with torch.no_grad():
        y_hat = model.transfer(x, y, noise=torch.Generator().manual_seed(0)).clamp(0, 1)
    freq, px = radial_power_spectrum(x)
    _, py = radial_power_spectrum(y)
    _, ph = radial_power_spectrum(y_hat)

    def mean_db(p: torch.Tensor) -> torch.Tensor:
        return (10 * torch.log10(p.clamp_min(1e-12) / px.clamp_min(1e-12))).mean(0)

    pick = torch.linspace(0, len(freq) - 1, rings).round().long()
    return {
        "frequency": freq[pick].tolist(),
        "y/x dB": mean_db(py)[pick].tolist(),
        "ŷ/x dB": mean_db(ph)[pick].tolist(),
        "distance identity": spectrum_distance(x, y).mean().item(),
        "distance model": spectrum_distance(y_hat, y).mean().item(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", required=True, help="a folder of clean photos")
    parser.add_argument("--weights", default=None, help="a model file (default: the bundled model)")
    parser.add_argument("--seed", default="1000003", help="a udm_fast.degrade seed, or 'clean' (y = x)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--rings", type=int, default=12, help="frequency rings printed")
    parser.add_argument("--global-code", choices=GLOBAL_CODES, default=None)
    args = parser.parse_args(argv)
    if args.seed != "clean" and not args.seed.isdigit():
        raise SystemExit(f"--seed must be a non-negative integer or 'clean', got {args.seed!r}")
    if args.rings < 2:
        raise SystemExit(f"--rings must be at least 2, got {args.rings}")
    model = load_model(args.weights, False, "cpu")
    if args.global_code:
        model.global_code = args.global_code
    _, x = _clean_crops(args.clean, args.crop, 0, [])
    if args.seed == "clean":
        y, what = x, "y = x (the clean image's own code)"
    else:
        degraded, params = degradation_grid(x, [int(args.seed), int(args.seed) + 1])
        y, what = degraded[:, 0], str(params[0])
    profile = ring_profile(model, x, y, args.rings)
    print(f"{len(x)} photos, {args.crop} px, degradation: {what}, global code: {model.global_code}")
    for key in ("frequency", "y/x dB", "ŷ/x dB"):
        print(f"{key:>10} " + " ".join(f"{v:6.2f}" if "dB" in key else f"{v:6.3f}" for v in profile[key]))
    identity, transfer = profile["distance identity"], profile["distance model"]
    print(f"spectrum distance to y: identity {identity:.3f} dB, model {transfer:.3f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
