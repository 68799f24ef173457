"""
Adaptive Computation Module (ACM) and the rules that choose how many of its learners each token runs.

Mirrors `AdaptiveComputationMLP` and `DeepGumbelGatingNetwork` of the ACM reference code:
https://github.com/bartwojcik/adaptive_computation_modules/blob/6760ad64c52925144641e07d7f5627f99d0dbce3/architectures/acm.py
The authoritative semantics are docs/model-format.md ("ACM semantics") and docs/compute-budget.md.

This file is the reference the Swift engine is checked against, so it is written the plain way:
every learner runs on every token, and a per-token mask keeps the first k learners.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MODES = ('full', 'auto', 'cap', 'uniform')

# activations by their config.json names; 'gelu' is the exact (erf) form
ACTIVATIONS = {
    'identity': lambda x: x,
    'gelu': lambda x: F.gelu(x, approximate='none'),
    'relu': F.relu,
    'tanh': torch.tanh,
}
LEARNER_ACTIVATIONS = ('gelu', 'identity')

# floor(beta * N * T + CAP_EPS), so that a budget such as 0.3 is not lost to rounding
CAP_EPS = 1e-9
# halvings of the bisection that spreads a cap over the ACMs (split_budget)
BUDGET_BISECTIONS = 100


@dataclass
class GateConfig:
    depth: int = 1                  # linear layers, >= 1
    hidden_dim: int = 16            # units between them (unused when depth == 1)
    activation: str = 'identity'    # between the layers; none follows the last (its outputs are the logits)

    def __post_init__(self):
        if self.depth < 1 or self.hidden_dim < 1:
            raise ValueError(f'gate depth and hidden_dim must be >= 1, got {self.depth}, {self.hidden_dim}')
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'gate activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}')


@dataclass
class ACMConfig:
    num_learners: int               # N
    learner_dim: int                # h: hidden units of one learner
    activation: str = 'gelu'        # learner activation: 'gelu' or 'identity'
    min_choice: int = 0             # k_min: the smallest learner count the gate can choose
    hidden_bias: bool = True        # tensor b1
    output_bias: bool = False       # tensor b2, one vector per choice k = 0..N (cumulative)
    gate: GateConfig = field(default_factory=GateConfig)
    # the share of this ACM's learners the gates run in auto mode, on average (None: 1); a cap spreads its
    # budget over the ACMs in these proportions (docs/compute-budget.md)
    budget_share: float = None

    def __post_init__(self):
        if isinstance(self.gate, dict):
            self.gate = GateConfig(**self.gate)
        if self.budget_share is not None and (isinstance(self.budget_share, bool)
                                              or not isinstance(self.budget_share, (int, float))
                                              or not 0.0 <= self.budget_share <= 1.0):
            raise ValueError(f'budget_share {self.budget_share} is not in [0, 1]')
        if self.num_learners < 1 or self.learner_dim < 1:
            raise ValueError(f'num_learners and learner_dim must be >= 1, got {self.num_learners}, {self.learner_dim}')
        if not 0 <= self.min_choice <= self.num_learners:
            raise ValueError(f'min_choice {self.min_choice} is not in [0, {self.num_learners}]')
        if self.activation not in LEARNER_ACTIVATIONS:
            raise ValueError(f'learner activation {self.activation!r} is not one of {LEARNER_ACTIVATIONS}')

    @property
    def num_choices(self):
        """Gate outputs: one logit per k in k_min..N."""
        return self.num_learners + 1 - self.min_choice

    def learner_flops(self, d_in, d_out):
        """F_l of docs/compute-budget.md: one learner's multiply-adds per token, counted as 2 each."""
        return 2 * self.learner_dim * (d_in + d_out)


# -----------------------------------------------------------------------------
# choice rules (docs/compute-budget.md), as plain functions of the gate logits

def choose_auto(logits, min_choice):
    """The gate's choice: k = k_min + argmax(z); exact ties go to the smaller k.
    logits (..., C) -> k (...) int64."""
    is_max = logits == logits.amax(dim=-1, keepdim=True)
    # index of the first maximum = number of leading entries that are not a maximum
    first = (~is_max).long().cumprod(dim=-1).sum(dim=-1)
    return first + min_choice


