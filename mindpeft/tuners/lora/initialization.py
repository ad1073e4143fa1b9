"""LoRA initialisations beyond the random ones, as HF peft computes them, in numpy:

* PiSSA (Meng et al., 2024): ``A = sqrt(S_r) V_r^T``, ``B = U_r sqrt(S_r)`` from the base weight's top ``r`` singular
  triplets (each divided by the scaling), and the base weight keeps the residual ``W - s B A``; ``pissa_niter_<n>``
  takes the triplets from a randomized SVD with ``n`` subspace iterations (Halko et al., 2009, algorithm 5.1, the
  one ``torch.svd_lowrank`` runs) instead of a full one.
* OLoRA (Büyükakyüz, 2024): ``B = Q_r``, ``A = R_r`` from the QR decomposition of the base weight, which keeps
  ``W - s B A``.
* orthogonal: ``A`` and ``B`` built from complementary halves of a random orthogonal matrix, so ``B A = 0``.

Weights are in (out, in) layout and decomposed in float64. A PiSSA/OLoRA adapter only works on the residual base
weight; :func:`lora_from_mutated_adapter` turns it, once trained, into a plain LoRA adapter of twice the rank for the
original weight (HF peft's ``subtract_mutated_init``).
"""
import re

import numpy as np

from ...config import describe

_PISSA_NITER = re.compile(r"pissa_niter_(\d+)")
_NAMED_INITS = ("gaussian", "pissa", "olora", "orthogonal", "loftq")


def check_init_lora_weights(init):
    """Raise ``ValueError`` naming ``init_lora_weights`` unless ``init`` is an initialisation mindpeft has."""
    if isinstance(init, bool) or (isinstance(init, str) and (init in _NAMED_INITS or _PISSA_NITER.fullmatch(init))):
        return
    if isinstance(init, str) and init.startswith("pissa"):
        raise ValueError(f"init_lora_weights should be 'pissa' or 'pissa_niter_[number of iters]', got {init} "
                         "instead.")
    raise ValueError(f"init_lora_weights={describe(init)} is not supported by mindpeft; choose True, False, "
                     "'gaussian', 'pissa', 'pissa_niter_<n>', 'olora', 'orthogonal' or 'loftq'")


def mutates_base_weight(init):
    """Whether the initialisation ``init`` moves part of the base weight into the adapter (PiSSA, OLoRA)."""
    return isinstance(init, str) and (init.startswith("pissa") or init == "olora")


def _check_rank(weight, r, method):
    if r > min(weight.shape):
        raise ValueError(f"{method} initialisation needs r <= min(out_features, in_features) = {min(weight.shape)}, "
                         f"got r={r}")


def randomized_svd(matrix, rank, niter, rng=np.random):
    """``(U, S, V)`` with ``matrix ~ U diag(S) V^T`` of ``rank`` components, from a random subspace refined by
    ``niter`` power iterations (``torch.svd_lowrank(matrix, q=rank, niter=niter)``'s algorithm)."""
    wide = matrix.shape[0] < matrix.shape[1]
    a = matrix.T if wide else matrix
    q = np.linalg.qr(a @ rng.standard_normal((a.shape[1], rank)))[0]
    for _ in range(niter):
        q = np.linalg.qr(a.T @ q)[0]
        q = np.linalg.qr(a @ q)[0]
    u, s, vh = np.linalg.svd(q.T @ a, full_matrices=False)
    u, v = q @ u, vh.T
    return (v, s, u) if wide else (u, s, v)


def pissa_factors(weight, r, scaling, niter=None, rng=np.random):
    """``(A, B, residual)`` of PiSSA for ``weight`` (out, in): full SVD, or randomized with ``niter`` iterations."""
    _check_rank(weight, r, "PiSSA")
    weight = weight.astype(np.float64)
    if niter is None:
        u, s, vh = np.linalg.svd(weight, full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        u, s, v = randomized_svd(weight, r, niter, rng)
        vh = v.T
    root = np.sqrt(s / scaling)
    a, b = root[:, None] * vh, u * root[None, :]
    return a, b, weight - scaling * (b @ a)


def olora_factors(weight, r, scaling):
    """``(A, B, residual)`` of OLoRA for ``weight`` (out, in): ``B``, ``A`` the first ``r`` columns / rows of its
    reduced QR decomposition."""
    _check_rank(weight, r, "OLoRA")
    weight = weight.astype(np.float64)
    q, upper = np.linalg.qr(weight)
    a, b = upper[:r], q[:, :r]
    return a, b, weight - scaling * (b @ a)


def orthogonal_factors(in_features, out_features, r, rng=np.random):
    """``(A, B)``: ``A^T`` spans the odd rows of a random orthogonal r x r matrix, ``B`` the even ones, so
    ``B A = 0``; both scaled by 1/10 (HF peft's orthogonal initialisation)."""
    if r % 2 != 0:
        raise ValueError(f"Orthogonal initialization requires the LoRA rank to be even, got {r} instead.")
    q = np.linalg.qr(rng.standard_normal((r, r)))[0]
    a = (rng.standard_normal((in_features, r // 2)) @ q[0::2]).T / 10.0
    b = rng.standard_normal((r // 2, out_features)).T @ q[1::2] / 10.0
    return a, b


def init_from_base_weight(init, weight, r, scaling):
    """``(A, B, residual)`` for a PiSSA / OLoRA ``init`` of ``weight`` (out, in)."""
    if init == "olora":
        return olora_factors(weight, r, scaling)
    niter = _PISSA_NITER.fullmatch(init)
    return pissa_factors(weight, r, scaling, niter=int(niter.group(1)) if niter else None)


def lora_from_mutated_adapter(trained, initial):
    """The plain LoRA state dict for the original base weight of a trained PiSSA/OLoRA adapter: with
    ``W = W_res + s B0 A0`` at the start and ``W_res + s B A`` after training, ``[A; A0]`` and ``[B, -B0]`` (rank 2r)
    give the update ``s (B A - B0 A0)``. ``trained`` and ``initial`` map the same keys to arrays; like HF peft, only
    the ``lora_A``/``lora_B`` factors are kept."""
    out = {}
    for key, value in trained.items():
        if "lora_A" in key:
            out[key] = np.concatenate([value, initial[key]], axis=0)
        elif "lora_B" in key:
            out[key] = np.concatenate([value, -initial[key]], axis=1)
    return out


def converted_config_values(config):
    """The ``adapter_config.json`` values of the plain LoRA adapter :func:`lora_from_mutated_adapter` makes: rank
    doubled, alpha doubled (or times sqrt(2) with rsLoRA) so the scaling stays, ``init_lora_weights=True``."""
    return {"init_lora_weights": True, "r": 2 * config.r,
            "lora_alpha": config.lora_alpha * (2 ** 0.5 if config.use_rslora else 2),
            "rank_pattern": {k: 2 * v for k, v in (config.rank_pattern or {}).items()},
            "alpha_pattern": {k: 2 * v for k, v in (config.alpha_pattern or {}).items()}}
