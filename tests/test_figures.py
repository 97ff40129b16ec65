"""udm_fast.eval.figures: the central crop, the grid layout and the transfer grid's cells."""

import pytest
import torch

from udm_fast.eval import figures


def test_center_crop_takes_the_central_window_of_the_last_two_axes():
    image = torch.arange(2 * 3 * 7 * 10).reshape(2, 3, 7, 10)
    crop = figures.center_crop(image, 4)
    assert torch.equal(crop, image[:, :, 1:5, 3:7])  # (7 - 4) // 2 = 1 rows and (10 - 4) // 2 = 3 columns off
    assert torch.equal(figures.center_crop(image, 7), image[:, :, :, 1:8])
    with pytest.raises(ValueError, match="10x7 is smaller than --crop 8"):
        figures.center_crop(image, 8, what="--crop")


def test_most_varying_dimensions_orders_by_variance_then_index():
    e_g = torch.tensor([[0.0, 1.0, 5.0, 1.0], [0.0, -1.0, -5.0, -1.0]])
    assert figures.most_varying_dimensions(e_g, 3) == [2, 1, 3]


class _ConstantModel:
    """synthesize(x, e_g, e_l) = an image of x's size filled with e_g[0, 0]; records the noise it got."""

    def __init__(self):
        self.noises = []

    def synthesize(self, x, e_g, e_l, noise=None):
        self.noises.append(noise)
        return torch.full_like(x, float(e_g[0, 0]))


def test_transfer_grid_places_each_code_in_its_column_and_each_photo_in_its_row():
    gap, label = figures.GRID_GAP, figures.LABEL_HEIGHT
    cleans = [torch.full((1, 3, 8, 10), 0.2), torch.full((1, 3, 6, 10), 0.4)]  # the second is centred in its cell
    degraded = [torch.full((1, 3, 8, 10), 0.6), torch.full((1, 3, 8, 10), 0.8)]
    codes = [(torch.tensor([[0.0]]), None), (torch.tensor([[1.0]]), None)]
    model, updates, noise = _ConstantModel(), [], torch.Generator()
    grid = figures.transfer_grid(model, cleans, degraded, codes, ["a", "b"], noise=noise, progress=updates.append).image
    assert updates == [1] * 4 and model.noises == [noise] * 4
    cell_h, cell_w = 8, 10
    assert grid.shape == (1, 3, 3 * (cell_h + gap) + gap + label, 3 * (cell_w + gap) + gap)

    def cell(r, c, h=cell_h):
        top = gap + r * (cell_h + gap) + (label if r else 0) + (cell_h - h) // 2
        left = gap + c * (cell_w + gap)
        return grid[0, :, top : top + h, left : left + cell_w]

    assert bool((cell(0, 0) == 1).all())  # the corner is empty
    for c, y in enumerate(degraded, start=1):
        torch.testing.assert_close(cell(0, c), y[0], rtol=0, atol=0.5 / 255)
    for r, x in enumerate(cleans, start=1):
        h = x.shape[-2]
        torch.testing.assert_close(cell(r, 0, h), x[0], rtol=0, atol=0.5 / 255)
        for c, (e_g, _) in enumerate(codes, start=1):
            assert bool((cell(r, c, h) == float(e_g)).all()), (r, c)


class _PastingModel:
    """Pastes the code's photo (carried as e_l) into the result: the worst leakage there is."""

    def synthesize(self, x, e_g, e_l, noise=None):
        return 0.5 * x + 0.5 * torch.nn.functional.interpolate(e_l, size=x.shape[-2:], mode="bilinear")


def _photo(seed: int, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)


def test_transfer_grid_labels_cross_content_cells_with_their_leakage():
    cleans = [_photo(0), _photo(1)]
    codes = [(torch.zeros(1, 1), x) for x in cleans]
    grid = figures.transfer_grid(_PastingModel(), cleans, cleans, codes, ["a", "b"], sources=[0, 1])
    assert sorted(grid.leakage) == [(1, 2), (2, 1)]  # only cells whose code comes from the other photo
    assert all(value > 0.5 for value in grid.leakage.values()), grid.leakage
    unlabelled = figures.transfer_grid(_PastingModel(), cleans, cleans, codes, ["a", "b"])
    assert unlabelled.leakage == {}
    assert not torch.equal(grid.image, unlabelled.image)  # the labels are drawn
