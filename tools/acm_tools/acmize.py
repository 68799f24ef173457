"""
ACMize a dense ViT: replace its MLPs and attention projections by Adaptive Computation Modules and train
them with the three phases of Wójcik et al. (AAAI 2025), plus budget robustness, so that one model
serves every compute budget.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.acmize --teacher build/fashion/teacher \\
        --out build/fashion/acm [--no-robust] [--targets mlp,q_proj,k_proj,v_proj,o_proj] [--num-learners 4]

Phases (reference: github.com/bartwojcik/adaptive_computation_modules, methods/acm/):
  0. init      learners start from the teacher's weights: an MLP's hidden units ordered by importance and
               cut into N slices; a projection's SVD cut into N rank-h pieces. With all N learners an MLP
               is exactly the teacher's.
  1. distill   every prefix k of learners regresses the teacher module's output (MSE), on the teacher
               module's inputs captured with hooks.
  2. gates     each gate learns the label "smallest k whose error ratio e_k/e_{k+1} is below tau_error"
               (N if none), by cross-entropy.
  3. e2e       the whole model: cross-entropy + distillation from the teacher's logits
               + cost_weight·|compute fraction − beta_target| + entropy and diversity losses, with
               straight-through Gumbel-softmax so that the task loss reaches the gates. With --robust
               (default) half the batches also run under per-image caps beta ~ U[0.2, 1], applied with
               the engine's own allocation rule (docs/compute-budget.md).
Writes <out>/config.json + model.safetensors, <out>/metrics.json and <out>/train.log.
"""
import argparse
import json
import logging
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import fashion
from .acm import ACMConfig, GateConfig
from .modelio import load_model, save_model
from .train_teacher import accuracy, augment, start_run
from .vit import PROJECTIONS, ViTConfig, VisionTransformer, compute_fraction, layer_path

# -----------------------------------------------------------------------------
# config
out = 'build/fashion/acm'
seed = 0
targets = 'mlp,q_proj,k_proj,v_proj,o_proj'  # which modules become ACMs, in every layer
num_learners = 4  # N; MLP learners have d_ff/N hidden units, projections about d/8 (the paper's)
gate = dict(depth=3, hidden_dim=16, activation='identity')  # the paper's gate
batch_size = 128
phase1_epochs, phase1_lr = 2, 1e-3
phase2_epochs, phase2_lr = 1, 1e-3
phase3_epochs, phase3_lr = 4, 2e-4
tau_error = 1.2  # phase 2's error-ratio threshold
gumbel_tau = 0.8
beta_target = 0.6  # the compute fraction the gates aim for in auto mode
cost_weight, entropy_weight, diversity_weight = 0.1, 0.05, 0.05
distill_weight, distill_temperature = 1.0, 1.0  # KL to the teacher's logits in phase 3
robust_fraction = 0.5  # share of phase-3 batches run under random caps (with --robust)
robust_range = (0.2, 1.0)
share_momentum = 0.95  # phase 3 tracks each ACM's budget_share from the uncapped batches
calibration_images = 5000  # training images on which the exported budget shares are measured
threads = 2
limit = None  # training images (None: all); CI uses a few hundred
# -----------------------------------------------------------------------------


def acm_config(teacher_cfg: ViTConfig, targets, N):
    """The student's ViTConfig: the teacher's, with ACMs at `targets` in every layer."""
    d, D = teacher_cfg.hidden_dim, teacher_cfg.mlp_dim
    g = GateConfig(**gate)
    proj_h = max(1, round((d * d + d) / (2 * d + 1) / N))  # the reference code's block size for N blocks
    acm = {}
    for i in range(teacher_cfg.num_layers):
        for t in targets:
            if t == 'mlp':
                acm[f'{layer_path(i)}.mlp'] = ACMConfig(num_learners=N, learner_dim=D // N, activation='gelu',
                                                       min_choice=0, hidden_bias=True, output_bias=True, gate=g)
            elif t in PROJECTIONS:
                acm[f'{layer_path(i)}.self_attention.{t}'] = ACMConfig(
                    num_learners=N, learner_dim=proj_h, activation='identity', min_choice=1,
                    hidden_bias=False, output_bias=True, gate=g)
            else:
                raise ValueError(f'unknown target {t!r}: use mlp, q_proj, k_proj, v_proj, o_proj')
    fields = {k: v for k, v in vars(teacher_cfg).items() if k != 'acm'}
    return ViTConfig(**fields, acm=acm)


