"""
Convert a ViT checkpoint of timm, torchvision or the ACM reference code into our model directory
(docs/model-format.md: config.json + model.safetensors).

    PYTHONPATH=tools .venv/bin/python -m acm_tools.convert timm --checkpoint vit.pth --out DIR --num-heads 3
    PYTHONPATH=tools .venv/bin/python -m acm_tools.convert torchvision --checkpoint vit_b_16.pth --out DIR \\
        --num-heads 12
    PYTHONPATH=tools .venv/bin/python -m acm_tools.convert acm-reference --checkpoint final.pth --out DIR \\
        --num-heads 12 [--num-learners 4] [--unsafe-pickle]

Upstream code whose state-dict keys the tables below name:
- timm: https://github.com/huggingface/pytorch-image-models/blob/v1.0.31/timm/models/vision_transformer.py
- torchvision: https://github.com/pytorch/vision/blob/v0.19.0/torchvision/models/vision_transformer.py
- ACM reference: https://github.com/bartwojcik/adaptive_computation_modules/blob/6760ad64c52925144641e07d7f5627f99d0dbce3/architectures/acm.py
  (its ViT is torchvision's with attention split by architectures/custom.py)

Each converter renames keys through a declarative table, infers every size from tensor shapes, and takes
what a state dict does not say from flags: the number of heads, the activations, LayerNorm's eps, and N
of an ACM without an output bias. A key that no table knows, a key that is missing, and a wrong shape are
errors that name the checkpoint's own key.

Not inferable, so assumed: timm's `global_pool='token'` (the `vit_*` default; `avg` pooling without
`fc_norm` leaves the same keys) and exact GELU; in the ACM reference, that the gate's layers have no
activation between them (`DeepGumbelGatingNetwork`; override with --gate-activation).

Tests (tools/tests/test_convert.py) build each library's key layout from one of our models by an
independent mapping, and check the logits against independent forwards; they do not import timm or
torchvision. Real-module tests need timm, whose import needs torchvision (timm 1.0.31,
timm/layers/create_norm.py imports torchvision.ops), which needs a torch build we cannot install here
(only torch==2.13.0+cpu is available, and torchvision's wheels pin CUDA torch).
"""
import argparse
import re
import sys

from .acm import ACMConfig, GateConfig, LEARNER_ACTIVATIONS, ACTIVATIONS
from .checkpoint import ConvertError, KeyTable, check_keys, read_checkpoint, rename
from .modelio import DTYPES, load_model, save_model
from .vit import PACKED, PROJECTIONS, ViTConfig, VisionTransformer, layer_path, unpack_attention


# -----------------------------------------------------------------------------
# key tables (checkpoint.KeyTable): (checkpoint key, our key); a {name} placeholder is one of checkpoint.FIELDS

TV = 'encoder.layers.encoder_layer_{i}.'  # torchvision's (and our) layer prefix

TIMM_KEYS = [
    ('patch_embed.proj.{s}', 'conv_proj.{s}'),
    ('cls_token', 'class_token'),
    ('pos_embed', 'encoder.pos_embedding'),
    ('blocks.{i}.norm1.{s}', TV + 'ln_1.{s}'),
    ('blocks.{i}.attn.qkv.weight', TV + 'self_attention.in_proj_weight'),  # [3d, d]: q, k, v rows
    ('blocks.{i}.attn.qkv.bias', TV + 'self_attention.in_proj_bias'),
    ('blocks.{i}.attn.proj.{s}', TV + 'self_attention.out_proj.{s}'),
    ('blocks.{i}.norm2.{s}', TV + 'ln_2.{s}'),
    ('blocks.{i}.mlp.fc1.{s}', TV + 'mlp.0.{s}'),
    ('blocks.{i}.mlp.fc2.{s}', TV + 'mlp.3.{s}'),
    ('norm.{s}', 'encoder.ln.{s}'),
    ('head.{s}', 'heads.head.{s}'),
]
TIMM_UNSUPPORTED = [  # (regex on the checkpoint key, what it is)
    (r'fc_norm\.', 'a norm after average pooling (fc_norm, global_pool="avg")'),
    (r'reg_token$', 'register tokens (reg_tokens > 0)'),
    (r'dist_token$|head_dist\.', 'a distillation token (DeiT distilled)'),
    (r'blocks\.\d+\.attn\.[qk]_norm\.', 'QK normalisation (qk_norm=True)'),
    (r'blocks\.\d+\.ls[12]\.', 'layer scale (init_values)'),
    (r'blocks\.\d+\.attn\.norm\.|blocks\.\d+\.mlp\.norm\.', 'inner norms (scale_attn_norm / scale_mlp_norm)'),
    (r'norm_pre\.', 'a norm before the blocks (pre_norm=True, CLIP)'),
    (r'patch_embed\.norm\.', 'a norm after the patch embedding'),
    (r'attn_pool\.', 'attention pooling (global_pool="map")'),
    (r'pre_logits\.', 'a representation layer before the head'),
]
TIMM_MISSING = {  # checkpoint key -> why it may be missing
    'cls_token': 'a timm ViT without a class token (class_token=False) is not supported',
    'head.weight': 'a model without a classifier (num_classes=0) cannot be served',
    'norm.weight': 'a timm ViT without a final norm is not supported',
}

