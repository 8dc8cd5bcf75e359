"""Parts of the demo cross-encoder: transformer stacks and the two kinds of unimodal towers' building blocks."""

from __future__ import annotations

from torch import Tensor, nn

from distill.teachers.shapes_config import ShapesCrossEncoderConfig


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


class StudentTowers(nn.Module):
    """The shapes student preset's towers with token outputs (``towers="student"``).

    ``image(pixels) -> ([B, width] pooled, [B, C_s, h, w] stage-``fusion_stage`` map)``: timm ``resnet10t``
    with ``image_channels``, average-pooled as the student's ``TimmImageTower`` is. ``text(ids, mask) ->
    [B, L, width]``: a BERT built like the student's ``TransformersTextTower`` (no pooler; CLS at position 0).
    """

    def __init__(self, config: ShapesCrossEncoderConfig) -> None:
        super().__init__()
        import timm
        from transformers import BertConfig, BertModel

        self.image = timm.create_model("resnet10t", pretrained=False, num_classes=0,
                                       channels=list(config.image_channels))
        bert = BertConfig(vocab_size=config.vocab_size, hidden_size=config.width,
                          num_hidden_layers=config.text_layers, num_attention_heads=config.heads,
                          intermediate_size=config.text_intermediate, max_position_embeddings=64,
                          hidden_dropout_prob=config.text_dropout, attention_probs_dropout_prob=config.text_dropout)
        self.text = BertModel(bert, add_pooling_layer=False)
        self.fusion_stage = config.fusion_stage

    def encode_image(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        net = self.image
        x = net.maxpool(net.act1(net.bn1(net.conv1(pixel_values))))
        stage_map = x
        for index, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), start=1):
            x = layer(x)
            if index == self.fusion_stage:
                stage_map = x
        return net.forward_head(x), stage_map

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