def teacher_modules(teacher, paths):
    return {p: teacher.get_submodule(p) for p in paths}


@torch.no_grad()
def capture(teacher, x, paths):
    """Run the teacher on x and return {path: (module input, module output)} for the given modules."""
    saved, handles = {}, []
    for p, m in teacher_modules(teacher, paths).items():
        handles.append(m.register_forward_hook(lambda mod, inp, outp, p=p: saved.__setitem__(p, (inp[0], outp))))
    try:
        teacher(x, mode='full')
    finally:
        for h in handles:
            h.remove()
    return saved


@torch.no_grad()
def init_from_teacher(student, teacher, x_sample):
    """Copy every dense weight, and start each ACM's learners from the module it replaces (phase 0)."""
    own = student.state_dict()
    for k, v in teacher.state_dict().items():
        if k in own and own[k].shape == v.shape:
            own[k].copy_(v)
    acm_paths = list(student.cfg.acm)
    inputs = capture(teacher, x_sample, acm_paths)
    for path, cfg in student.cfg.acm.items():
        acm = student.get_submodule(path)
        src = teacher.get_submodule(path)
        N, h = cfg.num_learners, cfg.learner_dim
        if cfg.activation == 'gelu':  # an MLP: fc1 = src[0], fc2 = src[3]
            fc1, fc2 = src[0], src[3]
            hidden = F.gelu(inputs[path][0] @ fc1.weight.T + fc1.bias)  # (B, T, D)
            importance = hidden.abs().mean(dim=(0, 1)) * fc2.weight.norm(dim=0)  # (D,)
            order = importance.argsort(descending=True)[:N * h]
            acm.w1.copy_(fc1.weight[order].T)  # (d, N*h)
            acm.b1.copy_(fc1.bias[order])
            acm.w2.copy_(fc2.weight[:, order].T)  # (N*h, d)
            acm.b2.zero_()
            acm.b2.view(N + 1, -1)[1].copy_(fc2.bias)  # the output bias from k = 1 on (k_min = 0)
        else:  # a projection: y = x W^T + b with W ~ U S V^T; learner n takes singular directions n*h..
            U, S, Vh = torch.linalg.svd(src.weight, full_matrices=False)  # W (out, in)
            r = N * h
            root = S[:r].sqrt()
            acm.w1.copy_((Vh[:r].T * root))  # (in, r)
            acm.w2.copy_((U[:, :r] * root).T)  # (r, out)
            acm.b2.zero_()
            acm.b2.view(N + 1, -1)[cfg.min_choice].copy_(src.bias)  # every token runs >= k_min learners


def batches(n, g, epochs=1):
    steps = math.ceil(n / batch_size)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(steps):
            yield order[i * batch_size:(i + 1) * batch_size]


def acms(student):
    return {p: student.get_submodule(p) for p in student.cfg.acm}


