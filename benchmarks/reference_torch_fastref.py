"""Plain PyTorch reference of the FastRef prototype refinement, written from the paper; the parity oracle
for jzad.methods.refine.

One query at a time, whole tensors, no tricks: the cost matrix is built from explicit differences
(O(n m c) memory), Sinkhorn is the textbook log-domain loop, the gradient M-step is torch autograd on the
loss exactly as Eq. 3 writes it (dis + lambda <P, C>) with a torch.optim optimizer, and the closed-form
M-step and the init use torch.linalg.solve. Keyword arguments carry the names of ``RefineConfig``'s fields.

Readings shared with the JAX module (its docstring gives the reasons): W0 = f M^T (M M^T + rho I)^-1 with
rho = ridge * tr(M M^T) / n; epsilon relative to the mean cost; Sinkhorn potentials start at 0 and each
iteration updates g (the m refined prototypes) then f (the n prototypes); the plan enters the loss as T^T
("printed") or m T^T ("row"); the gradient loss is divided by tr(M M^T) and, for squared Euclidean,
carries the ridge term rho sum_j (1 + lambda p_j) ||W_j||^2; the optimizer starts fresh at every M-step;
with the cosine distance f and M are L2-normalised first and the closed form is the squared Euclidean one
on those unit vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cost_matrix(M: torch.Tensor, R: torch.Tensor, distance: str) -> torch.Tensor:
    """C (n, m) between prototypes M (n, c) and refined prototypes R (m, c), from explicit differences."""
    if distance == "cosine":
        return 0.5 * (1.0 - (_unit(M)[:, None, :] * _unit(R)[None, :, :]).sum(-1))
    return ((M[:, None, :] - R[None, :, :]) ** 2).sum(-1)


def sinkhorn(C: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Log-domain Sinkhorn with uniform marginals a = 1/n (rows), b = 1/m (columns); plan (n, m)."""
    n, m = C.shape
    log_a = torch.full((n,), -torch.log(torch.tensor(float(n), dtype=C.dtype)).item(), dtype=C.dtype)
    log_b = torch.full((m,), -torch.log(torch.tensor(float(m), dtype=C.dtype)).item(), dtype=C.dtype)
    f = torch.zeros(n, dtype=C.dtype)
    g = torch.zeros(m, dtype=C.dtype)
    for _ in range(iterations):
        g = epsilon * log_b - epsilon * torch.logsumexp((f[:, None] - C) / epsilon, dim=0)
        f = epsilon * log_a - epsilon * torch.logsumexp((g[None, :] - C) / epsilon, dim=1)
    return torch.exp((f[:, None] + g[None, :] - C) / epsilon)


def _ridge(M: torch.Tensor, ridge: float) -> torch.Tensor:
    return ridge * (M * M).sum() / M.shape[0]


def initial_transform(f: torch.Tensor, M: torch.Tensor, ridge: float) -> torch.Tensor:
    """W0 = f M^T (M M^T + rho I)^-1: (m, c), (n, c) -> (m, n)."""
    gram = M @ M.T + _ridge(M, ridge) * torch.eye(M.shape[0], dtype=M.dtype)
    return torch.linalg.solve(gram, M @ f.T).T


def plan_weights(T: torch.Tensor, plan_scale: str) -> torch.Tensor:
    """T (n, m) -> P (m, n) as it enters the loss."""
    return T.T * (T.shape[1] if plan_scale == "row" else 1.0)


def objective(W, f, M, T, *, lam, distance, plan_scale, ridge):
    """Eq. 3 for a fixed plan: dis(f, W M) + lambda <P, C(M, W M)> (+ the ridge term, squared Euclidean)."""
    R = W @ M
    P = plan_weights(T, plan_scale)
    transport = (P.T * cost_matrix(M, R, distance)).sum()
    if distance == "cosine":
        return 0.5 * (1.0 - F.cosine_similarity(f, R, dim=1, eps=1e-12)).sum() + lam * transport
    mass = P.sum(1)
    penalty = _ridge(M, ridge) * ((1.0 + lam * mass) * (W * W).sum(1)).sum()
    return ((f - R) ** 2).sum() + lam * transport + penalty


def m_step_gradient(W, f, M, T, *, lam, distance, plan_scale, ridge, optimizer, learning_rate, momentum, m_steps):
    """``m_steps`` torch.optim steps on objective / tr(M M^T), T fixed; a fresh optimizer each call."""
    W = W.detach().clone().requires_grad_(True)
    if optimizer == "adam":
        opt = torch.optim.Adam([W], lr=learning_rate)
    else:
        opt = torch.optim.SGD([W], lr=learning_rate, momentum=momentum)
    trace = (M * M).sum()
    for _ in range(m_steps):
        opt.zero_grad()
        loss = objective(W, f, M, T.detach(), lam=lam, distance=distance, plan_scale=plan_scale, ridge=ridge)
        (loss / trace).backward()
        opt.step()
    return W.detach()


def m_step_closed(f, M, T, *, lam, plan_scale, ridge):
    """W = D^-1 (f + lambda P M) M^T (M M^T + rho I)^-1, D = diag(1 + lambda P 1)."""
    P = plan_weights(T, plan_scale)
    gram = M @ M.T + _ridge(M, ridge) * torch.eye(M.shape[0], dtype=M.dtype)
    target = f + lam * (P @ M)
    return torch.linalg.solve(gram, M @ target.T).T / (1.0 + lam * P.sum(1))[:, None]


def patch_scores(f: torch.Tensor, R: torch.Tensor, distance: str, score: str) -> torch.Tensor:
    """Eq. 6 ("nearest": min over the refined prototypes) or the position-wise residual; (m,)."""
    if score == "residual":
        if distance == "cosine":
            return 0.5 * (1.0 - F.cosine_similarity(f, R, dim=1, eps=1e-12))
        return ((f - R) ** 2).sum(1)
    return cost_matrix(R, f, distance).min(0).values


def refine_reference(
    f: torch.Tensor,
    M: torch.Tensor,
    *,
    distance: str = "sqeuclidean",
    lam: float = 0.3,
    iterations: int = 10,
    em_update: str = "gradient",
    optimizer: str = "sgd",
    learning_rate: float = 0.5,
    momentum: float = 0.0,
    m_steps: int = 1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 50,
    plan_scale: str = "printed",
    ridge: float = 1e-4,
    score: str = "nearest",
    precision: str = "fp32",
):
    """Algorithm 1 for one query f (m, c) and prototypes M (n, c) -> (scores (m,), W (m, n), T (n, m), R (m, c)).

    ``precision`` is accepted for symmetry with RefineConfig; the reference computes in the inputs' dtype.
    """
    del precision
    if distance == "cosine":
        f, M = _unit(f), _unit(M)
    W = initial_transform(f, M, ridge)
    T = torch.zeros(M.shape[0], f.shape[0], dtype=f.dtype)
    for _ in range(iterations):
        C = cost_matrix(M, W @ M, distance)
        T = sinkhorn(C, epsilon * C.mean().item(), sinkhorn_iterations)
        if em_update == "closed":
            W = m_step_closed(f, M, T, lam=lam, plan_scale=plan_scale, ridge=ridge)
        else:
            W = m_step_gradient(W, f, M, T, lam=lam, distance=distance, plan_scale=plan_scale, ridge=ridge,
                                optimizer=optimizer, learning_rate=learning_rate, momentum=momentum,
                                m_steps=m_steps)
    R = W @ M
    return patch_scores(f, R, distance, score), W, T, R
