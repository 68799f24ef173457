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
Writes <out>/config.json + model.safetensors, <out>/metrics.json and <out>/train.log. What the phases do
with any model's ACMs is in acm_training.py, which whisper_acmize.py shares; this file feeds them the ViT.
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
from .acm_training import (cosine_lr, distill, distill_logits, diversity, gate_terms, init_mlp, init_projection,
                           track_budget_shares, train_gates)
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
    inputs = capture(teacher, x_sample, list(student.cfg.acm))
    for path, cfg in student.cfg.acm.items():
        acm, src = student.get_submodule(path), teacher.get_submodule(path)
        if cfg.activation == 'gelu':  # an MLP: fc1 = src[0], fc2 = src[3]
            init_mlp(acm, src[0].weight, src[0].bias, src[3].weight, src[3].bias, inputs[path][0])
        else:
            init_projection(acm, src.weight, src.bias)


def batches(n, g, epochs=1):
    steps = math.ceil(n / batch_size)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(steps):
            yield order[i * batch_size:(i + 1) * batch_size]


def acms(student):
    return {p: student.get_submodule(p) for p in student.cfg.acm}


def captured(student, teacher, x_train, g, epochs):
    """Per batch of augmented training images, the teacher's input and output at each ACM's module."""
    for idx in batches(len(x_train), g, epochs):
        yield capture(teacher, augment(x_train[idx], g), list(student.cfg.acm))


def phase1(student, teacher, x_train, g, epochs):
    """Module-wise distillation: MSE of every prefix output to the teacher module's output."""
    total = epochs * math.ceil(len(x_train) / batch_size)
    return distill(acms(student), captured(student, teacher, x_train, g, epochs), total, phase1_lr)


def phase2(student, teacher, x_train, g, epochs):
    """Gate pre-training on error-ratio labels (cross-entropy), learners frozen."""
    total = epochs * math.ceil(len(x_train) / batch_size)
    return train_gates(acms(student), captured(student, teacher, x_train, g, epochs), total, phase2_lr, tau_error)


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
    parts = {}
    bar = tqdm(batches(len(x_train), g, epochs), total=total, desc=f'phase 3: end to end{" (robust)" if robust else ""}', leave=False)
    for step, idx in enumerate(bar):
        cosine_lr(opt, phase3_lr, step, total)
        x, y = augment(x_train[idx], g), y_train[idx]
        B = x.shape[0]
        capped = robust and torch.rand(1, generator=g).item() < robust_fraction
        beta = (torch.rand(B, generator=g) * (robust_range[1] - robust_range[0]) + robust_range[0]) if capped else None
        student.train()
        logits, gates = student(x, mode='gumbel', tau=gumbel_tau, beta=beta)
        with torch.no_grad():
            teacher_logits, _ = teacher(x, mode='full')
        task = F.cross_entropy(logits, y)
        kd = distill_logits(logits, teacher_logits, distill_temperature)
        # per-image compute fraction from the straight-through one-hots (gradients reach the gates)
        fraction_b, entropy_b = gate_terms(gates, student.cfg.acm, flops)
        cost = (fraction_b.mean() - beta_target).abs() if beta is None else fraction_b.mean() * 0
        if beta is None:  # follow the gates' own allocation, which the caps spread their budgets by
            track_budget_shares(gates, student.cfg.acm, share_momentum)
        loss = (task + distill_weight * kd + cost_weight * cost - entropy_weight * entropy_b.mean()
                + diversity_weight * diversity(fraction_b))
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