def phase1(student, teacher, x_train, g, epochs):
    """Module-wise distillation: MSE of every prefix output to the teacher module's output."""
    params = [p for m in acms(student).values() for n, p in m.named_parameters() if not n.startswith('gating_network')]
    opt = torch.optim.AdamW(params, lr=phase1_lr, weight_decay=0.0)
    total = epochs * math.ceil(len(x_train) / batch_size)
    loss = torch.tensor(0.0)
    for step, idx in enumerate(tqdm(batches(len(x_train), g, epochs), total=total, desc='phase 1: distill', leave=False)):
        for group in opt.param_groups:
            group['lr'] = phase1_lr * 0.5 * (1 + math.cos(math.pi * step / total))
        saved = capture(teacher, augment(x_train[idx], g), list(student.cfg.acm))
        losses = []
        for path, m in acms(student).items():
            inp, target = saved[path]
            outs = m.prefix_outputs(inp)  # (B, T, C, d)
            losses.append(((outs - target.unsqueeze(2)) ** 2).mean())
        loss = descend(opt, losses)
    logging.info(f'phase 1: final distillation MSE {loss.item():.5f}')
    return loss.item()


def descend(opt, losses):
    """One optimiser step on the mean of the per-ACM losses; returns that mean."""
    loss = torch.stack(losses).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def gate_labels(outs, target, min_choice):
    """The smallest k (>= k_min) whose error ratio e_k / e_{k+1} is below tau_error; N if there is none.
    outs (B, T, C, d), target (B, T, d) -> choice index c = k - k_min, (B, T)."""
    errors = (outs - target.unsqueeze(2)).norm(dim=-1)  # (B, T, C)
    ratio = errors[..., :-1] / errors[..., 1:].clamp_min(1e-12)  # (B, T, C-1): e_k / e_{k+1}
    small = ratio < tau_error
    C = outs.shape[2]
    first = torch.where(small.any(-1), small.float().argmax(-1), torch.full_like(small[..., 0], C - 1, dtype=torch.long))
    return first  # (B, T)


def phase2(student, teacher, x_train, g, epochs):
    """Gate pre-training on error-ratio labels (cross-entropy), learners frozen."""
    params = [p for m in acms(student).values() for p in m.gating_network.parameters()]
    opt = torch.optim.AdamW(params, lr=phase2_lr, weight_decay=0.0)
    total = epochs * math.ceil(len(x_train) / batch_size)
    loss = torch.tensor(0.0)
    histogram = {}
    for step, idx in enumerate(tqdm(batches(len(x_train), g, epochs), total=total, desc='phase 2: gates', leave=False)):
        saved = capture(teacher, augment(x_train[idx], g), list(student.cfg.acm))
        losses = []
        for path, m in acms(student).items():
            inp, target = saved[path]
            with torch.no_grad():
                labels = gate_labels(m.prefix_outputs(inp), target, m.cfg.min_choice)  # (B, T)
            logits = m.gating_network(inp)  # (B, T, C)
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels.flatten()))
            if step == total - 1:
                histogram[path] = torch.bincount(labels.flatten() + m.cfg.min_choice, minlength=m.cfg.num_learners + 1).tolist()
        loss = descend(opt, losses)
    logging.info(f'phase 2: final gate cross-entropy {loss.item():.4f}; last batch label counts (k = 0..N) {histogram}')
    return loss.item()


@torch.no_grad()
def calibrate_budget_shares(student, x, batch=500):
    """Set each ACM's budget_share (docs/compute-budget.md) to the share of its learners the gates run in
    auto mode on the images x, rounded to 6 decimals. -> {path: share}."""
    student.eval()
    sums = {p: 0.0 for p in student.cfg.acm}
    for i in range(0, len(x), batch):
        _, choices = student(x[i:i + batch], mode='auto')
        for p, k in choices.items():
            sums[p] += k.double().sum().item()
    for p, c in student.cfg.acm.items():
        c.budget_share = round(sums[p] / (len(x) * student.cfg.seq_length * c.num_learners), 6)
    return {p: c.budget_share for p, c in student.cfg.acm.items()}


