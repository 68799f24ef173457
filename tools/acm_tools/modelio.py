"""
The acm-serve model format (docs/model-format.md): a directory with config.json and model.safetensors.

save_model writes it; load_model reads it back strictly: a missing tensor, a tensor no layer uses, a wrong
shape or an unsupported dtype is an error that names the tensor, and so is an unknown config.json field.
Whisper's directory (whisper_format.py) is the same format with another architecture: it uses the header,
field, tensor and storage checks here.
"""
import json
import os
from dataclasses import fields

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .acm import ACMConfig, GateConfig
from .vit import ViTConfig, VisionTransformer, pack_attention, unpack_attention

FORMAT, FORMAT_VERSION, ARCHITECTURE = 'acm-serve', 1, 'vit'
DTYPES = {'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
VIT_FIELDS = [f.name for f in fields(ViTConfig) if f.name != 'acm']
ACM_FIELDS = ['num_learners', 'learner_dim', 'activation', 'min_choice', 'hidden_bias', 'output_bias', 'gate']
GATE_FIELDS = ['depth', 'hidden_dim', 'activation']
PREPROCESSING_FIELDS = ['color', 'resize', 'crop', 'mean', 'std']


class ModelFormatError(ValueError):
    pass


# -----------------------------------------------------------------------------
# config.json

def config_to_json(cfg: ViTConfig, preprocessing=None, labels=None):
    """The config.json object, keys in the order of docs/model-format.md."""
    obj = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'architecture': ARCHITECTURE,
        'vit': {name: getattr(cfg, name) for name in VIT_FIELDS},
        'acm': {},
    }
    for path in cfg.acm_paths():  # model order
        if path in cfg.acm:
            obj['acm'][path] = acm_to_json(cfg.acm[path])
    if preprocessing is not None:
        check_preprocessing(preprocessing, cfg)
        obj['preprocessing'] = {name: preprocessing[name] for name in PREPROCESSING_FIELDS}
    if labels is not None:
        check_labels(labels, cfg)
        obj['labels'] = list(labels)
    return obj


def acm_to_json(a: ACMConfig):
    """One `acm` entry of config.json."""
    entry = {name: getattr(a, name) for name in ACM_FIELDS if name != 'gate'}
    entry['gate'] = {name: getattr(a.gate, name) for name in GATE_FIELDS}
    if a.budget_share is not None:
        entry['budget_share'] = a.budget_share
    return entry


def acm_from_json(entries):
    """config.json's `acm` object -> {path: ACMConfig}, each entry's fields checked strictly (which paths a
    model allows is the model's to check)."""
    if not isinstance(entries, dict):
        raise ModelFormatError('config.json: acm must be an object')
    acm = {}
    for path, entry in entries.items():
        check_fields(entry, f'acm[{path!r}]', ACM_FIELDS, ['budget_share'])
        check_fields(entry['gate'], f'acm[{path!r}].gate', GATE_FIELDS)
        try:
            acm[path] = ACMConfig(**{**entry, 'gate': GateConfig(**entry['gate'])})
        except ValueError as e:
            raise ModelFormatError(f'config.json: acm[{path!r}]: {e}') from None
    return acm


def acm_shapes(prefix, a: ACMConfig, d_in, d_out):
    """{tensor name: shape} of the ACM at prefix (docs/model-format.md), the names of acm.ACM's state dict."""
    N, h = a.num_learners, a.learner_dim
    s = {f'{prefix}.w1': [d_in, N * h]}
    if a.hidden_bias:
        s[f'{prefix}.b1'] = [N * h]
    s[f'{prefix}.w2'] = [N * h, d_out]
    if a.output_bias:
        s[f'{prefix}.b2'] = [(N + 1) * d_out]
    dims = [d_in] + [a.gate.hidden_dim] * (a.gate.depth - 1) + [a.num_choices]
    for j, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        s[f'{prefix}.gating_network.net.{j}.weight'] = [n_out, n_in]
        s[f'{prefix}.gating_network.net.{j}.bias'] = [n_out]
    return s


def check_fields(obj, where, required, optional=()):
    if not isinstance(obj, dict):
        raise ModelFormatError(f'config.json: {where} must be an object')
    for name in obj:
        if name not in required and name not in optional:
            raise ModelFormatError(f'config.json: unknown field {where}.{name}')
    for name in required:
        if name not in obj:
            raise ModelFormatError(f'config.json: missing field {where}.{name}')


def check_preprocessing(pre, cfg: ViTConfig):
    check_fields(pre, 'preprocessing', PREPROCESSING_FIELDS)
    channels = {'grey': 1, 'rgb': 3}
    if pre['color'] not in channels:
        raise ModelFormatError(f'config.json: preprocessing.color {pre["color"]!r} is not grey or rgb')
    if channels[pre['color']] != cfg.num_channels:
        raise ModelFormatError(f'config.json: preprocessing.color {pre["color"]!r} does not give '
                               f'{cfg.num_channels} channels')
    for name in ('resize', 'crop'):
        if not isinstance(pre[name], int) or pre[name] < 1:
            raise ModelFormatError(f'config.json: preprocessing.{name} must be a positive integer')
    if pre['crop'] != cfg.image_size:
        raise ModelFormatError(f'config.json: preprocessing.crop {pre["crop"]} is not image_size {cfg.image_size}')
    for name in ('mean', 'std'):
        if len(pre[name]) != cfg.num_channels:
            raise ModelFormatError(f'config.json: preprocessing.{name} needs {cfg.num_channels} values')
    if any(s <= 0 for s in pre['std']):
        raise ModelFormatError('config.json: preprocessing.std must be positive')


