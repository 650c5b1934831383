"""Color transfer in CIE Lab (Reinhard et al. 2001), as the paper applies to every variation.

Diffusion variations often drift in color; matching the per-channel mean and standard
deviation of the source in Lab keeps the student's input distribution close to the
teacher's. The sRGB <-> Lab conversion (D65 white) is written out here in numpy so that
no image library's rounding or gamut handling is involved.
"""

from __future__ import annotations

import numpy as np

# sRGB (linear) -> XYZ, D65, IEC 61966-2-1
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(axis=1)  # XYZ of RGB (1, 1, 1): the D65 reference white
_EPSILON = (6.0 / 29.0) ** 3
_KAPPA = (29.0 / 6.0) ** 2 / 3.0


def _as_unit_float(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float64) / 255.0
    return rgb.astype(np.float64)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8 0..255 or float 0..1, shape ``(..., 3)``) -> Lab float64 (L in 0..100)."""
    rgb = _as_unit_float(rgb)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), xyz * _KAPPA + 4.0 / 29.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab -> sRGB float64 in 0..1 (out-of-gamut colors are clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 6.0 / 29.0, f**3, (f - 4.0 / 29.0) / _KAPPA) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    rgb = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1.0 / 2.4) - 0.055)
    return np.clip(rgb, 0.0, 1.0)


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel Lab mean and standard deviation of an RGB image ``(H, W, 3)``."""
    lab = rgb_to_lab(rgb).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def match_lab_stats(target: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Give RGB ``target`` the Lab ``mean``/``std``; returns uint8 pixels.

    A flat target channel (std 0) is only shifted, not scaled.
    """
    target_lab = rgb_to_lab(target)
    flat = target_lab.reshape(-1, 3)
    mean_t, std_t = flat.mean(axis=0), flat.std(axis=0)
    scale = np.where(std_t > 1e-6, std / np.maximum(std_t, 1e-6), 1.0)
    moved = (target_lab - mean_t) * scale + mean
    return np.round(lab_to_rgb(moved) * 255.0).astype(np.uint8)


def transfer_color(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Give ``target`` the per-channel Lab mean and std of ``source``.

    Both are RGB arrays ``(H, W, 3)`` (sizes may differ); returns ``target``'s new
    pixels as uint8.
    """
    return match_lab_stats(target, *lab_stats(source))