def phase3(student, teacher, x_train, y_train, g, epochs, robust):
    """End to end: task and distillation losses plus the paper's cost, entropy and diversity losses,
    straight-through Gumbel-softmax (tau = gumbel_tau); with `robust`, random per-image caps."""
    opt = torch.optim.AdamW(student.parameters(), lr=phase3_lr, weight_decay=0.0)
    total = epochs * math.ceil(len(x_train) / batch_size)
    d = student.cfg.hidden_dim
    flops = {p: c.learner_flops(d, d) for p, c in student.cfg.acm.items()}
    full_cost = sum(c.num_learners * flops[p] for p, c in student.cfg.acm.items())
    parts = {}
    bar = tqdm(batches(len(x_train), g, epochs), total=total, desc=f'phase 3: end to end{" (robust)" if robust else ""}', leave=False)
    for step, idx in enumerate(bar):
        for group in opt.param_groups:
            group['lr'] = phase3_lr * 0.5 * (1 + math.cos(math.pi * step / total))
        x, y = augment(x_train[idx], g), y_train[idx]
        B = x.shape[0]
        capped = robust and torch.rand(1, generator=g).item() < robust_fraction
        beta = (torch.rand(B, generator=g) * (robust_range[1] - robust_range[0]) + robust_range[0]) if capped else None
        student.train()
        logits, gates = student(x, mode='gumbel', tau=gumbel_tau, beta=beta)
        with torch.no_grad():
            teacher_logits, _ = teacher(x, mode='full')
        task = F.cross_entropy(logits, y)
        T_kd = distill_temperature
        kd = F.kl_div(F.log_softmax(logits / T_kd, -1), F.log_softmax(teacher_logits / T_kd, -1),
                      reduction='batchmean', log_target=True) * T_kd ** 2
        # per-image compute fraction from the straight-through one-hots (gradients reach the gates)
        cost_b = 0
        entropies, per_image_k = [], []
        for path, gt in gates.items():  # gt (B, T, C)
            c = student.cfg.acm[path]
            k = torch.arange(c.min_choice, c.num_learners + 1, dtype=gt.dtype)  # (C,)
            cost_b = cost_b + (gt * k).sum(-1).sum(-1) * flops[path]  # (B,)
            dist = gt.double().mean(dim=1)  # (B, C): the sequence's distribution over choices
            ent = -(dist * (dist + 1e-20).log()).sum(-1) / math.log(gt.shape[-1]) if gt.shape[-1] > 1 else dist.sum(-1) * 0
            entropies.append(ent)
        tokens = next(iter(gates.values())).shape[1]
        fraction_b = cost_b / (full_cost * tokens)  # (B,)
        cost = (fraction_b.mean() - beta_target).abs() if beta is None else fraction_b.mean() * 0
        if beta is None:  # follow the gates' own allocation, which the caps spread their budgets by
            for path, gt in gates.items():
                c = student.cfg.acm[path]
                k = torch.arange(c.min_choice, c.num_learners + 1, dtype=gt.dtype)
                share = (gt.detach() * k).sum(-1).mean().item() / c.num_learners
                c.budget_share = min(1.0, share_momentum * c.budget_share + (1 - share_momentum) * share)
        entropy = -torch.stack(entropies).mean()
        diversity = -(fraction_b.unsqueeze(0) - fraction_b.unsqueeze(1)).abs().mean() * 2
        loss = (task + distill_weight * kd + cost_weight * cost + entropy_weight * entropy.float()
                + diversity_weight * diversity)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        parts = dict(task=task.item(), kd=kd.item(), fraction=fraction_b.mean().item(), capped=capped)
        bar.set_postfix(task=f'{task.item():.3f}', frac=f'{fraction_b.mean().item():.2f}')
    student.eval()
    logging.info(f'phase 3: last batch {parts}')
    return parts


