"""Networks of the supervised entry points: pre-activation ResNets for CIFAR, and two language models.

Teacher and students are built by the same functions and may differ (``--depth`` vs ``--student-depth``,
``--model`` vs ``--student-model``). Language models share one interface,
``forward(tokens, state) -> (logits, state)`` with ``tokens`` of shape ``(batch, time)``, so the training
loop does not care whether a model carries a recurrent state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lot_rl.errors import LoTUserError, require
from lot_rl.runtime import cpu_bf16_lstm_supported

LM_MODELS = ("lstm", "transformer")


# ----------------------------------------------------------------------------------------------------
# Pre-activation ResNet (He et al., "Identity Mappings in Deep Residual Networks", CIFAR variant)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the identity (or a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the paper's full pre-activation unit.
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreResNet(nn.Module):
    """Pre-activation ResNet of depth ``6n + 2`` (20, 32, 56, 110, ...): 3 stages of n basic blocks.

    Stage widths ``width, 2*width, 4*width`` (16/32/64 in the paper), the last two downsampling by 2.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        require(depth >= 8 and (depth - 2) % 6 == 0,
                f"--depth {depth} is not of the form 6n+2 with n >= 1 (e.g. 20, 32, 56, 110)")
        require(width >= 1, f"--width must be >= 1, got {width}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                layers.append(PreActBlock(channels, out_channels, 2 if (stage > 0 and i == 0) else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        out = torch.relu(self.bn(out))
        return self.fc(out.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------------------------------
# Language models


LSTMState = list[tuple[torch.Tensor, torch.Tensor]]


class LSTMLanguageModel(nn.Module):
    """A multi-layer LSTM language model with dropout and tied input/output embeddings.

    Layers are separate single-layer LSTMs (as in AWD-LSTM) so that the last one can output the embedding
    size when it differs from ``hidden_size``: that is what lets the output layer reuse the embedding.
    """

    def __init__(self, vocab_size: int, embedding_size: int = 200, hidden_size: int = 200, num_layers: int = 2,
                 dropout: float = 0.2, tie_weights: bool = True):
        super().__init__()
        require(num_layers >= 1, f"--num-layers must be >= 1, got {num_layers}")
        require(0.0 <= dropout < 1.0, f"--dropout must be in [0, 1), got {dropout}")
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        sizes = [embedding_size] + [hidden_size] * (num_layers - 1) + [embedding_size if tie_weights else hidden_size]
        self.layers = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(sizes[-1], vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        out = self.dropout(self.embedding(tokens))
        new_state = []
        fp32_lstm = (tokens.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                     and not cpu_bf16_lstm_supported())
        for i, lstm in enumerate(self.layers):
            layer_state = None if state is None else state[i]
            if fp32_lstm:  # this CPU has no bf16 LSTM kernel: the LSTM alone runs in fp32
                with torch.autocast("cpu", enabled=False):
                    layer_state = None if layer_state is None else tuple(t.float() for t in layer_state)
                    out, layer_state = lstm(out.float(), layer_state)
            else:
                out, layer_state = lstm(out, layer_state)
            new_state.append(layer_state)
            out = self.dropout(out)
        return self.decoder(out), new_state


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (no maximum length to choose)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.size, 2, device=device, dtype=torch.float32)
                         * (-math.log(10000.0) / self.size))
        pe = torch.zeros(length, self.size, device=device)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq[: self.size // 2])
        return pe


class TransformerLanguageModel(nn.Module):
    """A causal (decoder-only) pre-norm Transformer over each BPTT window, with tied embeddings.

    It attends within the window only (no recurrence memory as in Transformer-XL), so its state is None.
    """

    def __init__(self, vocab_size: int, embedding_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                 dropout: float = 0.1, ff_size: int | None = None, tie_weights: bool = True):
        super().__init__()
        require(num_layers >= 1, f"--num-layers must be >= 1, got {num_layers}")
        require(num_heads >= 1 and embedding_size % num_heads == 0,
                f"--embedding-size {embedding_size} must be a multiple of --num-heads {num_heads}")
        require(0.0 <= dropout < 1.0, f"--dropout must be in [0, 1), got {dropout}")
        self.embedding_size = embedding_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.positions = PositionalEncoding(embedding_size)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(embedding_size, num_heads, ff_size or 4 * embedding_size, dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embedding_size)
        self.decoder = nn.Linear(embedding_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        length = tokens.shape[1]
        x = self.embedding(tokens) * math.sqrt(self.embedding_size) + self.positions(length, tokens.device)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        out = self.encoder(self.dropout(x), mask=mask, is_causal=True)
        return self.decoder(self.norm(out)), None


def make_language_model(kind: str, vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int,
                        dropout: float, num_heads: int = 4, tie_weights: bool = True) -> nn.Module:
    """An ``lstm`` or ``transformer`` language model (``hidden_size`` is the LSTM width / the FF width)."""
    if kind == "lstm":
        return LSTMLanguageModel(vocab_size, embedding_size, hidden_size, num_layers, dropout, tie_weights)
    if kind == "transformer":
        return TransformerLanguageModel(vocab_size, embedding_size, num_layers, num_heads, dropout,
                                        ff_size=hidden_size, tie_weights=tie_weights)
    raise LoTUserError(f"unknown language model {kind!r}; choose one of {', '.join(LM_MODELS)}")


def detach_state(state):
    """Cut the autograd history of a recurrent state (truncated BPTT); None and tuples/lists pass through."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)