TORCHVISION_KEYS = [
    ('conv_proj.{s}', 'conv_proj.{s}'),
    ('class_token', 'class_token'),
    ('encoder.pos_embedding', 'encoder.pos_embedding'),
    (TV + 'ln_1.{s}', TV + 'ln_1.{s}'),
    (TV + 'self_attention.in_proj_weight', TV + 'self_attention.in_proj_weight'),
    (TV + 'self_attention.in_proj_bias', TV + 'self_attention.in_proj_bias'),
    (TV + 'self_attention.out_proj.{s}', TV + 'self_attention.out_proj.{s}'),
    (TV + 'ln_2.{s}', TV + 'ln_2.{s}'),
    (TV + 'mlp.0.{s}', TV + 'mlp.0.{s}'),
    (TV + 'mlp.3.{s}', TV + 'mlp.3.{s}'),
    # legacy MLPBlock names, which torchvision's own _load_from_state_dict remaps the same way
    (TV + 'mlp.linear_1.{s}', TV + 'mlp.0.{s}'),
    (TV + 'mlp.linear_2.{s}', TV + 'mlp.3.{s}'),
    ('encoder.ln.{s}', 'encoder.ln.{s}'),
    ('heads.head.{s}', 'heads.head.{s}'),
]
TORCHVISION_UNSUPPORTED = [
    (r'heads\.pre_logits\.', 'a representation layer before the head (representation_size)'),
    (r'conv_proj\.(conv_bn_relu_\d+|conv_last)\.', 'a convolutional stem (conv_stem_configs)'),
]

# The reference code's ViT is torchvision's with each self_attention split into q/k/v/o_proj
# (architectures/custom.py), any of which, and any MLP, may be an AdaptiveComputationMLP.
ACM_REFERENCE_KEYS = TORCHVISION_KEYS + [
    (TV + 'self_attention.{p}.{s}', TV + 'self_attention.{p}.{s}'),  # dense split projection
    (TV + '{acm}.{t}', TV + '{acm}.{t}'),
    (TV + '{acm}.gating_network.net.{j}.{s}', TV + '{acm}.gating_network.net.{j}.{s}'),  # DeepGumbelGatingNetwork
    # GumbelGatingNetwork (and the soft/AIMLE gates): one Linear, the same logits, so a gate of depth 1
    (TV + '{acm}.gating_network.fc.{s}', TV + '{acm}.gating_network.net.0.{s}'),
]
ACM_REFERENCE_UNSUPPORTED = TORCHVISION_UNSUPPORTED
ACM_REFERENCE_DROPPED = [  # (regex on the checkpoint key, why it is not needed at inference)
    (r'\.gating_network\.gs_tau$', 'a trainable Gumbel-softmax temperature: inference takes the argmax'),
]


TABLES = {
    'timm': KeyTable(TIMM_KEYS, TIMM_UNSUPPORTED, missing_hints=TIMM_MISSING),
    'torchvision': KeyTable(TORCHVISION_KEYS, TORCHVISION_UNSUPPORTED),
    'acm-reference': KeyTable(ACM_REFERENCE_KEYS, ACM_REFERENCE_UNSUPPORTED, ACM_REFERENCE_DROPPED),
}


# -----------------------------------------------------------------------------
# config inference

def layer_of(ours):
    m = re.match(r'encoder\.layers\.encoder_layer_(\d+)\.', ours)
    return int(m.group(1)) if m else None


def shape_of(sd, table, ours, ndim):
    """The shape of our key `ours`, which must exist with ndim dimensions."""
    if ours not in sd:
        raise table.missing(ours)
    shape = tuple(sd[ours].shape)
    if len(shape) != ndim:
        raise ConvertError(f'key {table.to_source(ours)} has shape {list(shape)}, expected {ndim} dimensions')
    return shape