def check_labels(labels, cfg: ViTConfig):
    if len(labels) != cfg.num_classes or not all(isinstance(l, str) for l in labels):
        raise ModelFormatError(f'config.json: labels must be {cfg.num_classes} strings')


def check_header(obj, architecture):
    """config.json's format, format_version and architecture (their presence: check_fields)."""
    if obj['format'] != FORMAT or obj['format_version'] != FORMAT_VERSION:
        raise ModelFormatError(f'config.json: format {obj["format"]!r} version {obj["format_version"]!r} '
                               f'is not {FORMAT!r} version {FORMAT_VERSION}')
    if obj['architecture'] != architecture:
        raise ModelFormatError(f'config.json: architecture {obj["architecture"]!r} is not {architecture!r}')


def config_from_json(obj):
    """config.json object -> (ViTConfig, preprocessing or None, labels or None), strictly."""
    check_fields(obj, 'config', ['format', 'format_version', 'architecture', 'vit', 'acm'],
                 ['preprocessing', 'labels'])
    check_header(obj, ARCHITECTURE)
    check_fields(obj['vit'], 'vit', [n for n in VIT_FIELDS if n != 'layer_norm_eps'], ['layer_norm_eps'])
    acm = acm_from_json(obj['acm'])
    try:
        cfg = ViTConfig(**obj['vit'], acm=acm)
    except ValueError as e:
        raise ModelFormatError(f'config.json: {e}') from None
    pre, labels = obj.get('preprocessing'), obj.get('labels')
    if pre is not None:
        check_preprocessing(pre, cfg)
    if labels is not None:
        check_labels(labels, cfg)
    return cfg, pre, labels


# -----------------------------------------------------------------------------
# save / load

def save_model(model: VisionTransformer, dir, dtype='F32', packed_attention=False, preprocessing=None, labels=None):
    """Write config.json and model.safetensors into dir. dtype: 'F32', 'F16' or 'BF16' storage.
    packed_attention: store the attention of layers without ACM projections in torchvision's packed layout.
    preprocessing, labels: the optional config.json entries (default: the model's own, if any)."""
    if dtype not in DTYPES:
        raise ModelFormatError(f'dtype {dtype!r} is not one of {list(DTYPES)}')
    cfg = model.cfg
    preprocessing = preprocessing if preprocessing is not None else model.preprocessing
    labels = labels if labels is not None else model.labels
    obj = config_to_json(cfg, preprocessing, labels)
    sd = to_stored(model.state_dict(), dtype)
    if packed_attention:
        sd = pack_attention(sd, cfg)
    os.makedirs(dir, exist_ok=True)
    with open(os.path.join(dir, 'config.json'), 'w') as f:
        f.write(json.dumps(obj, indent=2) + '\n')
    save_file(sd, os.path.join(dir, 'model.safetensors'), metadata={'format': 'pt'})


def to_stored(tensors, dtype):
    """{name: tensor} -> the same, contiguous on the CPU as dtype ('F32', 'F16' or 'BF16'); a tensor that does
    not fit (inf or NaN) is an error that names it."""
    sd = {k: v.detach().to('cpu', DTYPES[dtype]).contiguous() for k, v in tensors.items()}
    for k, v in sd.items():
        if not torch.isfinite(v).all():
            raise ModelFormatError(f'tensor {k} is not finite as {dtype}')
    return sd


def read_config(dir):
    """dir's config.json as a JSON object (its fields unchecked)."""
    with open(os.path.join(dir, 'config.json')) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ModelFormatError(f'config.json is not JSON: {e}') from None


def read_tensors(path):
    """model.safetensors -> {name: tensor in its stored dtype}; an unsupported dtype names the tensor."""
    tensors = {}
    with safe_open(path, framework='pt') as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if t.dtype not in DTYPE_NAMES:
                raise ModelFormatError(f'tensor {name} has unsupported dtype {t.dtype} (F32, F16 or BF16 only)')
            tensors[name] = t
    return tensors


def check_tensors(tensors, shapes, where=None):
    """Strict loading: every tensor of shapes ({name: shape as a list}) present, no other, each with its
    shape. where prefixes the message (default: none)."""
    at = f'{where}: ' if where else ''
    for name in shapes:
        if name not in tensors:
            raise ModelFormatError(f'{at}missing tensor {name}')
    for name in tensors:
        if name not in shapes:
            raise ModelFormatError(f'{at}tensor {name} is not used by any layer')
    for name, shape in shapes.items():
        if list(tensors[name].shape) != shape:
            raise ModelFormatError(f'{at}tensor {name} has shape {list(tensors[name].shape)}, expected {shape}')


def load_state_dict_strict(model: VisionTransformer, tensors):
    """Load stored tensors (either attention layout) into model as its dtype, checking every key and shape."""
    try:
        sd = unpack_attention(tensors, model.cfg)
    except ValueError as e:
        raise ModelFormatError(str(e)) from None
    expected = model.state_dict()
    check_tensors(sd, {k: list(v.shape) for k, v in expected.items()})
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)


def load_model(dir):
    """Read a model directory back as a float32 VisionTransformer in eval mode (weights exactly as stored,
    widened to f32). Its preprocessing and labels are on model.preprocessing and model.labels."""
    cfg, pre, labels = config_from_json(read_config(dir))
    model = VisionTransformer(cfg)
    load_state_dict_strict(model, read_tensors(os.path.join(dir, 'model.safetensors')))
    model.preprocessing, model.labels = pre, labels
    return model.eval()