def cap_total(beta, num_learners, seq_len, min_choice):
    """C = max(k_min * T, floor(beta * N * T + 1e-9)): learners a sequence may run at one ACM."""
    return max(min_choice * seq_len, math.floor(beta * num_learners * seq_len + CAP_EPS))


def survival(logits):
    """S[t, c] = P(K_t >= k_min + c) = sum_{c' >= c} softmax(z_t)[c'], in float64.
    The suffix sum runs from the last choice down, so S never grows with c.
    logits (T, C) -> (T, C) float64."""
    p = torch.softmax(logits.double(), dim=-1)  # (T, C)
    return p.flip(-1).cumsum(dim=-1).flip(-1)  # (T, C)


def cap_units(logits, k_auto, min_choice):
    """The learner units (S_t(j), t, j) of one sequence, k_min < j <= k_auto[t], in keep order:
    smaller j first (the water level), then S from high to low, then smaller token index t.
    logits (T, C), k_auto (T,) -> list of (float, int, int)."""
    S = survival(logits)  # (T, C)
    units = [(S[t, j - min_choice].item(), t, j)
             for t in range(logits.shape[0])
             for j in range(min_choice + 1, int(k_auto[t]) + 1)]
    units.sort(key=lambda u: (u[2], -u[0], u[1]))
    return units


def trim_to_cap(logits, k_auto, min_choice, num_learners, beta):
    """Cap beta for one sequence at one ACM: keep the auto choices if they fit in C, else keep the
    C - k_min*T units in cap_units order. logits (T, C), k_auto (T,) -> k (T,) int64."""
    return trim_to_units(logits, k_auto, min_choice, cap_total(beta, num_learners, logits.shape[0], min_choice))


def trim_to_units(logits, k_auto, min_choice, C):
    """trim_to_cap with the cap given as C >= k_min*T learners. logits (T, C), k_auto (T,) -> k (T,) int64."""
    T = logits.shape[0]
    if int(k_auto.sum()) <= C:
        return k_auto.clone()
    kept = cap_units(logits, k_auto, min_choice)[:C - min_choice * T]
    k = torch.full((T,), min_choice, dtype=torch.long)
    for _, t, _ in kept:
        k[t] += 1
    return k


def trim_served_first(logits, k_auto, min_choice, num_learners, beta, first):
    """Cap beta for one sequence whose first `first` tokens are served before the rest (a Whisper window's audio
    before its padding; docs/compute-budget.md, "Audio before padding"): they share C less the rest's k_min floor
    by trim_to_cap's rule, then the rest share what they left. first 0 or T: trim_to_cap.
    logits (T, C), k_auto (T,) -> k (T,) int64."""
    T = logits.shape[0]
    if not 0 < first < T:
        return trim_to_cap(logits, k_auto, min_choice, num_learners, beta)
    C = cap_total(beta, num_learners, T, min_choice)
    head = trim_to_units(logits[:first], k_auto[:first], min_choice, C - min_choice * (T - first))
    tail = trim_to_units(logits[first:], k_auto[first:], min_choice, C - int(head.sum()))
    return torch.cat([head, tail])


def cap_choices_batched(logits, k, min_choice, num_learners, beta):
    """The cap rule of trim_to_cap for a whole batch at once (for training): the same units kept, in the
    same order (j low to high, then S high to low, then token), vectorised. logits (B, T, C), k (B, T)
    proposed counts, beta [B] -> k (B, T) int64."""
    B, T, C = logits.shape
    N = num_learners
    S = survival(logits.reshape(B * T, C)).reshape(B, T, C)  # (B, T, C) float64, S[..., c] = P(K >= k_min + c)
    j = torch.arange(min_choice, N + 1, device=logits.device)  # (C,): k of each column
    valid = (j > min_choice) & (j <= k.unsqueeze(-1))  # (B, T, C): units above the floor, up to k
    score = torch.where(valid, S, torch.full_like(S, -1.0)).reshape(B, T * C)  # (B, T*C) in (t, j) order
    by_s = torch.sort(score, dim=1, descending=True, stable=True).indices  # S high to low, ties in (t, j) order
    level = torch.where(valid, j.expand(B, T, C), torch.full_like(k, N + 1).unsqueeze(-1).expand(B, T, C))
    level = level.reshape(B, T * C).gather(1, by_s)  # (B, T*C): j of each unit in S order; invalid last
    order = by_s.gather(1, torch.sort(level, dim=1, stable=True).indices)  # j first, then S, then (t, j)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(T * C, device=logits.device).expand(B, -1))  # (B, T*C)
    beta = torch.as_tensor(beta, dtype=torch.float64).reshape(-1).expand(B)
    cap = torch.maximum(torch.full((B,), min_choice * T, dtype=torch.float64),
                        torch.floor(beta * N * T + CAP_EPS))  # (B,)
    keep_n = (cap - min_choice * T).long().unsqueeze(1)  # (B, 1)
    kept = (rank < keep_n) & valid.reshape(B, T * C)  # (B, T*C)
    trimmed = min_choice + kept.reshape(B, T, C).sum(dim=-1)  # (B, T)
    over = k.sum(dim=1) > cap  # (B,): only sequences over their cap are trimmed
    return torch.where(over.unsqueeze(1), trimmed, k)