def infer_acm(sd, table, path, d, opts, gate_activation, activation):
    """The ACMConfig of the ACM at our path `path`, from its tensor shapes."""
    w1 = shape_of(sd, table, f'{path}.w1', 2)  # [d_in, N*h]
    width = w1[1]
    N = opts.get('num_learners')
    if f'{path}.b2' in sd:  # [(N+1)*d_out]: one output bias per choice
        size = sd[f'{path}.b2'].numel()
        if size % d != 0 or size < 2 * d:
            raise ConvertError(f'key {table.to_source(path + ".b2")} has {size} values, not (N+1)*{d} for N >= 1')
        n = size // d - 1
        if N is not None and N != n:
            raise ConvertError(f'key {table.to_source(path + ".b2")} gives {n} learners, but --num-learners is {N}')
        N = n
    if N is None:
        raise ConvertError(f'key {table.to_source(path + ".w1")}: this ACM has no output bias b2, so its number of '
                           f'learners is not in the checkpoint; pass --num-learners (the reference code\'s num_blocks)')
    if N < 1 or width % N != 0:
        raise ConvertError(f'key {table.to_source(path + ".w1")} has {width} columns, not a multiple of {N} learners')
    gate = f'{path}.gating_network.net'
    depth = 0
    while f'{gate}.{depth}.weight' in sd:
        depth += 1
    if depth == 0:
        raise ConvertError(f'missing key {table.to_source(gate + ".0.weight")}: the ACM at {path} has no gating '
                           f'network (a checkpoint from before the reference code\'s gate training?)')
    last = shape_of(sd, table, f'{gate}.{depth - 1}.weight', 2)  # [N + 1 - k_min, in]
    k_min = N + 1 - last[0]
    if not 0 <= k_min <= N:
        raise ConvertError(f'key {table.to_source(f"{gate}.{depth - 1}.weight")} has {last[0]} outputs; '
                           f'with {N} learners the gate has between 1 and {N + 1}')
    hidden = shape_of(sd, table, f'{gate}.0.weight', 2)[0] if depth > 1 else GateConfig().hidden_dim
    return ACMConfig(num_learners=N, learner_dim=width // N, activation=activation, min_choice=k_min,
                     hidden_bias=f'{path}.b1' in sd, output_bias=f'{path}.b2' in sd,
                     gate=GateConfig(depth=depth, hidden_dim=hidden, activation=gate_activation))


def infer_config(sd, table, num_heads, image_size=None, layer_norm_eps=1e-6, mlp_dim=None, num_learners=None,
                 mlp_activation='gelu', proj_activation='identity', gate_activation='identity'):
    """ViTConfig from the shapes of a state dict in our key names."""
    d, C, p, p2 = shape_of(sd, table, 'conv_proj.weight', 4)  # [d, C, p, p]
    if p != p2:
        raise ConvertError(f'key {table.to_source("conv_proj.weight")}: patches {p}x{p2} are not square')
    _, S, _ = shape_of(sd, table, 'encoder.pos_embedding', 3)  # [1, S, d]
    grid = round((S - 1) ** 0.5)
    if grid * grid != S - 1:
        raise ConvertError(f'key {table.to_source("encoder.pos_embedding")} has {S} positions, not a square grid '
                           f'of patches plus the class token')
    if image_size is not None and image_size != grid * p:
        raise ConvertError(f'--image-size {image_size} disagrees with key {table.to_source("encoder.pos_embedding")}: '
                           f'{S} positions of {p}-pixel patches make {grid * p}')
    classes = shape_of(sd, table, 'heads.head.weight', 2)[0]
    layers = {layer_of(k) for k in sd} - {None}
    if not layers:
        raise ConvertError('no encoder layers in the checkpoint')
    num_layers = max(layers) + 1
    acm = {}
    for path in (f'{layer_path(i)}.{m}' for i in range(num_layers)
                 for m in ['mlp'] + [f'self_attention.{q}' for q in PROJECTIONS]):
        if f'{path}.w1' in sd:
            act = mlp_activation if path.endswith('.mlp') else proj_activation
            acm[path] = infer_acm(sd, table, path, d, dict(num_learners=num_learners), gate_activation, act)
    dense_mlps = [i for i in range(num_layers) if f'{layer_path(i)}.mlp' not in acm]
    if dense_mlps:
        key = f'{layer_path(dense_mlps[0])}.mlp.0.weight'
        D = shape_of(sd, table, key, 2)[0]  # [D, d]
        if mlp_dim is not None and mlp_dim != D:
            raise ConvertError(f'--mlp-dim {mlp_dim} disagrees with key {table.to_source(key)}: {D}')
        mlp_dim = D
    elif mlp_dim is None:  # every MLP is an ACM: mlp_dim is unused, so record N*h
        first = acm[f'{layer_path(0)}.mlp']
        mlp_dim = first.num_learners * first.learner_dim
    try:
        return ViTConfig(image_size=grid * p, patch_size=p, num_channels=C, hidden_dim=d, num_layers=num_layers,
                         num_heads=num_heads, mlp_dim=mlp_dim, num_classes=classes,
                         layer_norm_eps=layer_norm_eps, acm=acm)
    except ValueError as e:
        raise ConvertError(str(e)) from None


