"""Digit domains that install offline: generators for an MNIST-M-like colour domain and synthetic font digits.

Together with ``mnist5k`` (MNIST) and ``digits`` (scikit-learn's 8x8 digits) they form a domain-adaptation
benchmark with ten shared classes (``0`` ... ``9``), built deterministically from packaged assets only:

* :func:`make_mnist_m` blends MNIST digits over patches of scikit-image's colour photos, the recipe of MNIST-M
  (the absolute difference of the patch and the digit, per channel);
* :func:`make_synth_digits` renders digits with the fonts shipped by matplotlib (DejaVu, STIX, Computer Modern)
  in random colours, sizes, positions and rotations, with blur and noise, in the spirit of SynNumbers.

References:
    Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015 (MNIST-M, SynNumbers).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["PHOTOS", "make_mnist_m", "make_synth_digits", "digit_fonts", "make_rotated_mnist", "make_colored_mnist",
           "ROTATIONS", "COLOR_ENVIRONMENTS"]

#: scikit-image's colour photos that ship inside the wheel (no download): the backgrounds of MNIST-M.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel",
          "retina")

#: matplotlib's fonts with digit glyphs of visibly different styles.
_FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
               "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf")


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    import skimage.data

    return tuple(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS)


def _rng(seed: int, tag: str) -> np.random.Generator:
    """A generator for (seed, purpose): each domain draws from its own stream."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{tag}|{seed}".encode()).digest()[:8], "little"))


def make_mnist_m(digits: np.ndarray, seed: int = 0) -> np.ndarray:
    """Blend grayscale digits over random colour photo patches: ``|patch - digit|`` per channel.

    Each digit gets a random photo, a random square crop of 32 to 160 px of it (so the background has
    texture at the digit's scale rather than one flat colour) resized to the digit's size.

    Args:
        digits: ``(N, H, W)`` uint8 grayscale digits, white on black (MNIST).
        seed: the same seed gives byte-identical images.

    Returns:
        ``(N, H, W, 3)`` uint8 colour images.

    Shape:
        ``(N, H, W)`` -> ``(N, H, W, 3)``.

    References:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015.
    """
    digits = np.asarray(digits)
    if digits.ndim != 3 or digits.dtype != np.uint8:
        raise ValueError(f"digits must be (N, H, W) uint8, got {digits.shape} {digits.dtype}")
    n, h, w = digits.shape
    photos = _photos()
    rng = _rng(seed, "mnist-m")
    which = rng.integers(0, len(photos), n)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        photo = photos[which[i]]
        side = int(rng.integers(32, min(161, *photo.shape[:2])))
        y0 = int(rng.integers(0, photo.shape[0] - side + 1))
        x0 = int(rng.integers(0, photo.shape[1] - side + 1))
        patch = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((w, h), Image.BILINEAR)
        out[i] = np.abs(np.asarray(patch, np.int16) - digits[i][..., None].astype(np.int16)).astype(np.uint8)
    return out


def digit_fonts() -> list[str]:
    """Paths of the fonts :func:`make_synth_digits` draws with (those present in this matplotlib)."""
    import matplotlib

    root = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    found = [os.path.join(root, f) for f in _FONT_FILES if os.path.isfile(os.path.join(root, f))]
    if not found:
        raise FileNotFoundError(f"no digit fonts found in {root}; reinstall matplotlib")
    return found


