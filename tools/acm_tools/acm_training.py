"""
The ACMize phases of Wójcik et al. (AAAI 2025) for any model: what acmize.py (the ViT) and whisper_acmize.py
(Whisper) share. A model gives its ACMs ({path: ACM}) and, per training step, the teacher module's input and
output at each of them ({path: (input (B, T, d_in), output (B, T, d_out))}); these functions do the rest.

  0. init      init_mlp / init_projection: learners from the dense module's weights.
  1. distill   distill: every prefix k of learners regresses the teacher module's output (MSE).
  2. gates     train_gates: each gate learns the smallest k whose error ratio e_k / e_{k+1} is below
               tau_error (N if none), by cross-entropy, learners frozen.
  3. e2e       the model's own loop, with these losses from the gates' straight-through one-hots:
               gate_terms (each sequence's compute fraction and choice entropy), diversity, distill_logits,
               and track_budget_shares (each ACM's budget_share from the uncapped batches).

Reference: github.com/bartwojcik/adaptive_computation_modules, methods/acm/.
"""
import logging
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm


def cosine_lr(opt, base_lr, step, total):
    """Cosine decay from base_lr to zero over total steps."""
    for group in opt.param_groups:
        group['lr'] = base_lr * 0.5 * (1 + math.cos(math.pi * step / total))


def descend(opt, losses):
    """One optimiser step on the mean of the per-ACM losses; returns that mean."""
    loss = torch.stack(losses).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def learner_parameters(acms):
    return [p for m in acms.values() for n, p in m.named_parameters() if not n.startswith('gating_network')]


def gate_parameters(acms):
    return [p for m in acms.values() for p in m.gating_network.parameters()]


# -----------------------------------------------------------------------------
# phase 0

@torch.no_grad()
def init_mlp(acm, fc1_weight, fc1_bias, fc2_weight, fc2_bias, x):
    """An MLP's hidden units, most important first (mean |activation| on x (..., d) times the norm of its fc2
    column), cut into the N learners; the output bias from k = 1 on (k_min = 0). With all N learners the ACM
    is the MLP (when N·h is its width)."""
    N, h = acm.cfg.num_learners, acm.cfg.learner_dim
    hidden = F.gelu(x @ fc1_weight.T + fc1_bias).flatten(0, -2)  # (tokens, D)
    importance = hidden.abs().mean(dim=0) * fc2_weight.norm(dim=0)  # (D,)
    order = importance.argsort(descending=True)[:N * h]
    acm.w1.copy_(fc1_weight[order].T)  # (d, N*h)
    acm.b1.copy_(fc1_bias[order])
    acm.w2.copy_(fc2_weight[:, order].T)  # (N*h, d)
    acm.b2.zero_()
    acm.b2.view(N + 1, -1)[1].copy_(fc2_bias)


@torch.no_grad()
def init_projection(acm, weight, bias):
    """A projection y = x Wᵀ + b, W ~ U S Vᵀ: learner n takes singular directions n·h..(n+1)·h; the bias from
    k_min on, since every token runs at least k_min learners."""
    N, h = acm.cfg.num_learners, acm.cfg.learner_dim
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)  # W (out, in)
    r = N * h
    root = S[:r].sqrt()
    acm.w1.copy_(Vh[:r].T * root)  # (in, r)
    acm.w2.copy_((U[:, :r] * root).T)  # (r, out)
    acm.b2.zero_()
    acm.b2.view(N + 1, -1)[acm.cfg.min_choice].copy_(bias)


# -----------------------------------------------------------------------------
# phases 1 and 2

def distill(acms, captured, total, lr):
    """Phase 1: module-wise distillation, AdamW with cosine decay. captured: an iterable of total
    {path: (input, teacher output)} batches. -> the last batch's mean MSE."""
    opt = torch.optim.AdamW(learner_parameters(acms), lr=lr, weight_decay=0.0)
    loss = torch.tensor(0.0)
    for step, saved in enumerate(tqdm(captured, total=total, desc='phase 1: distill', leave=False)):
        cosine_lr(opt, lr, step, total)
        losses = []
        for path, m in acms.items():
            inp, target = saved[path]
            outs = m.prefix_outputs(inp)  # (B, T, C, d)
            losses.append(((outs - target.unsqueeze(2)) ** 2).mean())
        loss = descend(opt, losses)
    logging.info(f'phase 1: final distillation MSE {loss.item():.5f}')
    return loss.item()