# -----------------------------------------------------------------------------
# converters

def expected_keys(model: VisionTransformer, packed_layers):
    """Our keys and shapes, with the attention of packed_layers in torchvision's packed layout."""
    d = model.cfg.hidden_dim
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for i in packed_layers:
        a = f'{layer_path(i)}.self_attention'
        for p in PROJECTIONS:
            del shapes[f'{a}.{p}.weight'], shapes[f'{a}.{p}.bias']
        shapes.update({f'{a}.in_proj_weight': (3 * d, d), f'{a}.in_proj_bias': (3 * d,),
                       f'{a}.out_proj.weight': (d, d), f'{a}.out_proj.bias': (d,)})
    return shapes


def convert(kind, checkpoint, num_heads, **options):
    """A state dict of `kind` ('timm', 'torchvision' or 'acm-reference') -> (our VisionTransformer in eval
    mode, notes). options: those of infer_config. Raises ConvertError naming the checkpoint key at fault."""
    table = TABLES[kind]
    sd, source, notes = rename(checkpoint, table)
    cfg = infer_config(sd, table, num_heads, **options)
    model = VisionTransformer(cfg)
    packed = {layer_of(k) for k in sd if any(k.endswith('self_attention.' + s) for s in PACKED)}
    if any(not cfg.packable(i) for i in packed):
        i = min(i for i in packed if not cfg.packable(i))
        raise ConvertError(f'layer {i} mixes packed attention keys with ACM projections')
    check_keys(sd, source, expected_keys(model, packed), table,
               f'the inferred model ({cfg.num_layers} layers; {len(cfg.acm)} ACMs)')
    model.load_state_dict(unpack_attention(sd, cfg), strict=True)  # copies into f32
    return model.eval(), notes


# -----------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog='python -m acm_tools.convert', description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='kind', required=True)
    for kind in TABLES:
        p = sub.add_parser(kind)
        p.add_argument('--checkpoint', required=True, help='.pth/.bin/.pt (torch.save) or .safetensors')
        p.add_argument('--out', required=True, help='model directory to write')
        p.add_argument('--num-heads', type=int, required=True, help='attention heads (not in a state dict)')
        p.add_argument('--image-size', type=int, help='check: must match the position embedding')
        p.add_argument('--dtype', choices=list(DTYPES), default='F32', help='storage dtype')
        p.add_argument('--layer-norm-eps', type=float, default=1e-6)
        p.add_argument('--unsafe-pickle', action='store_true',
                       help='torch.load(weights_only=False): runs code from the file; only for files you trust')
        if kind == 'acm-reference':
            p.add_argument('--num-learners', type=int,
                           help='N (num_blocks); needed when an ACM has no output bias b2 to infer it from')
            p.add_argument('--mlp-activation', choices=LEARNER_ACTIVATIONS, default='gelu',
                           help='learner activation of MLP ACMs (the paper: gelu)')
            p.add_argument('--proj-activation', choices=LEARNER_ACTIVATIONS, default='identity',
                           help='learner activation of projection ACMs (the paper: identity)')
            p.add_argument('--gate-activation', choices=sorted(ACTIVATIONS), default='identity',
                           help='between gate layers (the reference DeepGumbelGatingNetwork: none)')
            p.add_argument('--mlp-dim', type=int, help='recorded when every MLP is an ACM (default N*h)')
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    options = dict(image_size=args.image_size, layer_norm_eps=args.layer_norm_eps)
    if args.kind == 'acm-reference':
        options.update(num_learners=args.num_learners, mlp_activation=args.mlp_activation,
                       proj_activation=args.proj_activation, gate_activation=args.gate_activation,
                       mlp_dim=args.mlp_dim)
    try:
        checkpoint = read_checkpoint(args.checkpoint, args.unsafe_pickle)
        model, notes = convert(args.kind, checkpoint, args.num_heads, **options)
    except ConvertError as e:
        sys.exit(f'convert: {e}')
    for note in notes:
        print(f'convert: {note}', file=sys.stderr)
    save_model(model, args.out, dtype=args.dtype)
    model = load_model(args.out)  # strict read-back
    cfg = model.cfg
    print(f'wrote {args.out}: ViT d={cfg.hidden_dim} layers={cfg.num_layers} heads={cfg.num_heads} '
          f'patch={cfg.patch_size} image={cfg.image_size} classes={cfg.num_classes}, {len(cfg.acm)} ACMs, '
          f'{args.dtype}')


if __name__ == '__main__':
    main()
