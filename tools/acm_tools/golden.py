"""
Golden fixtures for the Swift tests: tiny ViTs in the acm-serve format, with the outputs this reference
code gives for one batch of images in every mode.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.golden --out Tests/ACMModelsTests/Fixtures

Writes, per fixture model, <out>/<name>/ with
    config.json, model.safetensors   the model (docs/model-format.md)
    example.npy                      input[0], f32 [C, H, W], for a CLI smoke test
    golden.safetensors               input                        f32 [B, C, H, W]
                                     logits.<mode>                f32 [B, classes]
                                     fraction.<mode>              f32 [B]
                                     choices.<mode>.<acm path>    i32 [B, T]
                                     logits_bf16.<mode>           f32 [B, classes]
for mode in `modes`, and logits_bf16 for mode in `bf16_modes`: the float32 model under torch's CPU bf16 autocast,
for the engine's bf16 path (modes with no gate decisions, which bf16 rounding may move, so that the logits compare
as numbers). The B images run together in one forward per mode. Expected outputs are computed
in float64 from the weights as stored (after rounding to F16/BF16) and the input as stored (f32).

The Swift engine computes in float32, so inputs are redrawn until no choice is a near tie: every token's
two largest gate logits differ by more than min_logit_gap and, under a cap, the last kept and first dropped
learner units differ in survival probability by more than min_survival_gap.
"""
import argparse
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
from safetensors.torch import save_file

from .acm import ACM, ACMConfig, GateConfig, cap_total, cap_units, choose_auto
from .modelio import load_model, save_model
from .vit import ViTConfig, VisionTransformer, compute_fraction, layer_budgets, layer_path

# -----------------------------------------------------------------------------
# config
out = 'Tests/ACMModelsTests/Fixtures'  # fixture models go to out/<name>/; relative to the repository root
batch_size = 4  # images per golden batch
modes = ['full', 'auto', 'cap_0.5', 'cap_0.25', 'uniform_2']  # mode names as in the tensor names
bf16_modes = ['full', 'uniform_2']  # modes also run under bf16 autocast
min_logit_gap = 1e-3  # near-tie threshold on the top-2 gate logits of every token
min_survival_gap = 1e-4  # near-tie threshold on S between the last kept and the first dropped unit
max_tries = 200  # input draws before giving up
input_seed = 1000  # input draw n uses seed input_seed + n
# -----------------------------------------------------------------------------


@dataclass
class Fixture:
    name: str
    cfg: ViTConfig
    dtype: str  # storage: F32, F16, BF16
    packed: bool  # torchvision's packed attention layout where allowed
    seed: int  # weights
    gate_scale: float  # scale of the gate's last layer: spreads the choices over all k
    preprocessing: dict = None
    labels: list = None
    check_spread: bool = True  # assert that auto uses >= 3 distinct k and cap_0.25 trims


def fixtures():
    mixed_gate = GateConfig(depth=3, hidden_dim=16, activation='identity')
    mixed_mlp = ACMConfig(num_learners=4, learner_dim=48, activation='gelu', min_choice=0,
                          hidden_bias=True, output_bias=False, gate=mixed_gate)
    mixed_proj = ACMConfig(num_learners=4, learner_dim=6, activation='identity', min_choice=1,
                           hidden_bias=True, output_bias=False, gate=mixed_gate)
    # budget shares as acmize measures them, so that caps are spread unevenly over the ACMs
    mixed_acm = {f'{layer_path(0)}.mlp': replace(mixed_mlp, budget_share=0.8),
                 f'{layer_path(1)}.mlp': replace(mixed_mlp, budget_share=0.35)}
    mixed_acm.update({f'{layer_path(0)}.self_attention.{p}': replace(mixed_proj, budget_share=share)
                      for p, share in (('q_proj', 0.6), ('k_proj', 0.7), ('v_proj', 0.9), ('o_proj', 0.4))})

    bias_gate = GateConfig(depth=2, hidden_dim=16, activation='gelu')
    bias_mlp = ACMConfig(num_learners=3, learner_dim=32, activation='gelu', min_choice=0,
                         hidden_bias=True, output_bias=True, gate=bias_gate)
    bias_proj = ACMConfig(num_learners=3, learner_dim=8, activation='identity', min_choice=1,
                          hidden_bias=True, output_bias=True, gate=bias_gate)
    bias_acm = {}
    for i in range(2):
        bias_acm[f'{layer_path(i)}.self_attention.v_proj'] = bias_proj
        bias_acm[f'{layer_path(i)}.self_attention.o_proj'] = bias_proj
        bias_acm[f'{layer_path(i)}.mlp'] = bias_mlp

    return [
        Fixture('vit_mixed',
                ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_dim=48, num_layers=2, num_heads=3,
                          mlp_dim=192, num_classes=10, acm=mixed_acm),
                dtype='F32', packed=False, seed=1, gate_scale=2.0,
                preprocessing={'color': 'grey', 'resize': 16, 'crop': 16, 'mean': [0.5], 'std': [0.25]},
                labels=['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']),
        Fixture('vit_bias',
                ViTConfig(image_size=12, patch_size=4, num_channels=3, hidden_dim=32, num_layers=2, num_heads=2,
                          mlp_dim=96, num_classes=5, acm=bias_acm),
                dtype='F16', packed=False, seed=2, gate_scale=3.0,
                preprocessing={'color': 'rgb', 'resize': 14, 'crop': 12, 'mean': [0.485, 0.456, 0.406],
                               'std': [0.229, 0.224, 0.225]}),
        Fixture('vit_dense',
                ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_dim=32, num_layers=1, num_heads=4,
                          mlp_dim=64, num_classes=3),
                dtype='BF16', packed=True, seed=3, gate_scale=1.0, check_spread=False),
    ]