def split_budget(beta, layers):
    """A sequence's cap beta -> one budget beta_l per ACM (docs/compute-budget.md, "Spreading the budget").
    layers: {path: (share w_l or None, k_min/N, cost N_l*F_l)}. beta_l = min(1, max(k_min/N, s*w_l)), with
    the largest s (found by bisection, 100 halvings) at which sum_l beta_l*cost_l <= beta*sum_l cost_l.
    The sums run over the paths in sorted order so that the engine computes the same floats.
    -> {path: beta_l}."""
    if not layers:
        return {}
    paths = sorted(layers)
    w = [1.0 if layers[p][0] is None else float(layers[p][0]) for p in paths]
    lo = [float(layers[p][1]) for p in paths]
    cost = [float(layers[p][2]) for p in paths]
    total = 0.0
    for c in cost:
        total += c

    def spent(s):
        used = 0.0
        for wl, ll, cl in zip(w, lo, cost):
            used += min(1.0, max(ll, s * wl)) * cl
        return used / total

    hi = 0.0
    for wl in w:
        if wl > 0.0:
            hi = max(hi, 1.0 / wl)
    if spent(hi) <= beta:
        s = hi
    else:
        a, b = 0.0, hi
        for _ in range(BUDGET_BISECTIONS):
            mid = (a + b) / 2
            if spent(mid) > beta:
                b = mid
            else:
                a = mid
        s = a
    return {p: min(1.0, max(ll, s * wl)) for p, wl, ll in zip(paths, w, lo)}


def budget_layers(acm, d):
    """split_budget's layers for ACMs of width d in and out: {path: (budget_share, k_min/N, N*F_l)}, from a
    model's {path: ACMConfig}."""
    return {p: (c.budget_share, c.min_choice / c.num_learners, c.num_learners * c.learner_flops(d, d))
            for p, c in acm.items()}


def uniform_k(fraction, num_learners):
    """The learner count whose compute fraction is `fraction` (a multiple of 1/N): the static baseline of a cap."""
    k = round(fraction * num_learners)
    if abs(k - fraction * num_learners) > 1e-9:
        raise ValueError(f'a uniform fraction of {fraction} is not a whole number of {num_learners} learners')
    return k


def sequence_betas(beta, batch_size):
    """A float or a [B] tensor of per-sequence budgets -> list of B floats in (0, 1]."""
    if isinstance(beta, torch.Tensor):
        betas = [float(b) for b in beta.reshape(-1)]
        if len(betas) != batch_size:
            raise ValueError(f'cap needs one beta per sequence: got {len(betas)} for {batch_size} sequences')
    elif isinstance(beta, (int, float)) and not isinstance(beta, bool):
        betas = [float(beta)] * batch_size
    else:
        raise ValueError(f'cap needs beta, a float or a [B] tensor, got {beta!r}')
    for b in betas:
        if not 0.0 < b <= 1.0:
            raise ValueError(f'cap beta must be in (0, 1], got {b}')
    return betas


def check_mode(mode, beta=None, k=None):
    if mode not in MODES:
        raise ValueError(f'mode {mode!r} is not one of {MODES}')
    if mode == 'cap' and beta is None:
        raise ValueError('mode cap needs beta')
    if mode == 'uniform' and not isinstance(k, int):
        raise ValueError(f'mode uniform needs an integer k, got {k!r}')


