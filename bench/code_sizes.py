"""Sizes of .udm codes from the bundled model: 128 x 128 central crops of the bundled sample photos, each
degraded by six seeded draws of udm_fast.degrade (seeds 1000-1005). Run: python bench/code_sizes.py"""

import torch

import udm_fast
from udm_fast.models import pretrained
from udm_fast.synthesis import degrade
from udm_fast.utils.io import load_image

torch.set_num_threads(1)
model = udm_fast.default_model()
photos = [load_image(str(p))[0] for p in pretrained.sample_paths()]
for size in ((128, 128),):
    sizes = []
    for photo in photos:
        h, w = photo.shape[-2:]
        if h < size[0] or w < size[1]:
            continue
        top, left = (h - size[0]) // 2, (w - size[1]) // 2
        x = photo[None, :, top : top + size[0], left : left + size[1]].contiguous()
        for seed in range(6):
            y, _ = degrade.degrade(x, generator=1_000 + seed)
            sizes.append(len(model.compress_degradation(y)))
    print(
        f"{size[1]}x{size[0]}: {len(sizes)} codes, bytes min {min(sizes)}, "
        f"median {sorted(sizes)[len(sizes) // 2]}, max {max(sizes)}"
    )
