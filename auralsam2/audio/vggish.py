"""The VGGish network (torchvggish layout) and the per-channel audio encoder of AuralSAM2.

`VGGish` is the torchvggish port's layout (`features.*`, `embeddings.*`; final ReLU; no PCA), so
the widely used `vggish-10086976.pth` state dict loads unchanged into `VGGish()`. `VGGishConfig`
shrinks the widths for CPU tests and the synthetic demo while keeping the layer structure.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from auralsam2.audio.logmel import EXAMPLE_FRAMES, NUM_MEL_BINS

__all__ = ["AudioEncoder", "VGGish", "VGGishConfig"]


class VGGishConfig(BaseModel):
    """Widths of the VGGish network; the default is the standard (AudioSet) VGGish."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/nan: a typo, never a setting

    conv_widths: tuple[int, int, int, int] = Field(
        (64, 128, 256, 512),
        description="output channels of the 4 conv stages (stage 3 and 4 have two convs each)",
    )
    fc_width: int = Field(4096, description="width of the two hidden fully connected layers")
    embedding_dim: int = Field(128, description="embedding size per audio channel (final FC, ReLU)")

    @classmethod
    def tiny(cls, embedding_dim: int = 16) -> VGGishConfig:
        """Same layer structure, a few thousand times fewer parameters: for CPU tests and the demo."""
        return cls(conv_widths=(4, 8, 16, 16), fc_width=32, embedding_dim=embedding_dim)


class VGGish(nn.Module):
    """VGGish (torchvggish layout): `(B, 1, 96, 64)` log-mel -> `(B, embedding_dim)` (>= 0).

    Keys `features.{0,3,6,8,11,13}.*` (3x3 convs) and `embeddings.{0,2,4}.*` (FC layers) match
    `vggish-10086976.pth`. The conv map `(B, C, 6, 4)` is flattened in `(6, 4, C)` order before
    the FC layers, as the TensorFlow-converted weights require.
    """

    def __init__(self, config: VGGishConfig | None = None) -> None:
        super().__init__()
        self.config = config or VGGishConfig()
        c1, c2, c3, c4 = self.config.conv_widths
        layers: list[nn.Module] = []
        in_ch = 1
        for stage in ([c1], [c2], [c3, c3], [c4, c4]):
            for out_ch in stage:
                layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        fc = self.config.fc_width
        self.embeddings = nn.Sequential(
            nn.Linear(c4 * 6 * 4, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, self.config.embedding_dim),
            nn.ReLU(inplace=True),
        )

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, EXAMPLE_FRAMES, NUM_MEL_BINS):
            raise ValueError(f"VGGish expects (B, 1, 96, 64) log-mel examples, got {tuple(x.shape)}")
        x = self.features(x)  # (B, C, 6, 4)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (B, 6*4*C) in (6, 4, C) order
        return self.embeddings(x)


class AudioEncoder(nn.Module):
    """Runs one shared VGGish on each audio channel and concatenates: `(N, Ch, 96, 64) -> (N, Ch*E)`.

    The released model runs VGGish separately on the left and right channel and concatenates
    `[left, right]` (256 for stereo); batching the channels gives the same values. `trainable`
    False freezes VGGish (the released default, `train_vggish: false`); the paper and this
    project train it by default.
    """

    def __init__(self, vggish: VGGish | None = None, channels: int = 2, trainable: bool = True) -> None:
        super().__init__()
        self.vggish = vggish if vggish is not None else VGGish()
        self.channels = channels
        self.trainable = trainable
        self.vggish.requires_grad_(trainable)

    @property
    def output_dim(self) -> int:
        """Size of the per-frame audio embedding: channels x VGGish embedding size."""
        return self.channels * self.vggish.embedding_dim

    def forward(self, examples: Tensor) -> Tensor:
        if examples.ndim != 4 or examples.shape[1] != self.channels:
            raise ValueError(
                f"AudioEncoder expects (N, {self.channels}, 96, 64) examples, got {tuple(examples.shape)}"
            )
        n = examples.shape[0]
        emb = self.vggish(examples.reshape(n * self.channels, 1, *examples.shape[2:]))
        return emb.reshape(n, self.channels * emb.shape[-1])