@torch.no_grad()
def evaluate(student, x, y, batch=500):
    """Validation accuracy and mean compute fraction in auto mode and at a few caps."""
    student.eval()
    rows = {}
    for name, kw in [('auto', dict(mode='auto')), ('cap_0.5', dict(mode='cap', beta=0.5)),
                     ('cap_0.25', dict(mode='cap', beta=0.25)), ('full', dict(mode='full'))]:
        correct, fraction = 0, 0.0
        for i in range(0, len(x), batch):
            logits, choices = student(x[i:i + batch], **kw)
            correct += (logits.argmax(-1) == y[i:i + batch]).sum().item()
            fraction += compute_fraction(student.cfg, choices, logits.shape[0]).sum().item()
        rows[name] = dict(accuracy=correct / len(x), fraction=fraction / len(x))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--teacher', required=True, help='dense ViT model directory (acm-serve format)')
    ap.add_argument('--out', default=out)
    ap.add_argument('--targets', default=targets, help='comma-separated: mlp, q_proj, k_proj, v_proj, o_proj')
    ap.add_argument('--num-learners', type=int, default=num_learners)
    ap.add_argument('--robust', action=argparse.BooleanOptionalAction, default=True,
                    help='also train under random caps (default: on)')
    ap.add_argument('--epochs', type=int, nargs=3, default=[phase1_epochs, phase2_epochs, phase3_epochs],
                    metavar=('P1', 'P2', 'P3'))
    ap.add_argument('--limit', type=int, default=limit, help='training images (default: all)')
    ap.add_argument('--from-phase2', help='skip phases 0-2: start phase 3 from this ACM model directory')
    ap.add_argument('--seed', type=int, default=seed)
    ap.add_argument('--threads', type=int, default=threads, help='torch intra-op threads')
    args = ap.parse_args(argv)
    g = start_run(args.out, args.seed, args.threads)
    start = time.time()

    teacher = load_model(args.teacher).eval()
    teacher.requires_grad_(False)
    x_train, y_train = fashion.load('train', limit=args.limit)
    x_val, y_val = fashion.load('val', limit=None if args.limit is None else max(100, args.limit // 5))
    metrics = dict(teacher=args.teacher, targets=args.targets, num_learners=args.num_learners, robust=args.robust,
                   teacher_val_accuracy=accuracy(teacher, x_val, y_val))
    if args.from_phase2:
        student = load_model(args.from_phase2)
        logging.info(f'starting from {args.from_phase2}')
    else:
        cfg = acm_config(teacher.cfg, args.targets.split(','), args.num_learners)
        student = VisionTransformer(cfg)
        init_from_teacher(student, teacher, x_train[:256])
        metrics['after_init'] = evaluate(student, x_val, y_val)
        logging.info(f'phase 0 (init): {metrics["after_init"]}')
        metrics['phase1_mse'] = phase1(student, teacher, x_train, g, args.epochs[0])
        metrics['after_phase1'] = evaluate(student, x_val, y_val)
        logging.info(f'after phase 1: {metrics["after_phase1"]}')
        metrics['phase2_ce'] = phase2(student, teacher, x_train, g, args.epochs[1])
        metrics['after_phase2'] = evaluate(student, x_val, y_val)
        logging.info(f'after phase 2: {metrics["after_phase2"]}')
        save_model(student, os.path.join(args.out, 'phase2'), dtype='F32', preprocessing=fashion.PREPROCESSING,
                   labels=fashion.LABELS)
    metrics['budget_shares_before_phase3'] = calibrate_budget_shares(student, x_train[:calibration_images])
    metrics['phase3_last_batch'] = phase3(student, teacher, x_train, y_train, g, args.epochs[2], args.robust)
    metrics['budget_shares'] = calibrate_budget_shares(student, x_train[:calibration_images])
    logging.info(f'budget shares: {metrics["budget_shares"]}')
    metrics['after_phase3'] = evaluate(student, x_val, y_val)
    logging.info(f'after phase 3: {metrics["after_phase3"]}')
    student.eval()
    save_model(student, args.out, dtype='F32', preprocessing=fashion.PREPROCESSING, labels=fashion.LABELS)
    metrics['seconds'] = time.time() - start
    with open(os.path.join(args.out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
    logging.info(f'wrote {args.out} in {metrics["seconds"]:.0f} s')


if __name__ == '__main__':
    main()
