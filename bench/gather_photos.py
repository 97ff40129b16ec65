"""Gathers every photograph available offline into a training folder and a held-out folder, with a manifest
of sources and licences, for training and evaluating the bundled model:

    python bench/gather_photos.py --out /work/photos [--cache /work/cache/debphotos] [--max-side 1024]
    -> OUT/train/*.png, OUT/heldout/*.png, OUT/manifest.json

Sources:
* scikit-image's photos (the split of ``bench/embedded_photos.py``);
* matplotlib's sample photo (grace_hopper.jpg), held out;
* photographs from Debian wallpaper packages, fetched with ``apt-get download`` into the cache and
  unpacked with ``dpkg -x`` (nothing is installed). Only the files listed in ``DEBIAN_PHOTOS`` are
  used: they were picked by looking at every image of the packages, leaving out drawings, renders and
  gradients. ``HELD_OUT_DEBIAN`` keeps three of them out of training.

Large photos are reduced (Lanczos) so the longer side is at most ``--max-side``: decoding a 5K image per
training item would cost more than the training step. Output is deterministic for given packages.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import embedded_photos  # noqa: E402  (scikit-image's photos and their split)

# package -> {output name: path inside the unpacked package}
DEBIAN_PHOTOS = {
    "plasma-workspace-wallpapers": {
        f"plasma_{name}": f"usr/share/wallpapers/{name}/contents/images/*"
        for name in (
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "MilkyWay",
            "OneStandsOut",
            "Path",
            "Volna",
            "summer_1am",
        )
    },
    "mate-backgrounds": {
        f"mate_{name}": f"usr/share/backgrounds/mate/nature/{name}.jpg"
        for name in (
            "Aqua",
            "Blinds",
            "Dune",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    },
}
HELD_OUT_DEBIAN = ("plasma_Path", "plasma_Grey", "mate_LadyBird")
MATPLOTLIB_HELD_OUT = ("grace_hopper.jpg",)


def fetch_package(package: str, cache: str) -> tuple[str, str]:
    """Downloads (once) and unpacks a Debian package into the cache; returns (unpacked folder, version)."""
    os.makedirs(cache, exist_ok=True)
    debs = sorted(glob.glob(os.path.join(cache, f"{package}_*.deb")))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
        debs = sorted(glob.glob(os.path.join(cache, f"{package}_*.deb")))
        if not debs:
            raise RuntimeError(f"apt-get download {package} left no .deb in {cache}")
    deb = debs[-1]
    version = subprocess.run(
        ["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    folder = os.path.join(cache, f"x_{package}")
    if not os.path.isdir(folder):
        subprocess.run(["dpkg", "-x", deb, folder], check=True)
    return folder, version


def package_licences(folder: str, package: str) -> list:
    """The distinct License: values of the package's copyright file."""
    path = os.path.join(folder, "usr/share/doc", package, "copyright")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return sorted(set(re.findall(r"^License:\s*(\S.*)$", f.read(), flags=re.MULTILINE)))


def largest(pattern: str) -> str:
    """The largest file matching the glob (the highest resolution of a wallpaper)."""
    files = glob.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no file matches {pattern}")
    return max(files, key=lambda f: (os.path.getsize(f), f))


def reduce(image: Image.Image, max_side: int) -> Image.Image:
    image = image.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    return image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to create (train/, heldout/, manifest.json)")
    parser.add_argument(
        "--cache",
        default=os.path.expanduser("~/.cache/udm_fast/debian_photos"),
        help="where the .deb files are downloaded and unpacked",
    )
    parser.add_argument("--max-side", type=int, default=1024, help="longer side of the written photos")
    args = parser.parse_args(argv)
    for split in ("train", "heldout"):
        os.makedirs(os.path.join(args.out, split), exist_ok=True)
    manifest = []

    def write(image: Image.Image, name: str, split: str, **source) -> None:
        image = reduce(image, args.max_side)
        path = os.path.join(split, f"{name}.png")
        image.save(os.path.join(args.out, path))
        manifest.append({"file": path, "size": list(image.size), **source})

    import skimage

    for split, names in (("train", embedded_photos.TRAIN), ("heldout", embedded_photos.HELD_OUT)):
        for name in names:
            try:
                array = embedded_photos.load(name)
            except (ImportError, ModuleNotFoundError) as error:
                print(f"skipped {name}: {error}", file=sys.stderr)
                continue
            write(
                Image.fromarray(array),
                f"skimage_{name}",
                split,
                source=f"scikit-image {skimage.__version__} skimage.data",
                licence="see skimage/data/README.txt (public domain / CC0 / CC-BY per image)",
            )

    import matplotlib

    sample_data = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    for filename in MATPLOTLIB_HELD_OUT:
        with Image.open(os.path.join(sample_data, filename)) as image:
            write(
                image,
                "matplotlib_" + os.path.splitext(filename)[0],
                "heldout",
                source=f"matplotlib {matplotlib.__version__} mpl-data/sample_data/{filename}",
                licence="see mpl-data/sample_data/README.txt",
            )

    for package, photos in DEBIAN_PHOTOS.items():
        folder, version = fetch_package(package, args.cache)
        licences = package_licences(folder, package)
        for name, pattern in photos.items():
            path = largest(os.path.join(folder, pattern))
            with Image.open(path) as image:
                write(
                    image,
                    name,
                    "heldout" if name in HELD_OUT_DEBIAN else "train",
                    source=f"Debian {package} {version}: /{os.path.relpath(path, folder)}",
                    licence=f"usr/share/doc/{package}/copyright: {', '.join(licences) or 'not stated'}",
                )

    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    for split in ("train", "heldout"):
        print(f"{split}: {sum(m['file'].startswith(split) for m in manifest)} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