def parse_mode(name):
    """'full', 'auto', 'cap_<beta>', 'uniform_<k>' -> forward keyword arguments."""
    if name in ('full', 'auto'):
        return dict(mode=name)
    kind, _, arg = name.partition('_')
    if kind == 'cap':
        return dict(mode='cap', beta=float(arg))
    if kind == 'uniform':
        return dict(mode='uniform', k=int(arg))
    raise ValueError(f'unknown mode {name!r}')


@torch.no_grad()
def init_weights(model: VisionTransformer, seed, gate_scale):
    """Random weights of a realistic scale: O(1) activations and logits; the gate's last layer is scaled
    by gate_scale so that its choices vary from token to token."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g)

    last_gate_layers = {f'{path}.gating_network.net.{len(m.gating_network.net) - 1}'
                        for path, m in acm_paths(model).items()}
    for name, p in model.named_parameters():
        module, leaf = name.rsplit('.', 1) if '.' in name else ('', name)
        if '.ln' in name:  # LayerNorm
            p.copy_((1.0 if leaf == 'weight' else 0.0) + 0.1 * randn(p.shape))
        elif name in ('class_token', 'encoder.pos_embedding'):
            p.copy_(0.5 * randn(p.shape))
        elif name == 'conv_proj.weight':
            p.copy_(randn(p.shape) / p[0].numel() ** 0.5)
        elif leaf == 'w1':  # [d_in, N*h]
            p.copy_(randn(p.shape) / p.shape[0] ** 0.5)
        elif leaf == 'w2':  # [N*h, d_out]: the sum of all learners stays O(1)
            p.copy_(randn(p.shape) / p.shape[0] ** 0.5)
        elif '.gating_network.net.' in name:
            scale = gate_scale if module in last_gate_layers else 1.0
            if leaf == 'weight':  # nn.Linear [out, in]
                p.copy_(scale * randn(p.shape) / p.shape[1] ** 0.5)
            else:
                p.copy_(scale * 0.1 * randn(p.shape))
        elif leaf == 'weight':  # nn.Linear [out, in]
            p.copy_(randn(p.shape) / p.shape[1] ** 0.5)
        else:  # biases: conv_proj, nn.Linear, b1, b2
            p.copy_(0.1 * randn(p.shape))


def acm_paths(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, ACM)}


@torch.no_grad()
def run_modes(model, x):
    """Run every mode on the batch x. -> {mode: (logits, choices, gate logits by acm path)}"""
    gate_logits = {}
    hooks = [m.gating_network.register_forward_hook(lambda mod, inp, outp, path=path: gate_logits.__setitem__(path, outp))
             for path, m in acm_paths(model).items()]
    results = {}
    try:
        for name in modes:
            gate_logits.clear()
            logits, choices = model(x, **parse_mode(name))
            results[name] = (logits, choices, dict(gate_logits))
    finally:
        for h in hooks:
            h.remove()
    return results


def near_ties(model, results):
    """Reasons this batch's choices could flip in float32; empty when there are none."""
    problems = []
    for name, (_, _, gate_logits) in results.items():
        kw = parse_mode(name)
        for path, z in gate_logits.items():  # z (B, T, C)
            acm = model.get_submodule(path).cfg
            if z.shape[-1] >= 2:
                top2 = z.topk(2, dim=-1).values  # (B, T, 2)
                gap = (top2[..., 0] - top2[..., 1]).min().item()
                if gap <= min_logit_gap:
                    problems.append(f'{name} {path}: top-2 gate logit gap {gap:.2e}')
            if kw['mode'] != 'cap':
                continue
            B, T, _ = z.shape
            budgets = layer_budgets(model.cfg, kw['beta'], B)[path]  # (B,): this ACM's share of each cap
            for b, beta in enumerate(budgets.tolist()):
                k_auto = choose_auto(z[b], acm.min_choice)  # (T,)
                C = cap_total(beta, acm.num_learners, T, acm.min_choice)
                if int(k_auto.sum()) <= C:
                    continue
                units = cap_units(z[b], k_auto, acm.min_choice)
                keep = C - acm.min_choice * T
                if 0 < keep < len(units) and units[keep - 1][2] == units[keep][2]:  # same level j
                    gap = units[keep - 1][0] - units[keep][0]
                    if gap <= min_survival_gap:
                        problems.append(f'{name} {path} sequence {b}: survival gap {gap:.2e}')
    return problems