def choose(logits, mode, cfg, batch_size, seq_len, beta=None, k=None, first=None):
    """Learner counts k [B, T] for a mode. logits [B, T, C] are only read by auto and cap. first: under a cap, how
    many leading tokens of the one sequence (B = 1) are served before the rest (trim_served_first)."""
    check_mode(mode, beta, k)
    B, T, N, k_min = batch_size, seq_len, cfg.num_learners, cfg.min_choice
    if mode == 'full':
        return torch.full((B, T), N, dtype=torch.long)
    if mode == 'uniform':
        return torch.full((B, T), min(max(k, k_min), N), dtype=torch.long)
    k_auto = choose_auto(logits, k_min)  # (B, T)
    if mode == 'auto':
        return k_auto
    if first is not None:
        assert B == 1, 'tokens served first are for one sequence'
        return trim_served_first(logits[0], k_auto[0], k_min, N, sequence_betas(beta, 1)[0], first)[None]
    betas = torch.tensor(sequence_betas(beta, B), dtype=torch.float64)
    # trim_to_cap, vectorised over the batch (tested equal to it in tools/tests/test_acm.py)
    return cap_choices_batched(logits, k_auto, k_min, N, betas)  # (B, T)


# -----------------------------------------------------------------------------
# modules

class GatingNetwork(nn.Module):
    """`depth` linear layers; `net` holds only the Linears so their state-dict indices are 0, 1, 2, ...
    and the activation is applied between them in forward."""

    def __init__(self, d_in, num_choices, cfg: GateConfig):
        super().__init__()
        dims = [d_in] + [cfg.hidden_dim] * (cfg.depth - 1) + [num_choices]
        self.net = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x):
        for j, layer in enumerate(self.net):
            if j > 0:
                x = self.act(x)
            x = layer(x)
        return x  # logits, (B, T, C)


