"""Real-size SAM2 configs with random weights (slow: run by `make test-all`)."""

from __future__ import annotations

import pytest
import torch

from auralsam2.backbone import (
    SAM2_CONFIGS,
    build_sam2_model,
    compact_bytes_per_frame,
    compact_layout,
    encode_frames,
    encode_frames_compact,
    expand_compact,
    is_frozen,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "config, layout, compact_bytes",
    [
        # Hiera-B+ stages 112/224 ch < 256: levels 0, 1 as trunk outputs; level 2 has the top-down term.
        ("sam2.1_hiera_b+", [("trunk", 112), ("trunk", 224), ("fpn", 256)], (112 * 256**2 + 224 * 128**2 + 256 * 64**2) * 2),
        # Hiera-L stage 2 has 288 ch > 256: the FPN output is the narrower exact form there.
        ("sam2_hiera_l", [("trunk", 144), ("fpn", 256), ("fpn", 256)], (144 * 256**2 + 256 * 128**2 + 256 * 64**2) * 2),
    ],
)
def test_real_size_pyramid_and_compact_form_at_1024(config, layout, compact_bytes):
    torch.manual_seed(0)
    model = build_sam2_model(config)
    assert model.image_size == 1024 and model.hidden_dim == 256 and is_frozen(model)
    assert [(lv.form, lv.channels) for lv in compact_layout(model)] == layout
    assert [lv.stride for lv in compact_layout(model)] == [4, 8, 16]
    assert compact_bytes_per_frame(model) == compact_bytes
    naive = 256 * (256**2 + 128**2 + 64**2) * 2
    assert naive == 44_040_192  # 42 MiB per frame, three fp16 levels

    images = torch.randn(1, 3, 1024, 1024)
    pyramid = encode_frames(model, images)
    assert [tuple(x.shape) for x in pyramid] == [(1, 256, 256, 256), (1, 256, 128, 128), (1, 256, 64, 64)]
    compact = encode_frames_compact(model, images, dtype=torch.float32)
    assert [tuple(x.shape) for x in compact.levels] == [
        (1, ch, 1024 // s, 1024 // s) for (_, ch), s in zip(layout, (4, 8, 16), strict=True)
    ]
    assert compact.nbytes == 2 * compact_bytes  # fp32 storage here
    for a, b in zip(pyramid, expand_compact(model, compact), strict=True):
        assert (a - b).abs().max().item() == 0.0


def test_every_package_config_builds_frozen():
    for name in SAM2_CONFIGS:
        model = build_sam2_model(name)
        assert is_frozen(model) and model.image_size == 1024, name
        del model
