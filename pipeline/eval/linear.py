"""Linear-probe protocol: multinomial logistic regression on frozen, standardised features.

Protocol (DESIGN.md §4, I-JEPA appendix, scaled down):
1. features are standardised with the mean/std of the **train** features (unsupervised statistics);
2. for every C of the grid (ascending, i.e. strong → weak regularisation, each fit warm-started
   from the previous one) a classifier is fitted on **train** and scored on **val**; the walk stops
   early once val top-1 has not improved for `patience` (eval.c_patience, default 1) consecutive C
   values, as val accuracy is unimodal in C in practice (raw pixels peak at C = 0.01, encoders at the
   top): on the default run this cut eval_linear 64 → 40 s and eval_lowshot 36 → 25 s, same results;
3. the C with the best val top-1 is kept (ties → the smallest C). The reported classifier is that
   train-only fit: there is **no refit on train+val**, so val top-1 stays an honest model-selection
   score and test is touched exactly once;
4. report val top-1 (for sweeps / model selection), test top-1, test top-5 and per-class test top-1.

Solver: full-batch, preconditioned L-BFGS in torch (strong-Wolfe line search, closed-form gradients)
on the objective of scikit-learn's `LogisticRegression(C)`: mean cross-entropy + ||W||² / (2·C·N),
intercept not penalised, so C means the same as in scikit-learn (a test checks the two optima agree).
Chosen over scikit-learn's lbfgs by measurement (bench/eval.md): the same minimiser (tested), but on
55k×128 features scikit-learn took 72-416 s per C (loaded machine) and did not converge in 1000
iterations for C >= 1; plain torch L-BFGS also stalls at max_iter for C >= 1; the preconditioned
solver converges on the whole grid (7 C) in ~600 iterations, 4-6 s on 10k×128. All accuracies are
fractions in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.eval.features import FeatureSet

PRECOND_CURVATURE = 0.5  # γ, a typical softmax curvature: 0.1-1 within 30 % in iterations (bench/eval.md)
# The fits are many small matmuls: one thread is as fast on an idle 2-core CPU and 5-10x faster
# than two when the cores are shared (measured: C grid on 10k×128, 4.3 s vs 24-56 s at load ~4).
PROBE_THREADS = 1


@dataclass
class LinearModel:
    """Weights [D, K] and bias [K] of a fitted multinomial logistic regression."""

    weight: torch.Tensor
    bias: torch.Tensor
    c: float
    iterations: int = 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


@dataclass
class ProbeResult:
    """Outcome of `linear_probe` (accuracies are fractions in [0, 1])."""

    best_c: float
    val_top1: float
    test_top1: float
    test_top5: float
    per_class: list[float]
    val_by_c: dict[float, float] = field(default_factory=dict)
    train_size: int = 0
    fit_s: float = 0.0

    @property
    def best_c_at_edge(self) -> bool:
        grid = sorted(self.val_by_c)
        return len(grid) > 1 and self.best_c in (grid[0], grid[-1])


def standardize(train: np.ndarray, *others: np.ndarray, eps: float = 1e-6) -> list[torch.Tensor]:
    """Float32 tensors of `train` and `others`, standardised with the mean/std of `train`."""
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (train, *others)]
    mean, std = tensors[0].mean(0), tensors[0].std(0, unbiased=False).clamp_min(eps)
    return [(t - mean) / std for t in tensors]


@dataclass
class Eigenbasis:
    """The non-null eigen-decomposition of Σ = XᵀX/N: eigenvalues `s` > 0 (float64), orthonormal
    directions `u` [D, r] (float32) spanning the rows of X, and X in that basis (`xr` = X·U, [N, r]).

    The L2-regularised minimiser lies in the span of the training rows (representer theorem), so
    fitting in these r <= min(N, D) coordinates is exact. N < D (low-shot) uses the N×N Gram matrix,
    so a 10-image subset of 784-d pixels costs a 10×10 eigen-decomposition, not 784×784.
    Computed once per training set and shared by every C.
    """

    s: torch.Tensor
    u: torch.Tensor
    xr: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, rel_tol: float = 1e-10) -> Eigenbasis:
        n, d = x.shape
        xd = x.double()
        if n < d:
            lam, vec = torch.linalg.eigh(xd @ xd.T / n)
            keep = lam > rel_tol * lam.max().clamp_min(1e-300)
            lam, vec = lam[keep], vec[:, keep]
            u = xd.T @ vec / (n * lam).sqrt()
        else:
            lam, u = torch.linalg.eigh(xd.T @ xd / n)
            keep = lam > rel_tol * lam.max().clamp_min(1e-300)
            lam, u = lam[keep], u[:, keep]
        uf = u.float()
        return cls(lam, uf, x @ uf)


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    c: float,
    *,
    init: LinearModel | None = None,
    basis: Eigenbasis | None = None,
    max_iter: int = 500,
    tol: float = 1e-5,
) -> LinearModel:
    """Minimise mean CE + ||W||²/(2·C·N) (sklearn's LogisticRegression objective) with full-batch L-BFGS.

    Preconditioned by the change of variables W = U·diag(p)·V, where Σ = XᵀX/N = U·diag(s)·Uᵀ (non-null
    part, see Eigenbasis), p = (γ·s + λ)^(-1/2), λ = 1/(C·N) and γ = PRECOND_CURVATURE: the objective
    and its minimiser are unchanged, but the Hessian in V is close to the identity at both ends of the
    C grid, so L-BFGS converges in tens to a few hundred iterations instead of stalling at max_iter for
    weak regularisation. Gradients are closed-form; per C the cost is O(N·r) plus the iterations.
    `basis` = Eigenbasis.of(x), to share it across the C grid.
    """
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}")
    n = len(x)
    lam = 1.0 / (c * n)
    basis = basis if basis is not None else Eigenbasis.of(x)
    r = basis.u.shape[1]
    p = (PRECOND_CURVATURE * basis.s + lam).rsqrt().float()[:, None]  # [D, 1]
    z = basis.xr * p.T  # Z = X·U·diag(p); Z and Zᵀ both contiguous (a transposed view is ~4x slower)
    zt = z.T.contiguous()
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    v = (basis.u.T @ init.weight) / p if init is not None else torch.zeros(r, num_classes)
    b = init.bias.clone() if init is not None else torch.zeros(num_classes)
    opt = torch.optim.LBFGS(
        [v, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tol, tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        logp = torch.log_softmax(torch.addmm(b, z, v), dim=1)
        wr = p * v  # W in the eigenbasis (||W|| = ||Uᵀ W||)
        loss = -logp.gather(1, y[:, None]).mean() + 0.5 * lam * (wr * wr).sum()
        g = logp.exp_().sub_(onehot).div_(n)  # d loss / d logits
        v.grad = zt @ g + lam * p * wr
        b.grad = g.sum(0)
        return loss

    with torch.no_grad():
        opt.step(closure)
    iters = opt.state[opt._params[0]].get("n_iter", 0)
    return LinearModel(basis.u @ (p * v), b.clone(), c, iters)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest logits (k capped at the class count)."""
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hit.float().mean())


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Top-1 accuracy of each class (NaN for a class absent from `labels`)."""
    out = []
    for c in range(num_classes):
        m = labels == c
        out.append(float((pred[m] == c).float().mean()) if m.any() else float("nan"))
    return out


@contextmanager
def probe_threads(n: int = PROBE_THREADS) -> Iterator[None]:
    """Run torch ops with `n` intra-op threads, restoring the previous setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def select_c(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    c_grid: Sequence[float],
    num_classes: int,
    *,
    patience: int | None = 1,
    max_iter: int = 500,
) -> tuple[LinearModel, dict[float, float]]:
    """Fit on train for each C (ascending, warm-started), score val top-1; return the best fit and
    {C: val top-1} of the C values tried. Ties go to the smaller C (stronger regularisation). The walk
    stops once val top-1 has not beaten the best for `patience` consecutive C values (None: whole grid)."""
    if not c_grid:
        raise ValueError("c_grid is empty")
    best: LinearModel | None = None
    best_acc = -1.0
    scores: dict[float, float] = {}
    prev: LinearModel | None = None
    stale = 0
    with probe_threads():
        basis = Eigenbasis.of(x_train)
        for c in sorted(set(float(c) for c in c_grid)):
            prev = fit_logreg(x_train, y_train, num_classes, c, init=prev, basis=basis, max_iter=max_iter)
            scores[c] = topk_accuracy(prev.logits(x_val), y_val)
            if scores[c] > best_acc:
                best, best_acc, stale = prev, scores[c], 0
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    break
    assert best is not None
    return best, scores


