"""How a layer's output is read as a grid (export/layout.py), and that the default layer is never
a 4-d tensor that is not a grid over the image (attention's [B, heads, tokens, head_dim])."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from textcam.errors import TextcamError  # noqa: E402
from textcam.export.layout import infer_layout  # noqa: E402
from textcam.export.target_layer import choose_layer, probe  # noqa: E402


@pytest.mark.parametrize(("shape", "input_hw", "grid"), [
    ((2, 512, 7, 7), (224, 224), (7, 7)),
    ((2, 64, 7, 9), (224, 288), (7, 9)),
    ((2, 8, 1, 1), (224, 224), (1, 1)),
    ((2, 16, 29, 28), (225, 225), (29, 28)),
])
def test_image_like_grids_read_as_nchw(shape, input_hw, grid):
    layout = infer_layout(torch.zeros(shape), nn.Identity(), input_hw)
    assert (layout.kind, layout.grid, layout.channels) == ("nchw", grid, shape[1])


def test_attention_heads_are_not_a_grid_unless_said_so():
    heads = torch.zeros(2, 6, 197, 64)
    with pytest.raises(TextcamError, match=r"whose last two sizes are not a grid over a 224x224 image"):
        infer_layout(heads, nn.Identity(), (224, 224))
    assert infer_layout(heads, nn.Identity(), (224, 224), "nchw").grid == (197, 64)


class Attention(nn.Module):
    """As timm's: a qkv projection, and keys exposed as [B, heads, tokens, head_dim] through an
    Identity (k_norm)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.k_norm = nn.Identity()

    def forward(self, tokens):
        q, k, v = self.qkv(tokens).reshape(tokens.shape[0], -1, 3, 4, 4).permute(2, 0, 3, 1, 4)  # [B, 4, 16, 4]
        k = self.k_norm(k)
        attention = (q @ k.transpose(-2, -1) / 2.0).softmax(dim=-1)
        return (attention @ v).transpose(1, 2).reshape(tokens.shape[0], -1, 16)


class TinyViT(nn.Module):
    """Patch embedding, a class token, one attention block, a head on the class token: after the
    attention only that token gets a gradient, before it (through keys and values) every patch does."""

    num_prefix_tokens = 1  # as timm says it

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 8, stride=8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.norm1 = nn.LayerNorm(16)
        self.attn = Attention()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        patches = self.patch(x).flatten(2).transpose(1, 2)  # [B, 16 patches, 16]
        tokens = self.norm1(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], dim=1))
        return self.head((tokens + self.attn(tokens))[:, 0])


def test_default_layer_skips_attention_heads():
    model = TinyViT().eval()
    example = torch.randn(2, 3, 32, 32)
    _, records = probe(model, example)
    assert "attn.k_norm" in {r.name for r in records}
    assert "attn.qkv" in {r.name for r in records if r.spatial_gradient}  # tokens a default could take
    layer = choose_layer(model, records, None, (32, 32))
    assert layer.name == "norm1" and layer.layout.kind == "tokens" and layer.layout.grid == (4, 4)
