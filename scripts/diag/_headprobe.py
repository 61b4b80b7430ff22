"""Shared pieces of the head-box probes (`attribute_probe.py`, `layer_probe.py`): which patches cover a head,
and a linear probe scored on held-out rows."""
from collections import Counter

import torch

GRID = 12  # 168 px / 14


def head_patches(box, size, grid=GRID):
    """Indices (row-major, CLS excluded) of the patches whose centres fall in ``box``; the patch nearest the
    box centre if none does."""
    x0, y0, x1, y1 = box
    inside = [r * grid + c for r in range(grid) for c in range(grid)
              if x0 <= (c + 0.5) * size / grid < x1 and y0 <= (r + 0.5) * size / grid < y1]
    if inside:
        return inside
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return [min(grid - 1, int(cy / size * grid)) * grid + min(grid - 1, int(cx / size * grid))]


def linear_probe(X, labels, Xt, test_labels):
    """Multinomial logistic regression (standardised inputs, Adam 300 steps, L2 1e-2) fitted on ``X`` [N, d]
    with ``labels``; returns ``(test accuracy, majority-class rate of the test labels)``."""
    classes = sorted(set(labels) | set(test_labels))
    X, Xt = X.float(), Xt.float()
    mu, sd = X.mean(0), X.std(0) + 1e-6
    X, Xt = (X - mu) / sd, (Xt - mu) / sd
    y = torch.tensor([classes.index(v) for v in labels])
    yt = torch.tensor([classes.index(v) for v in test_labels])
    lin = torch.nn.Linear(X.shape[1], len(classes))
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(X), y) + 1e-2 * lin.weight.pow(2).sum()
        loss.backward()
        opt.step()
    acc = (lin(Xt).argmax(-1) == yt).float().mean().item()
    return acc, Counter(yt.tolist()).most_common(1)[0][1] / len(yt)
