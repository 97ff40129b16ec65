"""Figures of a degradation model: labelled image grids, the transfer grid (every degradation applied
to every clean photo) and e_g traversals (one code dimension moved at a time).

Grids are float tensors [1, 3, H, W] in [0, 1], ready for ``udm_fast.utils.io.save_image``.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .leakage import content_leakage_resized

GRID_GAP = 6  # pixels between cells and around the grid
LABEL_HEIGHT = 14  # the row of column labels under the first grid row
TRAVERSAL_DIMENSIONS = 4  # rows: the e_g dimensions that vary most across the codes
TRAVERSAL_OFFSETS = (-3, -2, -1, 0, 1, 2, 3)  # columns: quantisation steps added to that dimension


def center_crop(image: torch.Tensor, size: int, what: str = "the crop") -> torch.Tensor:
    """The central ``size`` x ``size`` window of the last two axes of ``image`` (a view). Raises
    ValueError naming ``what`` when the image is smaller."""
    h, w = image.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"{w}x{h} is smaller than {what} {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def to_pil(image: torch.Tensor) -> Image.Image:
    """The first image of a batch [N, 3, H, W] in [0, 1] as an 8-bit RGB PIL image."""
    pixels = (image[0].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def image_grid(
    rows: Sequence[Sequence[Optional[Image.Image]]],
    labels: Sequence[str],
    row_labels: Sequence[str] = (),
    cell_labels: Optional[Mapping[tuple, str]] = None,
) -> torch.Tensor:
    """Images laid out in cells of the largest size on white (rows[r][c] may be None: an empty cell),
    ``labels[c]`` under row 0's cells, ``row_labels[r]`` written over the top-left corner of row r's
    first cell, ``cell_labels[(r, c)]`` over the bottom-left corner of the image in cell (r, c).
    Returns [1, 3, H, W] in [0, 1]."""
    cell_labels = cell_labels or {}
    cell_h = max(im.height for row in rows for im in row if im is not None)
    cell_w = max(im.width for row in rows for im in row if im is not None)
    n_rows, n_cols = len(rows), len(rows[0])
    canvas = Image.new(
        "RGB",
        (n_cols * (cell_w + GRID_GAP) + GRID_GAP, n_rows * (cell_h + GRID_GAP) + GRID_GAP + LABEL_HEIGHT),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = GRID_GAP + r * (cell_h + GRID_GAP) + (LABEL_HEIGHT if r else 0)
        for c, im in enumerate(row):
            left = GRID_GAP + c * (cell_w + GRID_GAP)
            if im is not None:
                canvas.paste(im, (left + (cell_w - im.width) // 2, top + (cell_h - im.height) // 2))
            if r == 0:
                draw.text((left, top + cell_h + 1), labels[c], fill=(0, 0, 0))
            if im is not None and (r, c) in cell_labels:
                draw.text(
                    (left + (cell_w - im.width) // 2 + 2, top + (cell_h + im.height) // 2 - 13),
                    cell_labels[(r, c)],
                    fill=(255, 255, 0),
                    stroke_width=1,
                    stroke_fill=(0, 0, 0),
                )
            if c == 0 and r < len(row_labels):
                draw.text((left + 2, top + 1), row_labels[r], fill=(255, 255, 0), stroke_width=1, stroke_fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)[None].float() / 255.0


class TransferGrid(NamedTuple):
    image: torch.Tensor  # [1, 3, H, W] in [0, 1]
    leakage: dict  # (row, column) of a cross-content cell -> content leakage of its code's photo


def transfer_grid(
    model,
    cleans: Sequence[torch.Tensor],
    degraded: Sequence[torch.Tensor],
    codes: Sequence[tuple],
    labels: Sequence[str],
    noise: Optional[torch.Generator] = None,
    progress: Optional[Callable[[int], object]] = None,
    sources: Optional[Sequence[Optional[int]]] = None,
) -> TransferGrid:
    """The grid of ``model.synthesize(x, *code)`` for every clean image x (rows, after x itself) and
    every code (columns, under its degraded image ``degraded[k]``, labelled ``labels[k]``).

    cleans, degraded: [1, 3, H, W] in [0, 1], any sizes; codes: (e_g, e_l) of the degraded images, on
    the model's device; ``progress(1)`` is called after each transfer. ``sources[k]``: the index in
    ``cleans`` of the photo behind code k (None: unknown); each cell whose code comes from another photo
    is labelled with that photo's content leakage into the result (udm_fast/eval/leakage.py)."""
    rows = [[None] + [to_pil(y) for y in degraded]]
    leakage = {}
    for r, x in enumerate(cleans, start=1):
        row = [to_pil(x)]
        for c, (e_g, e_l) in enumerate(codes, start=1):
            x_dev = x.to(e_g.device)
            y_hat = model.synthesize(x_dev, e_g, e_l, noise=noise)
            row.append(to_pil(y_hat))
            source = None if sources is None else sources[c - 1]
            if source is not None and source != r - 1:
                source_image = cleans[source].to(e_g.device)
                leakage[(r, c)] = float(content_leakage_resized(y_hat.clamp(0, 1), x_dev, source_image))
            if progress is not None:
                progress(1)
        rows.append(row)
    cell_labels = {cell: f"leak {value:.2f}" for cell, value in leakage.items()}
    return TransferGrid(image_grid(rows, ["clean \\ degraded", *labels], cell_labels=cell_labels), leakage)


def most_varying_dimensions(e_g: torch.Tensor, count: int) -> list:
    """The ``count`` dimensions of the codes e_g [N, D] whose values vary most over N (ties: the lower index)."""
    variance = e_g.double().var(dim=0, unbiased=False)
    return sorted(range(variance.numel()), key=lambda d: (-float(variance[d]), d))[:count]


def traversal_grid(
    model,
    x: torch.Tensor,
    codes: Sequence[tuple],
    seed: int,
    dimensions: int = TRAVERSAL_DIMENSIONS,
    offsets: Sequence[int] = TRAVERSAL_OFFSETS,
) -> tuple[torch.Tensor, list]:
    """(grid, dims): the transfer to x [1, 3, H, W] of codes[0] with one e_g dimension moved by each of
    ``offsets`` quantisation steps (columns), one row per dimension of ``dims``, the ``dimensions``
    whose values vary most across ``codes`` (``most_varying_dimensions``). Every cell uses the noise
    of ``seed``, so the cells differ by the code alone."""
    dims = most_varying_dimensions(torch.cat([e_g for e_g, _ in codes]), dimensions)
    base_g, base_l = codes[0]
    rows = []
    for d in dims:
        row = []
        for offset in offsets:
            e_g = base_g.clone()
            e_g[:, d] += offset
            row.append(to_pil(model.synthesize(x, e_g, base_l, noise=torch.Generator().manual_seed(seed))))
        rows.append(row)
    labels = [f"e_g[d] {o:+d}" if o else "e_g[d] as coded" for o in offsets]
    return image_grid(rows, labels, [f"d={d}" for d in dims]), dims
