"""A small ALBEF-style cross-encoder: unimodal towers (ITC) + a fusion transformer (ITM).

Image patches and caption tokens are read together by the fusion transformer (one stream,
ViLT-like); its image-text matching (ITM) logit is the teacher's score. The unimodal towers
give contrastive (ITC) embeddings, used to pick the candidates the fusion head re-ranks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.io import atomic_write_json, load_weights, read_json, save_weights
from distill.inputs import Inputs
from distill.teachers.base import Teacher

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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


SCORE_MODES = ("itm", "itm+itc")


def transformer_encoder(width: int, heads: int, layers: int, mlp_ratio: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width, heads, width * mlp_ratio, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class ConvPatchEmbedding(nn.Module):
    """Convolutional stem: ``[B, 3, H, W] -> [B, (H/p)*(W/p), width]`` patch tokens, p in {8, 16}."""

    def __init__(self, width: int, patch_size: int = 16) -> None:
        super().__init__()
        if patch_size not in (8, 16):
            raise ValueError(f"patch_size must be 8 or 16, got {patch_size}")
        layers: list[nn.Module] = [
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
        ]
        if patch_size == 16:
            layers += [nn.Conv2d(64, 96, 3, stride=2, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(layers[-2].out_channels, width, 2, stride=2))
        self.stem = nn.Sequential(*layers)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.stem(pixel_values).flatten(2).transpose(1, 2)


class ShapesCrossEncoder(Teacher):
    """ALBEF-style image-text cross-encoder.

    ``score(a, b)`` scores each aligned pair with the fusion transformer: the ITM logit
    (``score_mode="itm"``) or the ITM logit plus the ITC logit ``logit_scale * cos(e_a, e_b)``
    (``"itm+itc"``, default; BLIP ranks retrieval candidates by this sum). ``embed_a`` /
    ``embed_b`` are the L2-normalised ITC embeddings. ``weights`` names a folder written by :meth:`save_pretrained`
    (``config.json`` + ``model.safetensors``); its config overrides the architecture arguments.
    """

    has_embeddings = True

    def __init__(
        self,
        vocab_size: int = 64,
        max_length: int = 32,
        image_size: int = 64,
        patch_size: int = 16,
        width: int = 128,
        heads: int = 4,
        image_layers: int = 3,
        text_layers: int = 2,
        fusion_layers: int = 2,
        embed_dim: int = 128,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        score_mode: str = "itm+itc",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        config = ShapesCrossEncoderConfig(
            vocab_size, max_length, image_size, patch_size, width, heads, image_layers, text_layers,
            fusion_layers, embed_dim, mlp_ratio, dropout, score_mode,
        )
        if weights is not None:
            config = self._read_config(weights)
        if config.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {config.score_mode!r}")
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} must be a multiple of patch_size {config.patch_size}")
        self.config = config
        w = config.width
        num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = ConvPatchEmbedding(w, config.patch_size)
        self.image_cls = nn.Parameter(torch.zeros(1, 1, w))
        self.image_pos = nn.Parameter(torch.randn(1, 1 + num_patches, w) * 0.02)
        self.image_encoder = transformer_encoder(w, config.heads, config.image_layers, config.mlp_ratio, config.dropout)
        self.image_norm = nn.LayerNorm(w)
        self.token_embed = nn.Embedding(config.vocab_size, w)
        self.text_pos = nn.Parameter(torch.randn(1, config.max_length, w) * 0.02)
        self.text_encoder = transformer_encoder(w, config.heads, config.text_layers, config.mlp_ratio, config.dropout)
        self.text_norm = nn.LayerNorm(w)
        self.image_proj = nn.Linear(w, config.embed_dim)
        self.text_proj = nn.Linear(w, config.embed_dim)
        self.log_inv_temperature = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        self.type_embed = nn.Parameter(torch.randn(2, w) * 0.02)
        self.fusion = transformer_encoder(w, config.heads, config.fusion_layers, config.mlp_ratio, config.dropout)
        self.fusion_norm = nn.LayerNorm(w)
        self.itm_head = nn.Linear(w, 1)
        if weights is not None:
            self._load_weights(weights)

    # ------------------------------------------------------------------ unimodal towers
    def encode_image_tokens(self, pixel_values: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, 1 + P, width]`` (position 0 is the image CLS token)."""
        if pixel_values.shape[-1] != self.config.image_size or pixel_values.shape[-2] != self.config.image_size:
            raise ValueError(
                f"teacher expects {self.config.image_size}x{self.config.image_size} images, got "
                f"{tuple(pixel_values.shape[-2:])}: set the data module's image_size to match"
            )
        patches = self.patch_embed(pixel_values)
        tokens = torch.cat([self.image_cls.expand(patches.shape[0], -1, -1), patches], dim=1) + self.image_pos
        return self.image_norm(self.image_encoder(tokens))

    def encode_text_tokens(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, L] -> [B, L, width]`` (position 0 is the [CLS] token)."""
        length = input_ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"caption of {length} tokens exceeds the teacher's max_length {self.config.max_length}")
        if int(input_ids.max()) >= self.config.vocab_size:
            raise ValueError(
                f"token id {int(input_ids.max())} is outside the teacher's vocabulary of {self.config.vocab_size}: "
                "the tokenizer does not match this teacher"
            )
        tokens = self.token_embed(input_ids) + self.text_pos[:, :length]
        hidden = self.text_encoder(tokens, src_key_padding_mask=attention_mask == 0)
        return self.text_norm(hidden)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_inv_temperature.clamp(max=4.6052).exp()

    def embed_image_tokens(self, image_tokens: Tensor) -> Tensor:
        return F.normalize(self.image_proj(image_tokens[:, 0]), dim=-1)

    def embed_text_tokens(self, text_tokens: Tensor) -> Tensor:
        return F.normalize(self.text_proj(text_tokens[:, 0]), dim=-1)

    def embed_a(self, a: Inputs) -> Tensor:
        return self.embed_image_tokens(self.encode_image_tokens(a["pixel_values"]))

    def embed_b(self, b: Inputs) -> Tensor:
        return self.embed_text_tokens(self.encode_text_tokens(b["input_ids"], b["attention_mask"]))

    # ------------------------------------------------------------------ fusion (ITM)
    def fuse(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """Pair scores of aligned token sequences: ``[N, 1+P, w], [N, L, w], [N, L] -> [N]``.

        The fusion transformer reads the caption tokens and image patches as one sequence; its
        ITM head reads the caption's [CLS] position. With ``score_mode="itm+itc"`` the ITC logit of
        the same pair is added.
        """
        itm = self.itm_logit(image_tokens, text_tokens, attention_mask)
        if self.config.score_mode == "itm":
            return itm
        itc = (self.embed_image_tokens(image_tokens) * self.embed_text_tokens(text_tokens)).sum(-1)
        return itm + self.logit_scale * itc

    def itm_logit(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """The fusion head alone: ``[N, 1+P, w], [N, L, w], [N, L] -> [N]``."""
        sequence = torch.cat([text_tokens + self.type_embed[0], image_tokens + self.type_embed[1]], dim=1)
        padding = torch.cat(
            [attention_mask == 0, attention_mask.new_zeros(image_tokens.shape[:2], dtype=torch.bool)], dim=1
        )
        fused = self.fusion_norm(self.fusion(sequence, src_key_padding_mask=padding))
        return self.itm_head(fused[:, 0]).squeeze(-1)

    def score(self, a: Inputs, b: Inputs) -> Tensor:
        image_tokens = self.encode_image_tokens(a["pixel_values"])
        text_tokens = self.encode_text_tokens(b["input_ids"], b["attention_mask"])
        return self.fuse(image_tokens, text_tokens, b["attention_mask"])

    def score_pairs(self, a: Inputs, b: Inputs, a_index: Tensor, b_index: Tensor) -> Tensor:
        """Encode each distinct a and b item once, then fuse the N requested pairs."""
        a_unique, a_inverse = a_index.unique(return_inverse=True)
        b_unique, b_inverse = b_index.unique(return_inverse=True)
        image_tokens = self.encode_image_tokens(a["pixel_values"][a_unique])
        input_ids, attention_mask = b["input_ids"][b_unique], b["attention_mask"][b_unique]
        length = int(attention_mask.sum(1).max())
        text_tokens = self.encode_text_tokens(input_ids[:, :length], attention_mask[:, :length])
        return self.fuse(image_tokens[a_inverse], text_tokens[b_inverse], attention_mask[b_inverse, :length])

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (each atomically)."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        save_weights(target / WEIGHTS_NAME, self.state_dict())
        atomic_write_json(target / CONFIG_NAME, {"class": "ShapesCrossEncoder", **asdict(self.config)})
        return target

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ShapesCrossEncoder":
        return cls(weights=str(folder))

    @staticmethod
    def _read_config(folder: str) -> ShapesCrossEncoderConfig:
        path = Path(folder)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"teacher weights folder '{path}' has no {CONFIG_NAME} + {WEIGHTS_NAME}: train the teacher "
                "with `python -m distill fit --config configs/demo/shapes-teacher.yaml` or point "
                "`weights` at a folder written by ShapesCrossEncoder.save_pretrained"
            )
        raw = read_json(path / CONFIG_NAME)
        raw.pop("class", None)
        known = set(ShapesCrossEncoderConfig.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"'{path / CONFIG_NAME}' has unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return ShapesCrossEncoderConfig(**raw)

    def _load_weights(self, folder: str) -> None:
        state = load_weights(Path(folder) / WEIGHTS_NAME, "teacher weights")
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"'{Path(folder) / WEIGHTS_NAME}' does not match ShapesCrossEncoder: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **asdict(self.config)}
