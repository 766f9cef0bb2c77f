"""Small shared test fixtures."""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, size=8, dim=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * size * size, dim)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))

    def dfanet_sites(self):
        return [self.conv]
