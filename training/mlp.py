"""Small MLPs for feature rows, with the training-set standardisation inside the graph."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


class Standardize(nn.Module):
    """(x - mean) / std with constants fitted on the training split; exported with the model."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        std = np.where(std < 1e-12, 1.0, std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BinaryClassifier(nn.Module):
    """Raw rows in, probabilities [p(class 0), p(class 1)] out: sigmoid(logit / temperature),
    with the temperature fitted on validation after training (1 before)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: tuple[int, ...],
                 dropout: float) -> None:
        super().__init__()
        self.scale = Standardize(mean, std)
        layers: list[nn.Module] = []
        width = len(mean)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("temperature", torch.tensor(1.0))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.scale(features)).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.logits(features) / self.temperature).unsqueeze(-1)
        return torch.cat([1 - p, p], dim=-1)


class Regressor(nn.Module):
    """Raw rows in, the target in its own units out (shape [batch, 1])."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, y_mean: float, y_std: float,
                 hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.scale = Standardize(mean, std)
        layers: list[nn.Module] = []
        width = len(mean)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("y_mean", torch.tensor(y_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(y_std, dtype=torch.float32))

    def scaled(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.scale(features)).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.scaled(features) * self.y_std + self.y_mean).unsqueeze(-1)


@dataclass
class FitConfig:
    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 10
    seed: int = 42


@dataclass
class FitResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float


def fit(model: nn.Module, loss_fn, X_train: np.ndarray, y_train: np.ndarray,
        X_val: np.ndarray, y_val: np.ndarray, cfg: FitConfig, desc: str) -> FitResult:
    """Adam + mini-batches; early stopping on validation loss, restoring the best weights.

    `loss_fn(model, X, y)` returns the mean loss of a batch.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    Xt, yt = torch.from_numpy(X_train), torch.from_numpy(y_train)
    Xv, yv = torch.from_numpy(X_val), torch.from_numpy(y_val)
    best_loss, best_state, best_epoch, waited = float("inf"), None, 0, 0
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=desc, unit="epoch", leave=False,
                mininterval=0.5)
    epoch = 0
    for epoch in bar:
        model.train()
        order = torch.randperm(len(Xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model, Xt[b], yt[b])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model, Xv, yv))
        bar.set_postfix(loss=f"{total / len(Xt):.4f}", val_loss=f"{val_loss:.4f}",
                        refresh=False)
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(epochs_run=epoch, best_epoch=best_epoch, best_val_loss=round(best_loss, 6))