def make_synth_digits(per_class: int = 500, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render digits 0-9 from fonts: random font, size, colours, offset, rotation, blur and noise.

    Foreground and background colours are drawn until they differ clearly in luminance, so every digit
    stays legible; about a third of the images get a neighbouring digit cut off at each side, as in
    house-number crops.

    Args:
        per_class: images per digit.
        size: output side in pixels.
        seed: the same seed gives byte-identical images.

    Returns:
        ``(images (10 * per_class, size, size, 3) uint8, labels (10 * per_class,) int64)``, ordered by class.

    References:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015 (SynNumbers).
    """
    fonts = digit_fonts()
    rng = _rng(seed, "synth-digits")
    canvas = 2 * size
    cache: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    images = np.empty((10 * per_class, size, size, 3), np.uint8)
    labels = np.repeat(np.arange(10), per_class)

    def luminance(c: np.ndarray) -> float:
        return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])

    for i, d in enumerate(labels):
        f = int(rng.integers(len(fonts)))
        pts = int(rng.integers(int(0.55 * size), int(0.9 * size) + 1))
        font = cache.setdefault((f, pts), ImageFont.truetype(fonts[f], pts))
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        while abs(luminance(fg) - luminance(bg)) < 80:
            fg = rng.integers(0, 256, 3)
        img = Image.new("RGB", (canvas, canvas), tuple(int(v) for v in bg))
        draw = ImageDraw.Draw(img)
        cx = canvas / 2 + rng.uniform(-0.08, 0.08) * size
        cy = canvas / 2 + rng.uniform(-0.08, 0.08) * size
        draw.text((cx, cy), str(int(d)), font=font, fill=tuple(int(v) for v in fg), anchor="mm")
        if rng.random() < 0.33:  # neighbours, partly outside the crop
            gap = 0.62 * pts
            for side in (-1, 1):
                draw.text((cx + side * gap, cy), str(int(rng.integers(10))), font=font,
                          fill=tuple(int(v) for v in fg), anchor="mm")
        img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, fillcolor=tuple(int(v) for v in bg))
        lo = (canvas - size) // 2
        img = img.crop((lo, lo, lo + size, lo + size))
        blur = float(rng.uniform(0, 1.0))
        if blur > 0.3:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        a = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
        images[i] = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    return images, labels


#: RotatedMNIST's domains: degrees of rotation (Ghifary et al., ICCV 2015; DomainBed's six)
ROTATIONS = (0, 15, 30, 45, 60, 75)
#: ColoredMNIST's environments: name -> probability that the colour disagrees with the (noisy) label
COLOR_ENVIRONMENTS = {"+90%": 0.1, "+80%": 0.2, "-90%": 0.9}


def _disjoint_parts(n: int, k: int, seed: int, tag: str) -> list[np.ndarray]:
    """``k`` disjoint, sorted parts of ``range(n)`` from a seeded permutation."""
    return [np.sort(p) for p in np.array_split(_rng(seed, tag).permutation(n), k)]


def make_rotated_mnist(digits: np.ndarray, labels: np.ndarray, angles=ROTATIONS, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RotatedMNIST: the digits split into ``len(angles)`` disjoint parts, part ``k`` rotated by ``angles[k]``
    degrees (counter-clockwise, bilinear). Deterministic.

    Returns:
        ``(images (N, 28, 28) uint8, labels, domains)`` with domain names ``rot<angle>``, domain by domain.

    References:
        Ghifary, Kleijn, Zhang & Balduzzi, "Domain Generalization for Object Recognition with Multi-task
        Autoencoders", ICCV 2015; Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021.
    """
    digits = np.asarray(digits, np.uint8)
    out = np.empty_like(digits)
    doms = np.empty(len(digits), dtype=object)
    for angle, part in zip(angles, _disjoint_parts(len(digits), len(angles), seed, "rotated-mnist")):
        for i in part:
            out[i] = np.asarray(Image.fromarray(digits[i]).rotate(float(angle), resample=Image.BILINEAR))
        doms[part] = f"rot{angle}"
    order = np.concatenate(_disjoint_parts(len(digits), len(angles), seed, "rotated-mnist"))
    return out[order], np.asarray(labels)[order], doms[order]


def make_colored_mnist(digits: np.ndarray, labels: np.ndarray, environments: dict[str, float] | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ColoredMNIST (the IRM construction): the binary label is ``digit < 5``, flipped with probability 0.25; the
    colour (green for 1, red for 0) is the label flipped with the environment's probability (0.1, 0.2, 0.9: the
    colour agrees with the label 90%, 80% and 10% of the time), so colour predicts the label better than the shape
    in the first two environments and the opposite way in the third. Each environment holds a disjoint third of the
    digits. Deterministic.

    Returns:
        ``(images (N, 28, 28, 3) uint8, labels "0"/"1", domains)`` with domain names ``+90%``, ``+80%``, ``-90%``, domain
        by domain.

    References:
        Arjovsky, Bottou, Gulrajani & Lopez-Paz, "Invariant Risk Minimization", arXiv:1907.02893, 2019.
    """
    envs = dict(environments or COLOR_ENVIRONMENTS)
    digits = np.asarray(digits, np.uint8)
    y_digit = np.asarray(labels).astype(int)
    rng = _rng(seed, "colored-mnist-noise")
    y = (y_digit < 5).astype(int) ^ (rng.random(len(digits)) < 0.25)
    images = np.zeros((*digits.shape, 3), np.uint8)
    doms = np.empty(len(digits), dtype=object)
    for (name, p), part in zip(envs.items(), _disjoint_parts(len(digits), len(envs), seed, "colored-mnist")):
        colour = y[part] ^ (rng.random(len(part)) < p)
        images[part, :, :, 0] = np.where(colour[:, None, None] == 0, digits[part], 0)
        images[part, :, :, 1] = np.where(colour[:, None, None] == 1, digits[part], 0)
        doms[part] = name
    order = np.concatenate(_disjoint_parts(len(digits), len(envs), seed, "colored-mnist"))
    return images[order], y.astype(np.int64)[order], doms[order]
