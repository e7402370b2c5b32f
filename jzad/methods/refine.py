"""FastRef prototype refinement (the core of PatchCore+ and WinCLIP+), pure JAX.

Paper: "Prototype-oriented fast refinement for few-shot industrial anomaly detection" (FastRef,
arXiv 2506.21398), Secs. 4-5, Algorithm 1. Per query image: features f (m, c), prototypes M (n, c) (the
coreset of the k-shot features), transform W (m, n), refined prototypes R = W M (m, c).

Objective (Eq. 3, with Eq. 5's entropic OT):  min_{W, T}  dis(f, W M) + lambda <T, C(M, W M)>,  T in U(p, q)
with p uniform 1/n on M and q uniform 1/m on W M (Eq. 4). dis sums over the m positions:
PatchCore+ (Eq. 7) dis = ||f - W M||_F^2 = sum_j ||f_j - R_j||^2, C_ij = ||M_i - R_j||^2 (squared Euclidean);
WinCLIP+ (Eq. 8) dis = sum_j (1 - cos(f_j, R_j)) / 2, C_ij = (1 - cos(M_i, R_j)) / 2.

Choices, each with the equation it concerns:
- Init (Sec. 4.2): W0 = f M^T (M M^T + rho I)^-1. The draft prints (M^T M)^-1, which does not compose with
  f M^T (m, n); M M^T (n, n) is the Gram matrix that does, and it is invertible when n <= c. rho =
  ``ridge`` * tr(M M^T) / n (relative, so it means the same at any feature scale) keeps the solve well posed
  when n > c or prototypes repeat. The Cholesky factor of G = M M^T + rho I depends on M only, so it is
  computed once (per device, whatever the batch) and every solve reuses it (``jax.scipy.linalg.cho_solve``,
  never an explicit inverse): W0 = cho_solve(G, M f^T)^T once per query, G0 G^-1 = cho_solve(G, G0)^T once
  per prototype set (G0 = M M^T).
- E-step (Eqs. 4-5): ott-jax Sinkhorn in the log domain between M (weights 1/n) and W M (weights 1/m) on the
  cost C (n, m) above, epsilon = ``epsilon`` * mean(C) (relative to the mean cost, recomputed each
  iteration), ``min_iterations = max_iterations = sinkhorn_iterations`` so the loop has a fixed length and
  vmaps; potentials start at 0 each E-step; T is ott's plan exp((f_i + g_j - C_ij) / eps).
- Plan scaling inside the loss (Eq. 3 with Eq. 5): T's entries are O(1/(n m)) and sum to 1, while dis sums
  over m positions, so with T as printed ("printed") the OT term weighs about 1/m of the data term: at
  PatchCore+'s m = 1024 the refined prototypes move about 2e-5 relative to W0 M and the largest score change is
  ~3e-7, i.e. the refinement is the W0 projection onto span(M) and the Sinkhorn step is dead code. "row" uses
  P = m T^T (m, n), whose rows (one per refined prototype) sum to 1: each position j gets lambda * sum_i P_ji
  C_ij, a weighted mean cost, beside its own ||f_j - R_j||^2. Derivation: "row" is exactly the printed loss
  with dis taken per position, dis = (1/m) sum_j ||f_j - R_j||^2 (the mean over positions, torch's default
  reduction, the normalisation that makes dis independent of the number of patches), multiplied through by m:
  (1/m) sum_j d_j + lambda <T, C> = (1/m) [sum_j d_j + lambda <m T^T, C^T>]. "row" is the default, because it
  is the only reading under which the paper's own evidence can hold: its Table 2 ablation (W* alone vs
  W* + T*: e.g. MPDD 74.9/96.4 -> 76.0/97.3) and its Fig. 5 lambda sweep ("first improves and then
  declines") would be flat under "printed", and lambda = 0.3 (PatchCore+) / 0.1 (WinCLIP+) are O(1) weights,
  which only a per-position data term makes them. The synthetic global-shift set of benchmarks/refine_study.py
  favours the projection by construction (a shift the OT pull undoes on normal patches), so it does not decide
  this default; the pre-registered real-photo study (benchmarks/fastref_real_study.py) reports how the two
  readings compare on real features. ``lam = 0`` is the W0 projection alone, under either reading.
- M-step (Sec. 4.2, W_{t+1} = W_t - beta dL/dW; the draft's "+" is a sign slip): T fixed
  (``stop_gradient``). Because the OT term is linear in C, <P, C(M, R)> collapses to the barycentric
  projections B = P M (m, c) and masses p = P 1 (m,): squared Euclidean
  sum_j (p_j ||R_j||^2 - 2 R_j.B_j + sum_i P_ji ||M_i||^2), cosine (unit M) sum_j (p_j - B_j.R_j / ||R_j||) / 2.
  "gradient": ``m_steps`` steps of an optax optimizer (``optimizer`` "sgd" with ``momentum``, or "adam") on
  L(W) / tr(M M^T); the constant divisor leaves the minimiser unchanged and makes the learning rate
  scale-free: for the squared Euclidean loss the Hessian's largest eigenvalue is then at most
  2 (1 + lambda max_j p_j), so plain SGD is stable for lr < 1 / (1 + lambda max_j p_j). The optimizer
  state starts fresh at each M-step (T, hence the objective, changes between M-steps).
  The squared Euclidean loss also carries the ridge term rho sum_j d_j ||W_j||^2 (d_j = 1 + lambda p_j) that
  makes the closed form below its exact minimiser (it vanishes with ``ridge``).
- Closed M-step (``em_update="closed"``; the CVPR version's closed-form update), squared Euclidean:
  L(W) = sum_j ||f_j - W_j M||^2 + lambda sum_{j,i} P_ji ||M_i - W_j M||^2 + rho sum_j d_j ||W_j||^2.
  The rows W_j decouple; setting dL/dW_j = 0:
  2 (W_j M - f_j) M^T + 2 lambda (p_j W_j M - B_j) M^T + 2 rho d_j W_j = 0
  => d_j W_j (M M^T + rho I) = (f_j + lambda B_j) M^T  => W = D^-1 (f + lambda P M) M^T G^-1,  D = diag(1 + lambda p):
  each refined prototype is the projection onto span(M) of f_j pulled towards its barycentre B_j with
  weight lambda p_j. As W = D^-1 (W0 + lambda P G0 G^-1) it is one (m, n) x (n, n) product per round on
  top of the init's solve, and needs no learning rate.
  Cosine (WinCLIP+): the loss is not quadratic in W. For unit vectors (1 - cos(a, b)) / 2 = ||a - b||^2 / 4,
  so the closed form minimises that chordal form on unit features and prototypes without the unit-norm
  constraint on R_j, i.e. the squared Euclidean closed form above on f/||f||, M/||M|| (the factor 1/4 is
  common to both terms; the ridge term is the same). The scores are cosine and so ignore the norms of R_j.
  The cosine gradient M-step has no ridge term (its loss is blind to the scale of W).
- Cosine mode works on unit vectors throughout: f and M are L2-normalised first and W acts on the unit
  prototypes. W M and W' M/||M|| with W' = W diag(||M_i||) are the same set of refined prototypes, so this
  is a reparametrisation of Eq. 8, not a change of it.
- Score (Eq. 6; Eq. 7's "W* r" repeats the transform that r already carries): "nearest" s_j = min over the
  m refined prototypes r of dis(f_j, r); "residual" s_j = dis(f_j, R_j), the position-wise reconstruction
  error of the CVPR version. Image score = max_j s_j (Sec. 4.3). The nearest prototype is found with the
  GEMM form of the distance (||r||^2 - 2 f_j.r), then its distance is recomputed from the difference f_j - r:
  the GEMM form loses about |f|^2 * 1e-7 to cancellation exactly where refined prototypes come close to the
  query.
- N = ``iterations`` EM rounds (Algorithm 1; the paper's N = 10). Presets: ``PATCHCORE_PLUS`` (squared
  Euclidean, lambda 0.3) and ``WINCLIP_PLUS`` (cosine, lambda 0.1), Sec. 6.1.
- Online variant (Table 6): the refined prototypes of each scored image join the prototypes used for the
  next image, in a ring buffer of fixed capacity after the original coreset (``online_memory``,
  ``online_update``, ``refine_online``). Prototypes carry a validity mask: invalid rows get Sinkhorn weight
  0, a decoupled identity block in G and no cost in epsilon's mean, so a masked run equals a run on the
  valid rows alone.

Coefficient space (speed): R = W M lies in the span of the n prototypes, so every inner product the loop needs
is one in R^n: M R^T = G0 W^T, ||R_j||^2 = (W G0 W^T)_jj, f R^T = K W^T with G0 = M M^T (n, n) once per
prototype set and K = f M^T (m, n) once per query. An EM round then costs O(m n^2) (plus Sinkhorn's O(n m) per
iteration) instead of O(m n c), and the nearest-prototype search O(m^2 n) instead of O(m^2 c); R itself is
formed once, at the end. PatchCore+ has n << c (0.05 x k x 784 prototypes of 1024 channels), so this is
several times fewer FLOPs; for n close to c it costs about the same.

Everything is one jitted function per call: ``refine_batch`` vmaps the per-image refinement over a batch and
shards the batch over a 1-D device mesh (``jax.shard_map``), with no Python loop over images or iterations.
``precision`` picks the arithmetic of the E-step cost and nearest-prototype GEMMs; Gram, solves, the
M-step and W M stay float32 at ``Precision.HIGHEST``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.scipy.linalg import cho_factor, cho_solve
from jax.sharding import Mesh, PartitionSpec

from jzad.kernels.distances import check_precision, dot_nt, l2_normalize, squared_norms
from jzad.kernels.sharding import AXIS, device_mesh, padded_size

DISTANCES = ("sqeuclidean", "cosine")
EM_UPDATES = ("gradient", "closed")
OPTIMIZERS = ("sgd", "adam")
PLAN_SCALES = ("printed", "row")
SCORES = ("nearest", "residual")
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclass(frozen=True)
class RefineConfig:
    """Static configuration of the refinement (hashable, a static jit argument).

    distance: "sqeuclidean" (PatchCore+, Eq. 7) or "cosine" ((1 - cos) / 2, WinCLIP+, Eq. 8). lam: lambda,
    the OT term's weight. iterations: N EM rounds. em_update: "gradient" (optax steps) or "closed" (exact
    M-step). optimizer, learning_rate, momentum, m_steps: the gradient M-step (learning rate in units of
    1 / tr(M M^T), see the module docstring; momentum only with "sgd"). epsilon: entropic regularisation
    relative to the mean cost. sinkhorn_iterations: fixed Sinkhorn length. plan_scale: "printed" (T as is)
    or "row" (m T^T, rows sum to 1). ridge: rho relative to tr(M M^T) / n. score: "nearest" (Eq. 6) or
    "residual" (||f_j - R_j||). precision: "fp32" or "bf16" distance GEMMs.

    Defaults: the paper's N = 10 and lambda = 0.3 (PatchCore+; ``WINCLIP_PLUS`` has 0.1); one SGD step per
    round, as Sec. 4.2's W_{t+1} = W_t - beta dL/dW, at lr 0.5 (below the stability bound 1 / (1 + lambda) =
    0.77 of the "row" loss at lambda 0.3; lambda > 1 needs a smaller lr or the closed M-step); epsilon 0.05 x
    mean cost, a sharp plan; 50 Sinkhorn iterations (rows then sum to 1/n exactly; the worst column sum is off
    1/m by 2-12 % on the synthetic test features, by 1e-6 on random 784 x 1024 queries against 157 prototypes;
    raise it for a tighter plan); "row" plan scaling (the per-position data term; see the module docstring for
    why: under "printed" the OT term is about 1/m of the data term and lambda does nothing measurable); ridge
    1e-4.
    """

    distance: str = "sqeuclidean"
    lam: float = 0.3
    iterations: int = 10
    em_update: str = "gradient"
    optimizer: str = "sgd"
    learning_rate: float = 0.5
    momentum: float = 0.0
    m_steps: int = 1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 50
    plan_scale: str = "row"
    ridge: float = 1e-4
    score: str = "nearest"
    precision: str = "fp32"

    def __post_init__(self):
        for name, allowed in (("distance", DISTANCES), ("em_update", EM_UPDATES), ("optimizer", OPTIMIZERS),
                              ("plan_scale", PLAN_SCALES), ("score", SCORES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("iterations", "m_steps", "sinkhorn_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not float(self.lam) >= 0.0:
            raise ValueError(f"lam: expected lambda >= 0, got {self.lam!r}")
        if not float(self.learning_rate) > 0.0:
            raise ValueError(f"learning_rate: expected > 0, got {self.learning_rate!r}")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {self.momentum!r}")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum: only used with optimizer 'sgd', got optimizer {self.optimizer!r}")
        if not float(self.epsilon) > 0.0:
            raise ValueError(f"epsilon: expected > 0 (relative to the mean cost), got {self.epsilon!r}")
        if not float(self.ridge) >= 0.0:
            raise ValueError(f"ridge: expected >= 0, got {self.ridge!r}")
        check_precision(self.precision)


PATCHCORE_PLUS = RefineConfig(distance="sqeuclidean", lam=0.3)
WINCLIP_PLUS = RefineConfig(distance="cosine", lam=0.1)


class Refinement(NamedTuple):
    """``refine`` output for one query: transform W (m, n), last plan T (n, m), refined prototypes W M (m, c)."""

    transform: jax.Array
    plan: jax.Array
    prototypes: jax.Array


class _Basis(NamedTuple):
    """Prototype-side quantities, computed once for every query and EM round: M (n, c) (unit rows with the
    cosine distance, invalid rows zero), squared norms (n,), Gram G0 = M M^T (n, n), the lower Cholesky
    factor of G = G0 + rho I (an identity block on invalid rows), G0 G^-1 (n, n) (by that factor), Sinkhorn
    weights a (n,) (1 / n_valid on valid rows), tr(G0) and rho."""

    prototypes: jax.Array
    sq_norms: jax.Array
    gram: jax.Array
    factor: jax.Array
    gram_solved: jax.Array
    weights: jax.Array
    trace: jax.Array
    rho: jax.Array


class _Query(NamedTuple):
    """One query: features f (m, c) (unit rows with the cosine distance), K = f M^T (m, n) and the initial
    transform W0 = K G^-1 (m, n)."""

    features: jax.Array
    cross: jax.Array
    initial: jax.Array


# --------------------------------------------------------------------------------------------- checks


def _check_pair(f: jax.Array, prototypes: jax.Array, valid: jax.Array | None) -> None:
    if f.ndim != 2:
        raise ValueError(f"f: expected query features (m, c), got shape {f.shape}")
    _check_prototypes(prototypes, f.shape[1], valid)


def _check_prototypes(prototypes: jax.Array, channels: int, valid: jax.Array | None) -> None:
    if prototypes.ndim != 2 or prototypes.shape[1] != channels:
        raise ValueError(f"M: expected prototypes (n, {channels}), got shape {prototypes.shape}")
    if valid is not None and valid.shape != (prototypes.shape[0],):
        raise ValueError(f"valid: expected a ({prototypes.shape[0]},) mask over the prototypes, got {valid.shape}")


def _check_transform(W: jax.Array, m: int, n: int) -> None:
    if W.shape != (m, n):
        raise ValueError(f"W: expected a transform ({m}, {n}), got shape {W.shape}")


def _check_plan(T: jax.Array, n: int, m: int) -> None:
    if T.shape != (n, m):
        raise ValueError(f"T: expected a plan ({n}, {m}), got shape {T.shape}")


# --------------------------------------------------------------------------------------------- pieces


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _prepare_features(f: jax.Array, config: RefineConfig) -> jax.Array:
    f = f.astype(jnp.float32)
    return l2_normalize(f) if config.distance == "cosine" else f


def _basis(prototypes: jax.Array, config: RefineConfig, valid: jax.Array | None) -> _Basis:
    m_s = _prepare_features(prototypes, config)
    n = m_s.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
    m_s = jnp.where(valid[:, None], m_s, 0.0)
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    sq = squared_norms(m_s)
    trace = jnp.sum(sq)
    rho = config.ridge * trace / count
    gram = _matmul(m_s, m_s.T)
    factor = cho_factor(gram + jnp.diag(jnp.where(valid, rho, 1.0)), lower=True)[0]
    gram_solved = cho_solve((factor, True), gram).T
    weights = jnp.where(valid, 1.0 / count, 0.0)
    return _Basis(m_s, sq, gram, factor, gram_solved, weights, jnp.maximum(trace, jnp.finfo(jnp.float32).tiny),
                  rho)


def _query(f: jax.Array, basis: _Basis, config: RefineConfig) -> _Query:
    f = _prepare_features(f, config)
    cross = _matmul(f, basis.prototypes.T)
    return _Query(f, cross, cho_solve((basis.factor, True), cross.T).T)


def _refined_sq_norms(transform: jax.Array, basis: _Basis) -> jax.Array:
    """||R_j||^2 = (W G0 W^T)_jj: (m, n) -> (m,)."""
    return jnp.sum(_matmul(transform, basis.gram) * transform, axis=1)


def _inverse_norm(sq: jax.Array) -> jax.Array:
    return jax.lax.rsqrt(jnp.maximum(sq, 1e-24))


def _transport_cost(transform: jax.Array, basis: _Basis, config: RefineConfig) -> jax.Array:
    """C (n, m) between M and R = W M from M R^T = G0 W^T and the norms: ||M_i - R_j||^2 or
    (1 - cos(M_i, R_j)) / 2 (Sec. 4.1), without forming R."""
    cross = dot_nt(basis.gram, transform, config.precision)
    r2 = _refined_sq_norms(transform, basis)
    if config.distance == "cosine":
        cos = cross * _inverse_norm(basis.sq_norms)[:, None] * _inverse_norm(r2)[None, :]
        return 0.5 * (1.0 - cos)
    return jnp.maximum(basis.sq_norms[:, None] + r2[None, :] - 2.0 * cross, 0.0)


def _plan_weights(plan: jax.Array, config: RefineConfig) -> jax.Array:
    """T (n, m) -> P (m, n) as it enters the loss: T^T ("printed") or m T^T ("row")."""
    scale = plan.shape[1] if config.plan_scale == "row" else 1.0
    return scale * jax.lax.stop_gradient(plan).T


def _sinkhorn_plan(cost: jax.Array, weights: jax.Array, config: RefineConfig) -> jax.Array:
    """The plan of the cost divided by eps at epsilon 1 (the same plan as epsilon = eps): ott would divide by a
    run-time scalar inside its loop, which XLA compiles as a division in a one-device program and as a
    multiplication by the reciprocal in a multi-device one (1-ulp differences between sharded and unsharded
    runs); one explicit reciprocal makes both programs compute alike."""
    eps = config.epsilon * jnp.sum(weights[:, None] * cost) / cost.shape[1]
    from ott.geometry import geometry  # imported where used: ott costs ~1.5 s of start-up for runs without it
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    geom = geometry.Geometry(cost_matrix=cost * (1.0 / eps), epsilon=1.0)
    problem = linear_problem.LinearProblem(geom, a=weights)
    iters = config.sinkhorn_iterations
    solver = sinkhorn.Sinkhorn(min_iterations=iters, max_iterations=iters, inner_iterations=iters)
    return solver(problem).matrix


def _e_step(transform: jax.Array, basis: _Basis, config: RefineConfig) -> jax.Array:
    cost = _transport_cost(jax.lax.stop_gradient(transform), basis, config)
    return jax.lax.stop_gradient(_sinkhorn_plan(cost, basis.weights, config))


def _objective(transform: jax.Array, query: _Query, basis: _Basis, plan_weights: jax.Array,
               config: RefineConfig) -> jax.Array:
    """M-step objective L(W) with P fixed (Eqs. 7/8, plus the ridge term for squared Euclidean) in the
    coefficient space: f_j.R_j = (K W^T)_jj, B_j.R_j = (P G0 W^T)_jj, ||R_j||^2 = (W G0 W^T)_jj."""
    r2 = _refined_sq_norms(transform, basis)
    mass = jnp.sum(plan_weights, axis=1)
    bary_dot = jnp.sum(_matmul(plan_weights, basis.gram) * transform, axis=1)
    data_dot = jnp.sum(query.cross * transform, axis=1)
    lam = config.lam
    if config.distance == "cosine":
        inv = _inverse_norm(r2)
        return 0.5 * jnp.sum(1.0 - data_dot * inv) + lam * 0.5 * jnp.sum(mass - bary_dot * inv)
    data = jnp.sum(squared_norms(query.features)) - 2.0 * jnp.sum(data_dot) + jnp.sum(r2)
    transport = jnp.sum(mass * r2) - 2.0 * jnp.sum(bary_dot) + jnp.sum(plan_weights * basis.sq_norms[None, :])
    ridge = basis.rho * jnp.sum((1.0 + lam * mass) * squared_norms(transform))
    return data + lam * transport + ridge


def _optimizer(config: RefineConfig) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    return optax.sgd(config.learning_rate, momentum=config.momentum or None)


def _m_step_gradient(transform, query, basis, plan, config):
    weights = _plan_weights(plan, config)
    opt = _optimizer(config)

    def loss(w):
        return _objective(w, query, basis, weights, config) / basis.trace

    def step(_, carry):
        w, state = carry
        updates, state = opt.update(jax.grad(loss)(w), state, w)
        return optax.apply_updates(w, updates), state

    return jax.lax.fori_loop(0, config.m_steps, step, (transform, opt.init(transform)))[0]


def _m_step_closed(query, basis, plan, config):
    """W = D^-1 (f + lambda P M) M^T G^-1 = D^-1 (W0 + lambda P G0 G^-1): one (m, n) x (n, n) product."""
    weights = _plan_weights(plan, config)
    rhs = query.initial + config.lam * _matmul(weights, basis.gram_solved)
    return rhs / (1.0 + config.lam * jnp.sum(weights, axis=1))[:, None]


def _refine(query: _Query, basis: _Basis, config: RefineConfig) -> Refinement:
    transform = query.initial

    def em_round(_, carry):
        w, _plan = carry
        plan = _e_step(w, basis, config)
        if config.em_update == "closed":
            return _m_step_closed(query, basis, plan, config), plan
        return _m_step_gradient(w, query, basis, plan, config), plan

    n, m = basis.prototypes.shape[0], query.features.shape[0]
    init = (transform, jnp.zeros((n, m), jnp.float32))
    transform, plan = jax.lax.fori_loop(0, config.iterations, em_round, init)
    return Refinement(transform, plan, _matmul(transform, basis.prototypes))


def _scores(query: _Query, refinement: Refinement, basis: _Basis, config: RefineConfig) -> jax.Array:
    """Eq. 6 or the residual. The nearest refined prototype is picked from f R^T = K W^T (m, m), then its
    distance is recomputed from the difference, exact to float32 rounding."""
    f, refined = query.features, refinement.prototypes
    if config.score == "nearest":
        sim = dot_nt(query.cross, refinement.transform, config.precision)
        r2 = _refined_sq_norms(refinement.transform, basis)
        if config.distance == "cosine":
            best = jnp.argmax(sim * _inverse_norm(r2)[None, :], axis=1)
        else:
            best = jnp.argmin(r2[None, :] - 2.0 * sim, axis=1)
        refined = refined[best]
    if config.distance == "cosine":
        return 0.5 * (1.0 - jnp.sum(f * l2_normalize(refined), axis=1))
    return jnp.sum(jnp.square(f - refined), axis=1)


# --------------------------------------------------------------------------------------------- public API


@partial(jax.jit, static_argnames=("config",))
def initial_transform(f: jax.Array, M: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
                      valid: jax.Array | None = None) -> jax.Array:
    """W0 = f M^T (M M^T + rho I)^-1 (Sec. 4.2, Cholesky solve): f (m, c), M (n, c) -> (m, n).

    With the cosine distance f and M are L2-normalised first. ``valid`` (n,) bool masks prototypes out.
    """
    _check_pair(f, M, valid)
    basis = _basis(M, config, valid)
    return _query(f, basis, config).initial


@partial(jax.jit, static_argnames=("config",))
def e_step(W: jax.Array, M: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
           valid: jax.Array | None = None) -> jax.Array:
    """E-step (Eqs. 4-5): the entropic OT plan T (n, m) between M (n, c) (weights 1/n) and W M (m, c)
    (weights 1/m) for W (m, n); rows sum to 1/n, columns to about 1/m."""
    _check_prototypes(M, M.shape[-1], valid)
    if W.ndim != 2:
        raise ValueError(f"W: expected a transform (m, {M.shape[0]}), got shape {W.shape}")
    _check_transform(W, W.shape[0], M.shape[0])
    return _e_step(W.astype(jnp.float32), _basis(M, config, valid), config)


def _m_step_inputs(W, f, M, T, config, valid):
    _check_pair(f, M, valid)
    m, n = f.shape[0], M.shape[0]
    if W is not None:
        _check_transform(W, m, n)
    _check_plan(T, n, m)
    basis = _basis(M, config, valid)
    return _query(f, basis, config), basis, T.astype(jnp.float32)


@partial(jax.jit, static_argnames=("config",))
def m_step_objective(W: jax.Array, f: jax.Array, M: jax.Array, T: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
                     valid: jax.Array | None = None) -> jax.Array:
    """The M-step objective L(W) for a fixed plan T (n, m): dis(f, W M) + lambda <P, C(M, W M)>
    (+ the ridge term for squared Euclidean), P the plan scaled by ``plan_scale``. Scalar."""
    query, basis, T = _m_step_inputs(W, f, M, T, config, valid)
    return _objective(W.astype(jnp.float32), query, basis, _plan_weights(T, config), config)


@partial(jax.jit, static_argnames=("config",))
def m_step_gradient(W: jax.Array, f: jax.Array, M: jax.Array, T: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
                    valid: jax.Array | None = None) -> jax.Array:
    """Gradient M-step: ``m_steps`` optax steps on L(W) / tr(M M^T) with T (n, m) fixed; W (m, n) -> (m, n)."""
    query, basis, T = _m_step_inputs(W, f, M, T, config, valid)
    return _m_step_gradient(W.astype(jnp.float32), query, basis, T, config)


@partial(jax.jit, static_argnames=("config",))
def m_step_closed(f: jax.Array, M: jax.Array, T: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
                  valid: jax.Array | None = None) -> jax.Array:
    """Closed-form M-step: W = D^-1 (f + lambda P M) M^T (M M^T + rho I)^-1, the exact minimiser of the
    squared Euclidean L(W) (the chordal form on unit vectors for cosine); f (m, c), T (n, m) -> W (m, n)."""
    query, basis, T = _m_step_inputs(None, f, M, T, config, valid)
    return _m_step_closed(query, basis, T, config)


@partial(jax.jit, static_argnames=("config",))
def refine(f: jax.Array, M: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
           valid: jax.Array | None = None) -> Refinement:
    """Algorithm 1 for one query: f (m, c), M (n, c) -> Refinement(W (m, n), T (n, m), W M (m, c)).

    With the cosine distance W acts on the unit prototypes M / ||M||.
    """
    _check_pair(f, M, valid)
    basis = _basis(M, config, valid)
    return _refine(_query(f, basis, config), basis, config)


def refine_prototypes(f: jax.Array, M: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
                      valid: jax.Array | None = None) -> jax.Array:
    """Refined prototypes W* M: f (m, c), M (n, c) -> (m, c)."""
    return refine(f, M, config, valid).prototypes


def _refine_and_score(f: jax.Array, basis: _Basis, config: RefineConfig) -> tuple[jax.Array, jax.Array]:
    query = _query(f, basis, config)
    refinement = _refine(query, basis, config)
    return _scores(query, refinement, basis, config), refinement.prototypes


@partial(jax.jit, static_argnames=("config",))
def refined_patch_scores(f: jax.Array, M: jax.Array, config: RefineConfig = PATCHCORE_PLUS,
                         valid: jax.Array | None = None) -> jax.Array:
    """Patch scores s (m,) of one query f (m, c) against its refined prototypes (Eq. 6 or the residual);
    the image score is s.max()."""
    _check_pair(f, M, valid)
    return _refine_and_score(f, _basis(M, config, valid), config)[0]


def _batch_body(config: RefineConfig, with_prototypes: bool):
    def body(fs, prototypes, valid):
        basis = _basis(prototypes, config, valid)
        scores, refined = jax.vmap(lambda f: _refine_and_score(f, basis, config))(fs)
        return (scores, refined) if with_prototypes else scores

    return body


@partial(jax.jit, static_argnames=("config", "mesh", "return_prototypes"))
def refine_batch(fs: jax.Array, M: jax.Array, config: RefineConfig = PATCHCORE_PLUS, mesh: Mesh | None = None,
                 valid: jax.Array | None = None, return_prototypes: bool = False):
    """Refine and score a batch of queries: fs (B, m, c), M (n, c) -> scores (B, m) [, prototypes (B, m, c)].

    Vmapped over the batch and sharded over ``mesh``'s "data" axis (None: one device, same code); the batch
    is padded to a multiple of the shard count with copies of the first query and the padding dropped.
    """
    if fs.ndim != 3:
        raise ValueError(f"fs: expected a batch of query features (B, m, c), got shape {fs.shape}")
    _check_prototypes(M, fs.shape[2], valid)
    if mesh is None:
        mesh = device_mesh(1)
    elif not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: expected a jax.sharding.Mesh or None, got {type(mesh).__name__}")
    batch = fs.shape[0]
    total = padded_size(batch, mesh)
    if total > batch:
        fs = jnp.concatenate([fs, jnp.broadcast_to(fs[:1], (total - batch,) + fs.shape[1:])], axis=0)
    valid = jnp.ones((M.shape[0],), bool) if valid is None else valid.astype(bool)
    rows = PartitionSpec(AXIS)
    out_specs = (rows, rows) if return_prototypes else rows
    sharded = jax.shard_map(_batch_body(config, return_prototypes), mesh=mesh,
                            in_specs=(rows, PartitionSpec(), PartitionSpec()), out_specs=out_specs,
                            check_vma=False)
    out = sharded(fs.astype(jnp.float32), M.astype(jnp.float32), valid)
    return jax.tree.map(lambda x: x[:batch], out)


# --------------------------------------------------------------------------------------------- online


class OnlineMemory(NamedTuple):
    """Prototypes of the online variant: the original coreset base (n0, c), a ring buffer ring (K, c) of
    refined prototypes with its fill mask filled (K,) bool, and cursor () int32, the next ring row written."""

    base: jax.Array
    ring: jax.Array
    filled: jax.Array
    cursor: jax.Array


def online_memory(M: jax.Array, capacity: int) -> OnlineMemory:
    """An empty online memory over the coreset M (n0, c) with room for ``capacity`` refined prototypes."""
    if M.ndim != 2:
        raise ValueError(f"M: expected prototypes (n, c), got shape {M.shape}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity: expected an integer >= 1, got {capacity!r}")
    base = jnp.asarray(M, jnp.float32)
    return OnlineMemory(base, jnp.zeros((capacity, base.shape[1]), jnp.float32), jnp.zeros((capacity,), bool),
                        jnp.zeros((), jnp.int32))


@jax.jit
def online_update(state: OnlineMemory, refined: jax.Array) -> OnlineMemory:
    """Write refined prototypes (k, c), k <= capacity, into the ring at the cursor (oldest overwritten first)."""
    capacity, c = state.ring.shape
    if refined.ndim != 2 or refined.shape[1] != c or refined.shape[0] > capacity:
        raise ValueError(f"refined: expected (k, {c}) with k <= capacity {capacity}, got shape {refined.shape}")
    rows = (state.cursor + jnp.arange(refined.shape[0], dtype=jnp.int32)) % capacity
    return OnlineMemory(state.base, state.ring.at[rows].set(refined.astype(jnp.float32)),
                        state.filled.at[rows].set(True), (state.cursor + refined.shape[0]) % capacity)


def online_prototypes(state: OnlineMemory) -> tuple[jax.Array, jax.Array]:
    """The memory as prototypes: (n0 + K, c) rows and their validity mask (n0 + K,)."""
    prototypes = jnp.concatenate([state.base, state.ring], axis=0)
    valid = jnp.concatenate([jnp.ones((state.base.shape[0],), bool), state.filled])
    return prototypes, valid


@partial(jax.jit, static_argnames=("config",))
def refine_online(fs: jax.Array, state: OnlineMemory, config: RefineConfig = PATCHCORE_PLUS, arrived=None):
    """Online refinement in arrival order (a ``lax.scan``): each query fs[b] (m, c) is refined and scored
    against the current memory, then its m refined prototypes join the ring. ``arrived`` (B,) bool (None: all)
    marks real queries: a False row (a stream's padding) is scored but leaves the memory as it was.
    Returns (scores (B, m), state)."""
    if fs.ndim != 3 or fs.shape[2] != state.base.shape[1]:
        raise ValueError(f"fs: expected (B, m, {state.base.shape[1]}), got shape {fs.shape}")
    if fs.shape[1] > state.ring.shape[0]:
        raise ValueError(f"capacity: expected at least m = {fs.shape[1]} ring rows, got {state.ring.shape[0]}")
    arrived = jnp.ones((fs.shape[0],), bool) if arrived is None else jnp.asarray(arrived, bool)

    def step(memory, row):
        f, real = row
        prototypes, valid = online_prototypes(memory)
        scores, refined = _refine_and_score(f, _basis(prototypes, config, valid), config)
        advanced = online_update(memory, refined)
        return jax.tree.map(lambda new, old: jnp.where(real, new, old), advanced, memory), scores

    state, scores = jax.lax.scan(step, state, (fs.astype(jnp.float32), arrived))
    return scores, state
