r"""Stain in optical-density / HED space: colour deconvolution, HED jitter for training, site stains.

H&E colour is the Beer-Lambert mix of three stains (haematoxylin, eosin, DAB/residual).  With the
optical density of a pixel :math:`\mathrm{OD} = -\ln\big((I + 1) / 256\big)` per RGB channel
(:math:`I` in 0-255; white is 0), the stain concentrations are :math:`c = \mathrm{OD}\,M^{-1}` with
:math:`M` the Ruifrok & Johnston (2001) stain matrix (rows: the OD vectors of H, E and D, the matrix
scikit-image uses).  The transform is exactly invertible: :func:`hed_to_rgb` of :func:`rgb_to_hed`
returns the input up to float rounding.

Stain augmentation (Tellez et al. 2019, "Quantifying the effects of data augmentation and stain colour
normalization in convolutional neural networks for computational pathology", Med Image Anal 58:101544):
per tile and stain channel a random scale :math:`\alpha \sim U(1-\sigma, 1+\sigma)` and shift
:math:`\beta \sim U(-b, b)`,

.. math::

    c' = \alpha\, c + \beta,

then back to RGB (clipped to 0-255).  Their "HED-light" uses :math:`\sigma = b = 0.05`, "HED-strong"
0.2.  :func:`hed_jitter` is the NumPy form (tests, the demo generator's site stains);
:func:`tf_augment` is the ``tf.data`` map that training applies (``training.augment``), with the
paper's random flips after it.  Training only: scoring and validation see tiles as stored.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston's stain OD vectors (rows H, E, D), normalised as scikit-image's ``rgb_from_hed``
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

STAINS = ("none", "hed")


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Stain concentrations (H, E, D; float64, same shape) of RGB values in 0-255.

    Examples
    --------
    >>> hed = rgb_to_hed(np.array([[255, 255, 255], [120, 60, 160]], np.uint8))
    >>> bool(np.allclose(hed[0], 0)), bool(hed[1, 0] > hed[1, 1] > 0)  # white has no stain; a purple pixel is H-rich
    (True, True)
    """
    od = -np.log((np.asarray(rgb, np.float64) + 1.0) / 256.0)
    return od @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """RGB values (float64, 0-255, clipped) of stain concentrations; the inverse of :func:`rgb_to_hed`."""
    od = np.asarray(hed, np.float64) @ RGB_FROM_HED
    return np.clip(256.0 * np.exp(-od) - 1.0, 0.0, 255.0)


def restain(rgb: np.ndarray, scale, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``rgb`` (uint8) with each stain's concentration scaled and shifted (three values each), as uint8.

    Examples
    --------
    >>> tile = np.array([[[200, 120, 180]]], np.uint8)
    >>> bool((restain(tile, (1, 1, 1)) == tile).all())
    True
    >>> bool(restain(tile, (1.3, 1, 1))[..., 0] < 200)  # more haematoxylin absorbs more red
    True
    """
    hed = rgb_to_hed(rgb) * np.asarray(scale, np.float64) + np.asarray(shift, np.float64)
    return np.round(hed_to_rgb(hed)).astype(np.uint8)


def _check(sigma: float, bias: float) -> None:
    if not (0 <= sigma < 1) or not (0 <= bias <= 1):
        raise ValueError(f"HED jitter needs 0 <= sigma < 1 and 0 <= bias <= 1, got sigma {sigma!r}, bias {bias!r}")


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.05) -> np.ndarray:
    """One HED jitter of a uint8 RGB tile (Tellez et al. 2019): per stain :math:`\\alpha \\sim U(1-\\sigma, 1+\\sigma)`,
    :math:`\\beta \\sim U(-b, b)`; uint8 out.  ``sigma = bias = 0`` returns the tile."""
    _check(sigma, bias)
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3)
    beta = rng.uniform(-bias, bias, 3)
    return restain(rgb, alpha, beta)


def tf_augment(stain: str = "none", sigma: float = 0.05, bias: float = 0.05, seed: int = 0):
    """The training augmentation as a ``tf.data`` map over ``(index, (tile, label))``: HED jitter (``stain='hed'``)
    then random horizontal and vertical flips, all stateless random ops keyed by ``(seed, index)``, so a
    pipeline with the same seed and element order gives the same tiles.  Tiles are float32 0-255.

    ``stain='none'`` is not handled here: training keeps its flips-only map (:func:`training._augment`),
    so the paper's setting trains exactly as before.
    """
    import tensorflow as tf

    if stain not in STAINS or stain == "none":
        raise ValueError(f"tf_augment is for a stain augmentation ('hed'), got {stain!r}; expected one of {STAINS}")
    _check(sigma, bias)
    to_hed = tf.constant(HED_FROM_RGB, tf.float32)
    to_rgb = tf.constant(RGB_FROM_HED, tf.float32)

    def fn(index, item):
        img, label = item
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
        keys = tf.random.experimental.stateless_split(key, 4)
        alpha = tf.random.stateless_uniform([3], keys[0], 1 - sigma, 1 + sigma)
        beta = tf.random.stateless_uniform([3], keys[1], -bias, bias)
        od = -tf.math.log((img + 1.0) / 256.0)
        hed = tf.tensordot(od, to_hed, 1) * alpha + beta
        img = tf.clip_by_value(256.0 * tf.exp(-tf.tensordot(hed, to_rgb, 1)) - 1.0, 0.0, 255.0)
        img = tf.image.stateless_random_flip_left_right(img, keys[2])
        img = tf.image.stateless_random_flip_up_down(img, keys[3])
        return img, label

    return fn