def gate_labels(outs, target, tau_error):
    """The smallest k (>= k_min) whose error ratio e_k / e_{k+1} is below tau_error; N if there is none.
    outs (B, T, C, d), target (B, T, d) -> choice index c = k - k_min, (B, T)."""
    errors = (outs - target.unsqueeze(2)).norm(dim=-1)  # (B, T, C)
    ratio = errors[..., :-1] / errors[..., 1:].clamp_min(1e-12)  # (B, T, C-1): e_k / e_{k+1}
    small = ratio < tau_error
    C = outs.shape[2]
    return torch.where(small.any(-1), small.float().argmax(-1),
                       torch.full_like(small[..., 0], C - 1, dtype=torch.long))  # (B, T)


def train_gates(acms, captured, total, lr, tau_error):
    """Phase 2: gate pre-training on error-ratio labels (cross-entropy), learners frozen. captured: as for
    distill. -> the last batch's mean cross-entropy; logs that batch's label counts."""
    opt = torch.optim.AdamW(gate_parameters(acms), lr=lr, weight_decay=0.0)
    loss = torch.tensor(0.0)
    histogram = {}
    for step, saved in enumerate(tqdm(captured, total=total, desc='phase 2: gates', leave=False)):
        losses = []
        for path, m in acms.items():
            inp, target = saved[path]
            with torch.no_grad():
                labels = gate_labels(m.prefix_outputs(inp), target, tau_error)  # (B, T)
            logits = m.gating_network(inp)  # (B, T, C)
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels.flatten()))
            if step == total - 1:
                histogram[path] = torch.bincount(labels.flatten() + m.cfg.min_choice,
                                                 minlength=m.cfg.num_learners + 1).tolist()
        loss = descend(opt, losses)
    logging.info(f'phase 2: final gate cross-entropy {loss.item():.4f}; last batch label counts (k = 0..N) {histogram}')
    return loss.item()


# -----------------------------------------------------------------------------
# phase 3's losses

def gate_terms(gates, cfgs, flops):
    """Each sequence's compute fraction and choice entropy from the gates' straight-through one-hots, with
    gradients to the gates. gates {path: (B, T_path, C)}, cfgs {path: ACMConfig}, flops {path: F_l} ->
    fraction (B,) = sum_l sum_t k_t F_l / sum_l T_l N_l F_l; entropy (B,): the mean over the ACMs of the
    entropy of the sequence's distribution over choices, normalised to [0, 1]."""
    executed, possible, entropies = 0, 0.0, []
    for path, gt in gates.items():
        c = cfgs[path]
        k = torch.arange(c.min_choice, c.num_learners + 1, dtype=gt.dtype)  # (C,)
        executed = executed + (gt * k).sum(-1).sum(-1) * flops[path]  # (B,)
        possible += gt.shape[1] * c.num_learners * flops[path]
        dist = gt.double().mean(dim=1)  # (B, C)
        if gt.shape[-1] > 1:
            entropies.append(-(dist * (dist + 1e-20).log()).sum(-1) / math.log(gt.shape[-1]))
        else:
            entropies.append(dist.sum(-1) * 0)
    return executed / possible, torch.stack(entropies).mean(0).float()


def diversity(fraction):
    """Minus the mean gap between the sequences' compute fractions (B,): lower when they differ."""
    return -(fraction.unsqueeze(0) - fraction.unsqueeze(1)).abs().mean() * 2


def distill_logits(logits, teacher_logits, temperature):
    """KL(teacher ‖ student) of (rows, classes) logits at a temperature, times its square."""
    T = temperature
    return F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(teacher_logits / T, -1),
                    reduction='batchmean', log_target=True) * T ** 2


@torch.no_grad()
def track_budget_shares(gates, cfgs, momentum):
    """Move each ACM's budget_share towards the share of its learners its gates ran in this uncapped batch,
    which the caps spread their budgets by. gates {path: (B, T, C)}."""
    for path, gt in gates.items():
        c = cfgs[path]
        k = torch.arange(c.min_choice, c.num_learners + 1, dtype=gt.dtype)
        share = (gt * k).sum(-1).mean().item() / c.num_learners
        c.budget_share = min(1.0, momentum * c.budget_share + (1 - momentum) * share)
