"""Mappers from a CLIP embedding to `prefix_length` vectors in the language model's embedding space."""
import torch
from torch import nn


class MLPMapper(nn.Module):
    """ClipCap's MLP: Linear -> Tanh -> Linear, reshaped into the prefix."""

    def __init__(self, clip_dim, lm_dim, prefix_length, hidden_dim=None):
        super().__init__()
        self.prefix_length, self.lm_dim = prefix_length, lm_dim
        hidden_dim = hidden_dim or lm_dim * prefix_length // 2
        self.net = nn.Sequential(
            nn.Linear(clip_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, lm_dim * prefix_length)
        )

    def forward(self, clip_embeddings):
        return self.net(clip_embeddings).view(-1, self.prefix_length, self.lm_dim)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the embedding becomes `clip_length` tokens, learned constants are
    appended, and the constants' outputs after a transformer encoder are the prefix."""

    def __init__(self, clip_dim, lm_dim, prefix_length, clip_length=10, num_layers=8, num_heads=8):
        super().__init__()
        self.clip_length, self.lm_dim = clip_length, lm_dim
        self.project = nn.Linear(clip_dim, clip_length * lm_dim)
        self.constants = nn.Parameter(torch.randn(prefix_length, lm_dim))
        layer = nn.TransformerEncoderLayer(
            lm_dim, num_heads, dim_feedforward=2 * lm_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, clip_embeddings):
        tokens = self.project(clip_embeddings).view(-1, self.clip_length, self.lm_dim)
        constants = self.constants.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.encoder(torch.cat([tokens, constants], dim=1))[:, self.clip_length:]


def build_mapper(kind, clip_dim, lm_dim, prefix_length, hidden_dim=None, clip_length=10, num_layers=8,
                 num_heads=8):
    if kind == "mlp":
        return MLPMapper(clip_dim, lm_dim, prefix_length, hidden_dim)
    if kind == "transformer":
        return TransformerMapper(clip_dim, lm_dim, prefix_length, clip_length, num_layers, num_heads)
    raise ValueError(f"unknown mapper '{kind}': choose 'mlp' or 'transformer'")
