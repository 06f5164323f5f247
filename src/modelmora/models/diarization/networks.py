"""The two networks of the default diarizer, defined here so their weights load without extra code.

- :class:`CamPlusPlus`: the CAM++ speaker-embedding network (3D-Speaker; Wang et al., "CAM++: A
  Fast and Efficient Network for Speaker Verification Using Context-Aware Masking", 2023):
  a 2-D convolutional front end over 80 log-mel bands, a densely connected TDNN trunk whose
  layers are gated by context-aware masks (the mask of each layer comes from the utterance mean
  and 100-frame segment means), statistics pooling and a 192-d embedding layer.
- :class:`PyanNet`: pyannote's segmentation network (SincNet front end, 4-layer BiLSTM, two
  linear layers, 7-class powerset output: no speaker, each of 3 speakers, each pair).

Parameter names follow the published checkpoints, so ``load_state_dict(strict=True)`` works.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CamPlusPlus", "PyanNet"]


def _bn_relu(channels: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("batchnorm", nn.BatchNorm1d(channels))
    seq.add_module("relu", nn.ReLU())
    return seq


class _ResBlock2d(nn.Module):
    """A 3x3 residual block that may halve the frequency axis."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, (stride, 1), 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, (stride, 1), bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _FrontEnd(nn.Module):
    """Conv2d over (frequency, time); the frequency axis shrinks 8x and folds into channels."""

    def __init__(self, feat_dim: int = 80, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.layer2 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, (2, 1), 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        batch, channels, freq, time = out.shape
        return out.reshape(batch, channels * freq, time)


class _Tdnn(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False)
        self.nonlinear = _bn_relu(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class _ContextMask(nn.Module):
    """A dilated conv whose output is gated by a mask computed from utterance+segment context."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, segment: int = 100) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(cin, cout, kernel, 1, padding, dilation, bias=False)
        self.linear1 = nn.Conv1d(cin, cin // 2, 1)
        self.linear2 = nn.Conv1d(cin // 2, cout, 1)
        self.segment = segment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.linear_local(x)
        pooled = F.avg_pool1d(x, self.segment, self.segment, ceil_mode=True)
        segments = pooled.repeat_interleave(self.segment, dim=-1)[..., : x.shape[-1]]
        context = x.mean(-1, keepdim=True) + segments
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return local * mask


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bottleneck: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(cin)
        self.linear1 = nn.Conv1d(cin, bottleneck, 1, bias=False)
        self.nonlinear2 = _bn_relu(bottleneck)
        self.cam_layer = _ContextMask(bottleneck, growth, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, kernel: int, dilation: int) -> None:
        super().__init__(
            {
                f"tdnnd{i + 1}": _DenseLayer(cin + i * growth, growth, 4 * growth, kernel, dilation)
                for i in range(layers)
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(cin)
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(-1), x.std(-1)], dim=-1)


class _Embedding(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(cout, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CamPlusPlus(nn.Module):
    """CAM++: (batch, frames, 80) mean-normalised Kaldi fbank → (batch, 192) embeddings."""

    def __init__(self, feat_dim: int = 80, embedding_size: int = 192) -> None:
        super().__init__()
        self.head = _FrontEnd(feat_dim)
        channels, growth = 128, 32
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", _Tdnn(self.head.out_channels, channels, 5, stride=2))
        for i, (layers, kernel, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
            self.xvector.add_module(
                f"block{i + 1}", _DenseBlock(layers, channels, growth, kernel, dilation)
            )
            channels += layers * growth
            self.xvector.add_module(f"transit{i + 1}", _Transit(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.xvector.add_module("stats", _StatsPool())
        self.xvector.add_module("dense", _Embedding(channels * 2, embedding_size))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.xvector(self.head(feats.transpose(1, 2)))
        return out


class PyanNet(nn.Module):
    """pyannote segmentation-3.0: (batch, 1, samples at 16 kHz) → (batch, frames, 7) log-probs.

    One output frame per 270 samples (16.875 ms), 589 frames for a 10 s chunk.
    """

    def __init__(self, hidden: int = 128, lstm_layers: int = 4, classes: int = 7) -> None:
        super().__init__()
        from asteroid_filterbanks import Encoder, ParamSincFB

        sinc: Any = nn.Module()
        sinc.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        sinc.conv1d = nn.ModuleList(
            [Encoder(ParamSincFB(80, 251, stride=10)), nn.Conv1d(80, 60, 5), nn.Conv1d(60, 60, 5)]
        )
        sinc.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        sinc.norm1d = nn.ModuleList([nn.InstanceNorm1d(c, affine=True) for c in (80, 60, 60)])
        self.sincnet = sinc
        self.lstm = nn.LSTM(
            60, hidden, num_layers=lstm_layers, bidirectional=True, batch_first=True, dropout=0.0
        )
        self.linear = nn.ModuleList([nn.Linear(2 * hidden, hidden), nn.Linear(hidden, hidden)])
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        sinc = self.sincnet
        out = sinc.wav_norm1d(waveforms)
        for index, (conv, pool, norm) in enumerate(
            zip(sinc.conv1d, sinc.pool1d, sinc.norm1d, strict=True)
        ):
            out = conv(out)
            if index == 0:
                out = torch.abs(out)
            out = F.leaky_relu(norm(pool(out)))
        out, _ = self.lstm(out.transpose(1, 2))
        for linear in self.linear:
            out = F.leaky_relu(linear(out))
        return F.log_softmax(self.classifier(out), dim=-1)
