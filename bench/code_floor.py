"""How close the generator gets to a degradation when the codes are fitted instead of encoded:

    python bench/code_floor.py --clean PHOTOS/heldout [--weights W] [--seed 1000003 ...] [--codes local]

Central crops of the photos (as ``udm-fast eval --clean``) under the degradations ``udm_fast.degrade`` draws
with each ``--seed``. For each, the encoders' codes of y start an Adam fit of the chosen codes (global e_g,
local e_l or both, rounded as at inference with a straight-through gradient) to the spectrum distance to y
plus ``--l1`` x L1; prints the spectrum distance of the identity, of the encoded and of the fitted codes'
transfer, with the local code's rate (bits per location, eval-mode rounding) before and after. A fitted code
far below the encoded one means the generator can render the degradation and the encoders do not ask for it
(bench/RESULTS.md, session 10).
"""

from __future__ import annotations

import argparse

import torch

from udm_fast.cli.evaluate import _clean_crops
from udm_fast.eval.transfer import degradation_grid, spectrum_distance
from udm_fast.models.loading import load_model

CODES = ("global", "local", "both")


def local_bits(model, e_l: torch.Tensor) -> float:
    """Mean bits per location of the raw local code e_l [B, C, h, w] under eval-mode rounding."""
    with torch.no_grad():
        return model.local_compressor(e_l)[2].mean().item()


def fit_codes(
    model, x: torch.Tensor, y: torch.Tensor, codes: str, steps: int, lr: float, l1: float, shared: bool = False
) -> dict:
    """Fits the raw codes of y for transfers onto x (both [N, 3, H, W] in [0, 1]); returns the distances and rates.

    ``shared``: one global code for all N images (started from the mean of the encoded ones), the best a blind
    encoder that recognises the degradation but not the photo could give."""
    if codes not in CODES:
        raise ValueError(f"codes must be one of {CODES}, got {codes!r}")
    if shared and codes != "global":
        raise ValueError(f"a shared code is a global one: codes must be 'global' with shared, got {codes!r}")
    model.eval().requires_grad_(False)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        e_g, e_l = model.encode(y, quantize=False)

    def transfer(e_g, e_l):  # the inference codes, with the identity's gradient through the rounding
        noise.manual_seed(0)
        e_g = model.global_compressor(e_g, straight_through=True)[0]
        return model.synthesize(x, e_g, model.local_compressor(e_l, straight_through=True)[0], noise)

    with torch.no_grad():
        encoded = spectrum_distance(transfer(e_g, e_l).clamp(0, 1), y).mean().item()
    bits_before = local_bits(model, e_l)
    start = e_g.mean(dim=0, keepdim=True) if shared else e_g
    fitted = [t.clone().requires_grad_(True) for t in (start, e_l)]
    chosen = [t for name, t in zip(("global", "local"), fitted) if codes in (name, "both")]
    optimizer = torch.optim.Adam(chosen, lr=lr)

    def codes_of(fitted):
        return fitted[0].expand_as(e_g), fitted[1]

    for _ in range(steps):
        out = transfer(*codes_of(fitted))
        loss = spectrum_distance(out, y).mean() + l1 * (out - y).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = spectrum_distance(transfer(*codes_of(fitted)).clamp(0, 1), y).mean().item()
    return {
        "identity": spectrum_distance(x, y).mean().item(),
        "encoded": encoded,
        "fitted": final,
        "local bits encoded": bits_before,
        "local bits fitted": local_bits(model, fitted[1].detach()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", required=True, help="a folder of clean photos")
    parser.add_argument("--weights", default=None, help="a model file (default: the bundled model)")
    parser.add_argument("--seed", type=int, nargs="+", default=[1000003], help="udm_fast.degrade seeds")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--codes", choices=CODES, default="both", help="which codes the fit may change")
    parser.add_argument("--shared", action="store_true", help="one global code for all photos (--codes global)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--l1", type=float, default=20.0, help="weight of L1 to y beside the spectrum distance")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.lr <= 0 or args.l1 < 0:
        raise SystemExit("--steps must be >= 1, --lr > 0 and --l1 >= 0")
    if args.shared and args.codes != "global":
        raise SystemExit("--shared fits one global code: use it with --codes global")
    model = load_model(args.weights, False, "cpu")
    _, x = _clean_crops(args.clean, args.crop, 0, [])
    what = "one global code shared by all photos" if args.shared else f"the {args.codes} code(s)"
    print(f"{len(x)} photos, {args.crop} px, fitting {what} for {args.steps} steps")
    print("seed | degradation | identity | encoded | fitted (dB) | local bits/location encoded -> fitted")
    for seed in args.seed:
        degraded, params = degradation_grid(x, [seed, seed + 1])
        r = fit_codes(model, x, degraded[:, 0], args.codes, args.steps, args.lr, args.l1, args.shared)
        print(
            f"{seed} | {params[0]} | {r['identity']:.3f} | {r['encoded']:.3f} | {r['fitted']:.3f} | "
            f"{r['local bits encoded']:.3f} -> {r['local bits fitted']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