def check_disjoint(train: FeatureSet, *others: FeatureSet) -> None:
    """Raise if any sample key of `train` also appears in an evaluation set (leak guard)."""
    train_keys = set(train.keys.tolist())
    for other in others:
        shared = train_keys.intersection(other.keys.tolist())
        if shared:
            raise ValueError(f"{len(shared)} evaluation samples are also training samples, e.g. {sorted(shared)[:3]}")


def num_classes_of(*sets: FeatureSet) -> int:
    return int(max(int(s.labels.max()) for s in sets if len(s))) + 1


def linear_probe(
    train: FeatureSet,
    val: FeatureSet,
    test: FeatureSet,
    c_grid: Sequence[float],
    *,
    num_classes: int | None = None,
    patience: int | None = 1,
    max_iter: int = 500,
) -> ProbeResult:
    """The full linear protocol (module docstring) on one feature set's train/val/test splits."""
    check_disjoint(train, val, test)
    start = time.perf_counter()
    k = num_classes or num_classes_of(train, val, test)
    xtr, xva, xte = standardize(train.features, val.features, test.features)
    ytr, yva, yte = (torch.from_numpy(s.labels) for s in (train, val, test))
    model, scores = select_c(xtr, ytr, xva, yva, c_grid, k, patience=patience, max_iter=max_iter)
    logits = model.logits(xte)
    return ProbeResult(
        best_c=model.c,
        val_top1=scores[model.c],
        test_top1=topk_accuracy(logits, yte, 1),
        test_top5=topk_accuracy(logits, yte, 5),
        per_class=per_class_accuracy(logits.argmax(1), yte, k),
        val_by_c=scores,
        train_size=len(train),
        fit_s=time.perf_counter() - start,
    )