class ACM(nn.Module):
    """N learners of h hidden units, d_in -> d_out, and a gate over the choices k_min..N."""

    def __init__(self, d_in, d_out, cfg: ACMConfig):
        super().__init__()
        self.cfg = cfg
        self.d_in, self.d_out = d_in, d_out
        N, h = cfg.num_learners, cfg.learner_dim
        self.w1 = nn.Parameter(torch.empty(d_in, N * h))  # [in, out], unlike nn.Linear
        self.b1 = nn.Parameter(torch.empty(N * h)) if cfg.hidden_bias else None
        self.w2 = nn.Parameter(torch.empty(N * h, d_out))
        self.b2 = nn.Parameter(torch.empty((N + 1) * d_out)) if cfg.output_bias else None
        self.act = ACTIVATIONS[cfg.activation]
        self.gating_network = GatingNetwork(d_in, cfg.num_choices, cfg.gate)
        self.reset_parameters()

    def reset_parameters(self):
        # as the reference code: kaiming-uniform weights; b1 uniform in +-1/sqrt(h), b2 in +-1/sqrt(d_out)
        nn.init.kaiming_uniform_(self.w1, a=5 ** 0.5)
        nn.init.kaiming_uniform_(self.w2, a=5 ** 0.5)
        if self.b1 is not None:
            bound = 1 / self.cfg.learner_dim ** 0.5
            nn.init.uniform_(self.b1, -bound, bound)
        if self.b2 is not None:
            bound = 1 / self.d_out ** 0.5
            nn.init.uniform_(self.b2, -bound, bound)

    def forward(self, x, mode='auto', beta=None, k=None, tau=None, first=None):
        """x (B, T, d_in) -> out (B, T, d_out), k (B, T) int64.
        mode: 'full', 'auto', 'cap' (beta: float or [B] tensor), 'uniform' (k: int),
        or 'gumbel' for training (see forward_gumbel; then the second value is the gate's one-hot).
        first: under a cap (or a capped 'gumbel'), how many leading tokens of the one sequence are served before
        the rest (trim_served_first)."""
        if mode == 'gumbel':
            return self.forward_gumbel(x, tau=tau, beta=beta, first=first)
        B, T, _ = x.shape
        logits = self.gating_network(x) if mode in ('auto', 'cap') else None  # (B, T, C)
        k = choose(logits, mode, self.cfg, B, T, beta=beta, k=k, first=first)  # (B, T)
        return self.forward_k(x, k), k

    def prefix_outputs(self, x):
        """out_k(x) for every k = k_min..N at once. x (B, T, d_in) -> (B, T, C, d_out)."""
        B, T, _ = x.shape
        N, h = self.cfg.num_learners, self.cfg.learner_dim
        hid = x @ self.w1  # (B, T, N*h)
        if self.b1 is not None:
            hid = hid + self.b1
        hid = self.act(hid).view(B, T, N, h)  # (B, T, N, h)
        y = torch.einsum('btnh,nho->btno', hid, self.w2.view(N, h, self.d_out))  # (B, T, N, d_out)
        outs = torch.cat([torch.zeros_like(y[:, :, :1]), y.cumsum(dim=2)], dim=2)  # (B, T, N+1, d_out)
        if self.b2 is not None:
            outs = outs + self.b2.view(N + 1, self.d_out).cumsum(dim=0)  # (N+1, d_out) broadcast
        return outs[:, :, self.cfg.min_choice:]  # (B, T, C, d_out)

    def forward_gumbel(self, x, tau, beta=None, first=None):
        """Training forward: k sampled with straight-through Gumbel-softmax (temperature tau), trimmed by
        per-sequence caps beta ([B] tensor, or None) with the inference rule, and the output mixed from
        the prefix outputs by the straight-through one-hot, so the task loss reaches the gate (the
        reference code's gated forward gives the gate no gradient). first: for one sequence (B = 1), how many
        of its leading tokens the cap serves before the rest (trim_served_first).
        -> out (B, T, d_out), g (B, T, C) one-hot with gradients."""
        logits = self.gating_network(x)  # (B, T, C)
        soft = F.gumbel_softmax(logits, tau=tau, hard=False)  # (B, T, C)
        c = soft.argmax(dim=-1)  # (B, T): sampled choice index
        if beta is not None and first is not None:
            assert x.shape[0] == 1, 'tokens served first are for one sequence'
            k_min = self.cfg.min_choice
            c = trim_served_first(logits[0].detach(), c[0] + k_min, k_min, self.cfg.num_learners,
                                  float(torch.as_tensor(beta).reshape(-1)[0]), first)[None] - k_min
        elif beta is not None:
            c = cap_choices_batched(logits.detach(), c + self.cfg.min_choice, self.cfg.min_choice,
                                    self.cfg.num_learners, beta) - self.cfg.min_choice
        hard = F.one_hot(c, logits.shape[-1]).to(soft.dtype)  # (B, T, C)
        g = hard - soft.detach() + soft  # straight-through: forward hard, backward soft
        out = (g.unsqueeze(-1) * self.prefix_outputs(x)).sum(dim=2)  # (B, T, d_out)
        return out, g

    def forward_k(self, x, k):
        """out_k(x) = sum_{n<k} y_n(x) + sum_{j<=k} b2[j], for a given k (B, T) per token."""
        B, T, _ = x.shape
        N, h = self.cfg.num_learners, self.cfg.learner_dim
        hid = x @ self.w1  # (B, T, d_in) x (d_in, N*h) -> (B, T, N*h)
        if self.b1 is not None:
            hid = hid + self.b1
        hid = self.act(hid)
        hid = hid.view(B, T, N, h)  # (B, T, N, h)
        w2 = self.w2.view(N, h, self.d_out)  # (N, h, d_out)
        y = torch.einsum('btnh,nho->btno', hid, w2)  # (B, T, N, d_out): every learner's output
        keep = torch.arange(N, device=x.device) < k.unsqueeze(-1)  # (B, T, N): learner n runs iff n < k
        out = torch.where(keep.unsqueeze(-1), y, torch.zeros_like(y)).sum(dim=2)  # (B, T, d_out)
        if self.b2 is not None:
            b2 = self.b2.view(N + 1, self.d_out).cumsum(dim=0)  # (N+1, d_out): row k = sum_{j<=k} b2[j]
            out = out + b2[k]  # (B, T, d_out)
        return out

    def extra_repr(self):
        c = self.cfg
        return (f'd_in={self.d_in}, d_out={self.d_out}, N={c.num_learners}, h={c.learner_dim}, '
                f'act={c.activation}, k_min={c.min_choice}')