def check_spread(fx, results):
    """The gates must make the fixture interesting: auto uses >= 3 distinct k somewhere, and cap_0.25
    changes at least one choice relative to auto."""
    _, auto, _ = results['auto']
    _, cap, _ = results['cap_0.25']
    distinct = max(len(torch.unique(k)) for k in auto.values())
    assert distinct >= 3, f'{fx.name}: auto uses at most {distinct} distinct k in any ACM; scale the gates up'
    trimmed = any(not torch.equal(auto[p], cap[p]) for p in auto)
    assert trimmed, f'{fx.name}: cap_0.25 changes no choice of auto; scale the gates so auto asks for more'


def make_fixture(fx: Fixture, out_dir):
    d = os.path.join(out_dir, fx.name)
    torch.manual_seed(fx.seed)  # default init, overwritten below
    model = VisionTransformer(fx.cfg)
    init_weights(model, fx.seed, fx.gate_scale)
    save_model(model, d, dtype=fx.dtype, packed_attention=fx.packed, preprocessing=fx.preprocessing,
               labels=fx.labels)
    ref = load_model(d).double()  # the weights as stored, rounded to fx.dtype
    cfg = fx.cfg
    shape = (batch_size, cfg.num_channels, cfg.image_size, cfg.image_size)
    for attempt in range(max_tries):
        g = torch.Generator().manual_seed(input_seed + attempt)
        x = torch.randn(shape, generator=g)  # (B, C, H, W) f32, as stored
        results = run_modes(ref, x.double())
        problems = near_ties(ref, results)
        if not problems:
            break
    else:
        raise RuntimeError(f'{fx.name}: every one of {max_tries} input draws has a near tie, e.g. {problems[0]}')
    if fx.check_spread:
        check_spread(fx, results)

    golden = {'input': x.contiguous()}
    for name, (logits, choices, _) in results.items():
        golden[f'logits.{name}'] = logits.float().contiguous()
        golden[f'fraction.{name}'] = compute_fraction(cfg, choices, batch_size).float()
        for path, k in choices.items():
            golden[f'choices.{name}.{path}'] = k.to(torch.int32).contiguous()
    model32 = load_model(d)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        for name in bf16_modes:
            logits, _ = model32(x, **parse_mode(name))
            golden[f'logits_bf16.{name}'] = logits.float().contiguous()
    save_file(golden, os.path.join(d, 'golden.safetensors'), metadata={'format': 'pt'})
    np.save(os.path.join(d, 'example.npy'), x[0].numpy().astype(np.float32))
    return d, attempt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--out', help=f'output directory (default: {out} in the repository)')
    args = parser.parse_args(argv)
    if args.out is None:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        args.out = os.path.join(repo, out)
    for fx in fixtures():
        d, attempt = make_fixture(fx, args.out)
        sizes = ', '.join(f'{f} {os.path.getsize(os.path.join(d, f))} B' for f in sorted(os.listdir(d)))
        print(f'{d}: input draw {attempt}; {sizes}')


if __name__ == '__main__':
    main()
