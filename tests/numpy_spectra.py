"""Float64 numpy restatement of the radial power spectrum used by the evaluation and the spectrum loss."""

import math

import numpy as np


def numpy_radial_spectrum(image):
    """Reference: one image [C, H, W] -> ring powers, with an explicit loop over frequencies."""
    c, h, w = image.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.zeros((h, w))
    for ch in range(c):
        plane = image[ch] - image[ch].mean()
        power += np.abs(np.fft.fft2(plane * window)) ** 2
    power /= c * (window**2).sum()
    n = min(h, w) // 2
    sums, counts = np.zeros(n - 1), np.zeros(n - 1)
    for i, fy in enumerate(np.fft.fftfreq(h)):
        for j, fx in enumerate(np.fft.fftfreq(w)):
            ring = int(math.floor(math.hypot(fy, fx) * 2 * n))
            if 1 <= ring < n:
                sums[ring - 1] += power[i, j]
                counts[ring - 1] += 1
    return sums / counts
