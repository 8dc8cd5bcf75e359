"""Settings of the demo cross-encoder (:class:`~distill.teachers.shapes.ShapesCrossEncoder`), the same record its
towers (:mod:`distill.teachers.shapes_towers`) are built from and ``config.json`` holds."""

from __future__ import annotations

from dataclasses import dataclass

SCORE_MODES = ("itm", "itm+itc")
TOWER_KINDS = ("transformer", "student")


@dataclass(frozen=True)
class ShapesCrossEncoderConfig:
    vocab_size: int = 64
    max_length: int = 32
    image_size: int = 64
    patch_size: int = 16
    width: int = 128
    heads: int = 4
    image_layers: int = 3
    text_layers: int = 2
    fusion_layers: int = 2
    embed_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0
    score_mode: str = "itm+itc"
    towers: str = "transformer"
    image_channels: tuple[int, ...] = (16, 32, 64, 128)
    text_intermediate: int = 256
    text_dropout: float = 0.1
    fusion_stage: int = 2
    fusion_raw: bool = False
    fusion_positions: bool = False

    def check(self) -> None:
        """Raise ``ValueError`` on settings that cannot build a model."""
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        if self.towers not in TOWER_KINDS:
            raise ValueError(f"towers must be one of {TOWER_KINDS}, got {self.towers!r}")
        if self.towers == "transformer" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.towers == "student":
            if len(self.image_channels) != 4 or self.image_channels[-1] != self.width:
                raise ValueError(f"towers='student' needs 4 image_channels ending in width={self.width}, "
                                 f"got {list(self.image_channels)}")
            if not 1 <= self.fusion_stage <= 4 or self.image_size % 2 ** (self.fusion_stage + 1):
                raise ValueError(f"fusion_stage must be in [1, 4] and divide image_size {self.image_size} "
                                 f"by 2^(stage+1), got {self.fusion_stage}")
        elif self.fusion_raw:
            raise ValueError("fusion_raw needs towers='student'")
        if self.fusion_positions and not (self.towers == "student" and self.fusion_raw):
            raise ValueError("fusion_positions needs towers='student' and fusion_raw=true")
