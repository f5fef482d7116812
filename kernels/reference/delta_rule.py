"""The (gated) delta rule, S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t.

DeltaNet (Schlag et al., arXiv 2102.11174) with alpha = 1; Gated DeltaNet (Yang et al., arXiv 2412.06464)
with a per-token decay alpha_t = exp(log_alpha_t). S is d_k x d_v here (the papers write its transpose).

Chunked form (Yang et al., arXiv 2406.06484, WY representation / UT transform; with the decay as in
arXiv 2412.06464). Inside a chunk that starts from state S_0, with gamma_i = prod_{r<=i} alpha_r and
Gamma[i, j] = gamma_i / gamma_j (j <= i, never above 1), write S_i = alpha_i S_{i-1} + k_i u_i^T with the
"new values" u_i = beta_i (v_i - alpha_i S_{i-1}^T k_i). Unrolled, the u solve one unit lower triangular
system (the UT transform):

    (I + strict_lower(diag(beta) (Gamma o K K^T))) U = diag(beta) V - diag(beta gamma) K S_0
    O   = diag(gamma) Q S_0 + (lower(Q K^T) o Gamma) U
    S_C = gamma_C S_0 + (K o gamma_C / gamma)^T U

so a chunk costs O(C^2 d + C d^2) and the sequence O(T C d + T d^2). `log_alpha=None` is the plain delta rule.
"""

from __future__ import annotations

import torch


def delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k [B, H, Dk]; v [B, H, Dv]; beta, log_alpha [B, H]; state [B, H, Dk, Dv] or None (empty).

    Returns (o [B, H, Dv], new state): S = alpha S_prev, then S += beta k (v - S^T k)^T, o = S^T q.
    """
    if state is None:
        state = k.new_zeros(*k.shape, v.shape[-1])
    if log_alpha is not None:
        state = log_alpha.exp()[..., None, None] * state
    recalled = (k[..., None, :] @ state)[..., 0, :]  # S^T k: what the state holds under key k
    state = state + beta[..., None, None] * k[..., :, None] * (v - recalled)[..., None, :]
    return (q[..., None, :] @ state)[..., 0, :], state


def recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op token by token (the oracle): q, k [B, H, T, Dk]; v [B, H, T, Dv]; beta, log_alpha [B, H, T]."""
    b, h, t, dk = k.shape
    state = k.new_zeros(b, h, dk, v.shape[-1]) if initial_state is None else initial_state.to(k.dtype)
    outputs = []
    for i in range(t):
        gate = None if log_alpha is None else log_alpha[:, :, i]
        out, state = delta_rule_step(q[:, :, i], k[:, :, i], v[:, :, i], beta[:, :, i], gate, state)
        outputs.append(out)
    return torch.stack(outputs, dim=2) if outputs else v.new_zeros(b, h, 0, v.shape[-1]), state


def chunked_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: torch.Tensor | None = None,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, T, Dk]; v [B, H, T, Dv]; beta [B, H, T]; log_alpha [B, H, T] (<= 0) or None;
    initial_state [B, H, Dk, Dv] or None. Returns (o [B, H, T, Dv], final state [B, H, Dk, Dv])."""
    b, h, t, dk = k.shape
    dv = v.shape[-1]
    state = k.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(k.dtype)
    outputs = []
    for start in range(0, t, chunk_size):
        qc, kc, vc, bc = (x[:, :, start : start + chunk_size] for x in (q, k, v, beta))
        n = kc.shape[2]
        lower = torch.ones(n, n, dtype=torch.bool, device=k.device).tril()
        strict_lower = lower.tril(-1)
        # log gamma_i (cumulative decay from the chunk start) and Gamma[i, j] = gamma_i / gamma_j on j <= i;
        # masked before exp, so no ratio above 1 is ever formed
        log_gamma = kc.new_zeros(b, h, n) if log_alpha is None else log_alpha[:, :, start : start + n].cumsum(-1)
        gamma = log_gamma.exp()
        ratio = (log_gamma[..., :, None] - log_gamma[..., None, :]).masked_fill(~lower, float("-inf")).exp()

        # UT transform: solve (I + strict_lower(diag(beta) Gamma o K K^T)) [W, U_v] = diag(beta) [gamma K, V]
        system = torch.eye(n, dtype=k.dtype, device=k.device) + (
            bc[..., None] * (kc @ kc.transpose(-1, -2)) * ratio
        ).masked_fill(~strict_lower, 0.0)
        rhs = bc[..., None] * torch.cat([gamma[..., None] * kc, vc], dim=-1)
        solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        w, u_from_values = solved.split([dk, dv], dim=-1)
        u = u_from_values - w @ state  # the new values u_i

        scores = (qc @ kc.transpose(-1, -2)) * ratio  # zero above the diagonal (ratio is)
        outputs.append((gamma[..., None] * qc) @ state + scores @ u)
        gamma_last = gamma[..., -1:]
        state = gamma_last[..., None] * state + (kc * (gamma_last / gamma)[..., None]).transpose(-1, -2) @ u
    out = torch.cat(outputs, dim=2) if outputs else v.new_zeros(b, h, 0, dv)
    return out, state


def delta_rule_pattern(
    q: torch.Tensor,
    k: torch.Tensor,
    beta: torch.Tensor,
    log_alpha: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The effective matrix M [B, H, T, T] with o = M @ v for any v (zero initial state):
    M[t, s] = beta_s k_s^T P(s+1..t) q_t, P(s+1..t) = prod_{r=s+1..t} alpha_r (I - beta_r k_r k_r^T).

    The op is linear in v, so M is the chunked form applied to one-hot values v_s = e_s: O(T^2 (C + d)),
    no loop over t. Lower triangular exactly (every term above the diagonal is a product with zero).
    """
    b, h, t, _ = k.shape
    one_hot_values = torch.eye(t, dtype=k.dtype, device=k.device).expand(b, h, t, t)
    return chunked_delta_rule(q, k, one_hot_values, beta, log_alpha, chunk_size)[0]
