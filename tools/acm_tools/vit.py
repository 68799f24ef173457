"""
Vision Transformer as torchvision's `vit_b_16`, of any size, whose MLPs and attention projections may be ACMs.

Mirrors torchvision's VisionTransformer:
https://github.com/pytorch/vision/blob/v0.19.0/torchvision/models/vision_transformer.py
with its attention split into q_proj/k_proj/v_proj/o_proj as in the ACM reference code:
https://github.com/bartwojcik/adaptive_computation_modules/blob/6760ad64c52925144641e07d7f5627f99d0dbce3/architectures/custom.py
The module tree produces exactly the state-dict keys of docs/model-format.md.
"""
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .acm import ACM, ACMConfig, budget_layers, sequence_betas, split_budget

PROJECTIONS = ('q_proj', 'k_proj', 'v_proj', 'o_proj')
PACKED = ('in_proj_weight', 'in_proj_bias', 'out_proj.weight', 'out_proj.bias')


@dataclass
class ViTConfig:
    # torchvision's VisionTransformer argument names, plus num_channels and layer_norm_eps
    image_size: int
    patch_size: int
    num_channels: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_classes: int
    layer_norm_eps: float = 1e-6
    # module path -> ACM settings; a module not listed is dense
    acm: dict = field(default_factory=dict)

    def __post_init__(self):
        self.acm = {p: c if isinstance(c, ACMConfig) else ACMConfig(**c) for p, c in self.acm.items()}
        if self.image_size % self.patch_size != 0:
            raise ValueError(f'image_size {self.image_size} is not a multiple of patch_size {self.patch_size}')
        if self.hidden_dim % self.num_heads != 0:
            raise ValueError(f'hidden_dim {self.hidden_dim} is not a multiple of num_heads {self.num_heads}')
        allowed = set(self.acm_paths())
        for path in self.acm:
            if path not in allowed:
                raise ValueError(f'acm path {path!r} is not an MLP or attention projection of this model')

    @property
    def seq_length(self):
        """S = T: patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def acm_paths(self):
        """Every module path that may be an ACM, in model order."""
        paths = []
        for i in range(self.num_layers):
            paths += [f'{layer_path(i)}.self_attention.{p}' for p in PROJECTIONS]
            paths.append(f'{layer_path(i)}.mlp')
        return paths

    def packable(self, i):
        """The packed torchvision attention layout is only allowed when no projection of layer i is an ACM."""
        return not any(f'{layer_path(i)}.self_attention.{p}' in self.acm for p in PROJECTIONS)


def layer_path(i):
    return f'encoder.layers.encoder_layer_{i}'


def run_module(module, path, x, choices, mode):
    """Run a dense module or an ACM; an ACM's choices go to choices[path]. Under caps, each ACM gets its
    own share of the budget, mode['budgets'][path] (layer_budgets)."""
    if isinstance(module, ACM):
        kwargs = dict(mode)
        budgets = kwargs.pop('budgets', None)
        if budgets is not None:
            kwargs['beta'] = budgets[path]
        y, k = module(x, **kwargs)
        choices[path] = k
        return y
    return module(x)


class MLPBlock(nn.Sequential):
    """torchvision's MLPBlock: mlp.0 and mlp.3 are the Linears."""

    def __init__(self, d, mlp_dim):
        super().__init__(nn.Linear(d, mlp_dim), nn.GELU(approximate='none'), nn.Dropout(0.0),
                         nn.Linear(mlp_dim, d), nn.Dropout(0.0))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with split projections, each nn.Linear or ACM."""

    def __init__(self, cfg: ViTConfig, path):
        super().__init__()
        self.path = path
        self.num_heads = cfg.num_heads
        d = cfg.hidden_dim
        for name in PROJECTIONS:
            p = f'{path}.{name}'
            setattr(self, name, ACM(d, d, cfg.acm[p]) if p in cfg.acm else nn.Linear(d, d))

    def forward(self, x, choices, mode):
        B, T, d = x.shape
        nh, hs = self.num_heads, d // self.num_heads
        q = run_module(self.q_proj, f'{self.path}.q_proj', x, choices, mode)  # (B, T, d)
        k = run_module(self.k_proj, f'{self.path}.k_proj', x, choices, mode)  # (B, T, d)
        v = run_module(self.v_proj, f'{self.path}.v_proj', x, choices, mode)  # (B, T, d)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        att = torch.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, d)  # (B, T, d): heads side by side
        return run_module(self.o_proj, f'{self.path}.o_proj', y, choices, mode)  # (B, T, d)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ViTConfig, i):
        super().__init__()
        self.path = layer_path(i)
        d = cfg.hidden_dim
        self.ln_1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attention = SelfAttention(cfg, f'{self.path}.self_attention')
        self.ln_2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        mlp = f'{self.path}.mlp'
        self.mlp = ACM(d, d, cfg.acm[mlp]) if mlp in cfg.acm else MLPBlock(d, cfg.mlp_dim)

    def forward(self, x, choices, mode):
        # self-attention
        x = x + self.self_attention(self.ln_1(x), choices, mode)
        # mlp
        x = x + run_module(self.mlp, f'{self.path}.mlp', self.ln_2(x), choices, mode)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, cfg.seq_length, cfg.hidden_dim).normal_(std=0.02))
        self.layers = nn.ModuleDict(
            OrderedDict((f'encoder_layer_{i}', EncoderBlock(cfg, i)) for i in range(cfg.num_layers)))
        self.ln = nn.LayerNorm(cfg.hidden_dim, eps=cfg.layer_norm_eps)

    def forward(self, x, choices, mode):
        x = x + self.pos_embedding  # (B, T, d)
        for layer in self.layers.values():
            x = layer(x, choices, mode)
        return self.ln(x)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.hidden_dim, cfg.patch_size
        self.conv_proj = nn.Conv2d(cfg.num_channels, d, kernel_size=p, stride=p)
        self.class_token = nn.Parameter(torch.zeros(1, 1, d))
        self.encoder = Encoder(cfg)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(d, cfg.num_classes)))
        # optional config.json extras, kept so that load_model -> save_model round-trips
        self.preprocessing = None
        self.labels = None

    def forward(self, x, mode='auto', beta=None, k=None, tau=None):
        """x (B, C, H, W) -> logits (B, classes), {acm path: k (B, T)}.
        mode: 'full', 'auto', 'cap' (beta: float or [B] tensor of per-image budgets), 'uniform' (k: int),
        or 'gumbel' (training, temperature tau; optional caps beta): then the dict holds each ACM's
        straight-through one-hot (B, T, C) instead of k."""
        cfg = self.cfg
        B = x.shape[0]
        if tuple(x.shape[1:]) != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f'input shape {tuple(x.shape)} is not [B, {cfg.num_channels}, '
                             f'{cfg.image_size}, {cfg.image_size}]')
        x = self.conv_proj(x)  # (B, d, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, T-1, d): patches in row-major order
        x = torch.cat([self.class_token.expand(B, -1, -1), x], dim=1)  # (B, T, d)
        choices = {}
        budgets = layer_budgets(cfg, beta, B) if beta is not None and mode in ('cap', 'gumbel') else None
        x = self.encoder(x, choices, dict(mode=mode, beta=beta, k=k, tau=tau, budgets=budgets))  # (B, T, d)
        logits = self.heads.head(x[:, 0])  # (B, classes): class token
        return logits, choices


def layer_budgets(cfg: ViTConfig, beta, batch_size):
    """Per-sequence caps beta (a float or a [B] tensor) -> {acm path: [B] float64 tensor of that ACM's
    budget}, spread over the ACMs by split_budget in proportion to their budget_share."""
    layers = budget_layers(cfg.acm, cfg.hidden_dim)
    betas = sequence_betas(beta, batch_size)
    splits = {b: split_budget(b, layers) for b in set(betas)}
    return {p: torch.tensor([splits[b][p] for b in betas], dtype=torch.float64) for p in cfg.acm}


def compute_fraction(cfg: ViTConfig, choices, batch_size):
    """Per-sequence compute fraction (docs/compute-budget.md), float64 [B]:
    sum_l sum_t k_t F_l / sum_l T N_l F_l with F_l = 2 h_l (d_in + d_out).
    A model without ACMs runs everything it has: fraction 1."""
    d = cfg.hidden_dim
    num, den = torch.zeros(batch_size, dtype=torch.float64), 0.0
    for path, acm in cfg.acm.items():
        f = acm.learner_flops(d, d)
        k = choices[path]  # (B, T)
        num += k.double().sum(dim=1) * f
        den += k.shape[1] * acm.num_learners * f
    if den == 0:
        return torch.ones(batch_size, dtype=torch.float64)
    return num / den


# -----------------------------------------------------------------------------
# torchvision's packed attention layout <-> the split q/k/v/o_proj layout

def pack_attention(state_dict, cfg: ViTConfig):
    """Split -> packed keys for every layer whose projections are all dense."""
    sd = dict(state_dict)
    for i in range(cfg.num_layers):
        if not cfg.packable(i):
            continue
        a = f'{layer_path(i)}.self_attention'
        w = [sd.pop(f'{a}.{p}.weight') for p in PROJECTIONS]
        b = [sd.pop(f'{a}.{p}.bias') for p in PROJECTIONS]
        sd[f'{a}.in_proj_weight'] = torch.cat(w[:3], dim=0)  # (3d, d): q, k, v rows
        sd[f'{a}.in_proj_bias'] = torch.cat(b[:3], dim=0)  # (3d,)
        sd[f'{a}.out_proj.weight'] = w[3]
        sd[f'{a}.out_proj.bias'] = b[3]
    return sd


def unpack_attention(state_dict, cfg: ViTConfig):
    """Packed -> split keys, for the layers stored packed. Raises ValueError naming the key when the
    packed layout is incomplete, mixed with the split one, or used where a projection is an ACM."""
    sd = dict(state_dict)
    d = cfg.hidden_dim
    for i in range(cfg.num_layers):
        a = f'{layer_path(i)}.self_attention'
        present = [f'{a}.{k}' for k in PACKED if f'{a}.{k}' in sd]
        if not present:
            continue
        if not cfg.packable(i):
            raise ValueError(f'tensor {present[0]!r}: the packed attention layout is not allowed in a layer '
                             f'with ACM projections')
        for k in PACKED:
            if f'{a}.{k}' not in sd:
                raise ValueError(f'missing tensor {a}.{k} (layer {i} uses the packed attention layout)')
        for p in PROJECTIONS:
            for s in ('weight', 'bias'):
                if f'{a}.{p}.{s}' in sd:
                    raise ValueError(f'tensor {a}.{p}.{s} mixes the split attention layout with the packed one')
        shapes = {'in_proj_weight': (3 * d, d), 'in_proj_bias': (3 * d,), 'out_proj.weight': (d, d),
                  'out_proj.bias': (d,)}
        for k, shape in shapes.items():
            if tuple(sd[f'{a}.{k}'].shape) != shape:
                raise ValueError(f'tensor {a}.{k} has shape {list(sd[f"{a}.{k}"].shape)}, expected {list(shape)}')
        w = sd.pop(f'{a}.in_proj_weight')  # (3d, d)
        b = sd.pop(f'{a}.in_proj_bias')  # (3d,)
        for j, p in enumerate(PROJECTIONS[:3]):
            sd[f'{a}.{p}.weight'] = w[j * d:(j + 1) * d]  # (d, d)
            sd[f'{a}.{p}.bias'] = b[j * d:(j + 1) * d]  # (d,)
        sd[f'{a}.o_proj.weight'] = sd.pop(f'{a}.out_proj.weight')
        sd[f'{a}.o_proj.bias'] = sd.pop(f'{a}.out_proj.bias')
    return sd
