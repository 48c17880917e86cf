"""The AVSBench-semantic (AVSS) class palette and class list.

Class j's colour spreads the bits of j over R, G, B from the most significant bit down: bit 3m of
j goes to bit 7-m of R, bit 3m+1 to G, bit 3m+2 to B (the Pascal-VOC style palette the official
`get_v2_pallete` builds). So 0 -> (0,0,0), 1 -> (128,0,0), 2 -> (0,128,0), 8 -> (64,0,0). No
channel reaches 255. Training and evaluation use the 0-based palette position (background = 0,
"woman" = 70), which is the `label2idx.json` value minus one.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 71

AVSS_CLASSES: tuple[str, ...] = (
    "background", "accordion", "airplane", "axe", "baby", "bassoon", "bell", "bird", "boat", "boy",
    "bus", "car", "cat", "cello", "clarinet", "clipper", "clock", "dog", "donkey", "drum", "duck",
    "elephant", "emergency-car", "erhu", "flute", "frying-food", "girl", "goose", "guitar", "gun",
    "guzheng", "hair-dryer", "handpan", "harmonica", "harp", "helicopter", "hen", "horse", "keyboard",
    "leopard", "lion", "man", "marimba", "missile-rocket", "motorcycle", "mower", "parrot", "piano",
    "pig", "pipa", "saw", "saxophone", "sheep", "sitar", "sorna", "squirrel", "tabla", "tank", "tiger",
    "tractor", "train", "trombone", "truck", "trumpet", "tuba", "ukulele", "utv", "vacuum-cleaner",
    "violin", "wolf", "woman",
)
assert len(AVSS_CLASSES) == NUM_CLASSES


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of 0-based class `index` in the AVSS palette."""
    r = g = b = 0
    c, m = index, 0
    while c:
        r |= ((c >> 0) & 1) << (7 - m)
        g |= ((c >> 1) & 1) << (7 - m)
        b |= ((c >> 2) & 1) << (7 - m)
        c >>= 3
        m += 1
    return r, g, b


PALETTE = np.array([class_colour(i) for i in range(NUM_CLASSES)], dtype=np.uint8)  # (71, 3)


def label2idx() -> dict[str, int]:
    """The `label2idx.json` mapping as shipped with the dataset (1-based, alphabetical after background)."""
    return {name: i + 1 for i, name in enumerate(AVSS_CLASSES)}


def colours_to_labels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode an (H, W, 3) uint8 palette mask into (H, W) class ids.

    Returns (labels, unmatched) where `unmatched` is a boolean map of pixels whose colour is not in
    the palette. The official loader silently turns those into background; callers here report them.
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_code = (PALETTE[:, 0].astype(np.int32) << 16) | (PALETTE[:, 1].astype(np.int32) << 8) | PALETTE[:, 2]
    lut = {int(c): i for i, c in enumerate(palette_code)}
    uniq, inverse = np.unique(code, return_inverse=True)
    ids = np.array([lut.get(int(u), -1) for u in uniq], dtype=np.int32)[inverse].reshape(code.shape)
    unmatched = ids < 0
    return np.where(unmatched, 0, ids).astype(np.uint8), unmatched


def labels_to_colours(labels: np.ndarray) -> np.ndarray:
    """Encode (H, W) class ids into an (H, W, 3) uint8 palette image."""
    return PALETTE[np.asarray(labels, dtype=np.int64)]
