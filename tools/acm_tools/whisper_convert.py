"""
Whisper checkpoints of CTranslate2, Hugging Face and OpenAI into our Whisper model directory
(whisper_format.py, docs/whisper.md).

    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_convert ct2 --model-dir DIR --out OUT
    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_convert hf --model-dir DIR --out OUT
    PYTHONPATH=tools .venv/bin/python -m acm_tools.whisper_convert openai --checkpoint tiny.en.pt \\
        --tokenizer tokenizer.json --generation-config config.json --out OUT

Sources whose layouts the tables below name:
- CTranslate2 model.bin: https://github.com/OpenNMT/CTranslate2/blob/v4.8.5/python/ctranslate2/specs/model_spec.py
  (`_serialize`), read back by src/models/model.cc; Whisper's variables: specs/whisper_spec.py and
  converters/transformers.py (`WhisperLoader`, `set_attention`: q, k, v fused for self-attention, k, v
  for cross-attention, a zero bias standing in for k_proj's missing one)
- Hugging Face:
  https://github.com/huggingface/transformers/blob/v4.46.0/src/transformers/models/whisper/modeling_whisper.py
- OpenAI: https://github.com/openai/whisper/blob/v20240930/whisper/model.py

Each converter renames keys through a declarative table (checkpoint.KeyTable, as convert.py's ViT converters
do) and checks that each source tensor is used exactly once and each of ours has its expected shape; an
unknown, missing or misshapen tensor is an error that names the source's own key.
"""
import argparse
import json
import os
import re
import struct

import numpy as np
import torch

from .checkpoint import ConvertError, KeyTable, check_keys, read_checkpoint, rename
from .whisper_format import WHISPER_FIELDS, Generation, WhisperConfig, expected_shapes, save_whisper

MULTILINGUAL_VOCAB = 51865  # openai-whisper and CTranslate2: a vocabulary this large is multilingual


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
# key tables (checkpoint.KeyTable): (checkpoint key, our key); a {name} placeholder is one of checkpoint.FIELDS

HL = 'model.{side}.layers.{i}.'  # Hugging Face's (and our) layer prefix
CL = '{side}/layer_{i}/'  # CTranslate2's
OB = '{side}.blocks.{i}.'  # openai-whisper's

# CTranslate2 fuses projections: each fused linear goes to a name of CT2_FUSED, which unfuse() splits.
CT2_KEYS = [
    ('encoder/conv{c}/{s}', 'model.encoder.conv{c}.{s}'),
    ('{side}/position_encodings/encodings', 'model.{side}.embed_positions.weight'),
    ('decoder/embeddings/weight', 'model.decoder.embed_tokens.weight'),
    ('{side}/layer_norm/gamma', 'model.{side}.layer_norm.weight'),
    ('{side}/layer_norm/beta', 'model.{side}.layer_norm.bias'),
    (CL + 'self_attention/layer_norm/gamma', HL + 'self_attn_layer_norm.weight'),
    (CL + 'self_attention/layer_norm/beta', HL + 'self_attn_layer_norm.bias'),
    (CL + 'self_attention/linear_0/{s}', HL + 'self_attn.qkv_proj.{s}'),
    (CL + 'self_attention/linear_1/{s}', HL + 'self_attn.out_proj.{s}'),
    (CL + 'attention/layer_norm/gamma', HL + 'encoder_attn_layer_norm.weight'),
    (CL + 'attention/layer_norm/beta', HL + 'encoder_attn_layer_norm.bias'),
    (CL + 'attention/linear_0/{s}', HL + 'encoder_attn.q_proj.{s}'),
    (CL + 'attention/linear_1/{s}', HL + 'encoder_attn.kv_proj.{s}'),
    (CL + 'attention/linear_2/{s}', HL + 'encoder_attn.out_proj.{s}'),
    (CL + 'ffn/layer_norm/gamma', HL + 'final_layer_norm.weight'),
    (CL + 'ffn/layer_norm/beta', HL + 'final_layer_norm.bias'),
    (CL + 'ffn/linear_0/{s}', HL + 'fc1.{s}'),
    (CL + 'ffn/linear_1/{s}', HL + 'fc2.{s}'),
]
CT2_DROPPED = [
    (r'^(encoder|decoder)/num_heads$', 'read by ct2_config'),
    (r'^decoder/alignment_(heads|layer)$', 'word timestamps: not used'),
]
# a fused linear -> the projections it holds, in order along its output dimension
CT2_FUSED = {'self_attn.qkv_proj': ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
             'encoder_attn.kv_proj': ['encoder_attn.k_proj', 'encoder_attn.v_proj']}
FUSED_INTO = {part: fused for fused, parts in CT2_FUSED.items() for part in parts}

OPENAI_KEYS = [
    ('encoder.conv{c}.{s}', 'model.encoder.conv{c}.{s}'),
    ('encoder.positional_embedding', 'model.encoder.embed_positions.weight'),
    ('decoder.positional_embedding', 'model.decoder.embed_positions.weight'),
    ('decoder.token_embedding.weight', 'model.decoder.embed_tokens.weight'),
    ('encoder.ln_post.{s}', 'model.encoder.layer_norm.{s}'),
    ('decoder.ln.{s}', 'model.decoder.layer_norm.{s}'),
    (OB + 'attn_ln.{s}', HL + 'self_attn_layer_norm.{s}'),
    (OB + 'attn.query.{s}', HL + 'self_attn.q_proj.{s}'),
    (OB + 'attn.key.{s}', HL + 'self_attn.k_proj.{s}'),
    (OB + 'attn.value.{s}', HL + 'self_attn.v_proj.{s}'),
    (OB + 'attn.out.{s}', HL + 'self_attn.out_proj.{s}'),
    (OB + 'cross_attn_ln.{s}', HL + 'encoder_attn_layer_norm.{s}'),
    (OB + 'cross_attn.query.{s}', HL + 'encoder_attn.q_proj.{s}'),
    (OB + 'cross_attn.key.{s}', HL + 'encoder_attn.k_proj.{s}'),
    (OB + 'cross_attn.value.{s}', HL + 'encoder_attn.v_proj.{s}'),
    (OB + 'cross_attn.out.{s}', HL + 'encoder_attn.out_proj.{s}'),
    (OB + 'mlp_ln.{s}', HL + 'final_layer_norm.{s}'),
    (OB + 'mlp.0.{s}', HL + 'fc1.{s}'),
    (OB + 'mlp.2.{s}', HL + 'fc2.{s}'),
]

# Hugging Face's keys are ours (OPENAI_KEYS' right-hand side), less the logits' weight, tied to the embeddings
HF_KEYS = [(ours, ours) for _, ours in OPENAI_KEYS]
HF_DROPPED = [(r'^proj_out\.weight$', 'tied to model.decoder.embed_tokens.weight')]

CT2_TABLE = KeyTable(CT2_KEYS, dropped=CT2_DROPPED)
OPENAI_TABLE = KeyTable(OPENAI_KEYS)
HF_TABLE = KeyTable(HF_KEYS, dropped=HF_DROPPED)


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
            raise ConvertError(f'{path}: string at byte {pos} lacks its NUL')
        s = data[pos:pos + n - 1].decode('utf-8')
        pos += n
        return s

    version = take('I')
    if not 4 <= version <= 6:
        raise ConvertError(f'{path}: CTranslate2 binary version {version} is not 4 to 6')
    spec, revision = string(), take('I')
    variables = {}
    for _ in range(take('I')):
        name = string()
        rank = take('B')
        dims = [take('I') for _ in range(rank)]
        dtype, nbytes = take('B'), take('I')
        if dtype not in CT2_DTYPES:
            raise ConvertError(f'{path}: variable {name} has unknown dtype id {dtype}')
        t = torch.frombuffer(bytearray(data[pos:pos + nbytes]), dtype=CT2_DTYPES[dtype])
        if t.numel() != int(np.prod(dims)):
            raise ConvertError(f'{path}: variable {name} has {nbytes} bytes for shape {dims}')
        variables[name] = t.reshape(dims)
        pos += nbytes
    aliases = {}
    for _ in range(take('I')):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise ConvertError(f'{path}: {len(data) - pos} bytes after the aliases')
    return spec, revision, variables, aliases


# Scalars of the spec that must hold these values for the model to be Whisper as we run it.
CT2_FLAGS = {
    'decoder/activation': 3,  # common_spec.Activation.GELU (exact, erf)
    'decoder/pre_norm': 1, 'decoder/scale_embeddings': 0, 'decoder/alibi': 0,
    'decoder/start_from_zero_embedding': 0,
}
CT2_OPTIONAL_FLAGS = {'decoder/alibi_use_positive_positions': 0, 'decoder/scale_alibi': 0}  # newer writers add them
CT2_REVISION = 3  # specs/whisper_spec.py, WhisperSpec.revision
CT2_ALIASES = {'decoder/projection/weight': 'decoder/embeddings/weight'}  # logits tied to the embeddings


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


def fused_shapes(cfg: WhisperConfig):
    """expected_shapes with CTranslate2's fused linears in place of their projections: n of them as one weight
    [n·d, d] and one bias [n·d] (k_proj's stand-in zeros included)."""
    shapes = {}
    for name, shape in expected_shapes(cfg).items():
        *layer, module, projection, param = name.split('.')  # model.{side}.layers.{i}, self_attn, q_proj, weight
        fused = FUSED_INTO.get(f'{module}.{projection}')
        if fused is None:
            shapes[name] = shape
        else:
            shapes['.'.join(layer + [fused, param])] = [len(CT2_FUSED[fused]) * cfg.d_model, *shape[1:]]
    return shapes


def unfuse(sd, source):
    """Split each fused linear along its output dimension into its projections; k_proj's part of the bias
    must be zero (Whisper's k_proj has no bias) and is dropped."""
    tensors = {}
    for name, t in sd.items():
        *layer, module, projection, param = name.split('.')
        parts = CT2_FUSED.get(f'{module}.{projection}')
        if parts is None:
            tensors[name] = t
            continue
        for part, chunk in zip(parts, t.chunk(len(parts))):  # [n·d, ...] -> n × [d, ...]
            if part.endswith('k_proj') and param == 'bias':
                if torch.any(chunk != 0):
                    raise ConvertError(f'model.bin: the k_proj part of {source[name]} is not zero')
                continue
            tensors['.'.join(layer + [part, param])] = chunk.clone()
    return tensors


def from_ct2(variables, aliases):
    """CTranslate2 Whisper variables -> (WhisperConfig, {our name: tensor})."""
    for name, value in CT2_FLAGS.items():
        if name not in variables or int(variables[name]) != value:
            raise ConvertError(f'model.bin: {name} is {variables.get(name)}, expected {value}')
    for name, value in CT2_OPTIONAL_FLAGS.items():
        if name in variables and int(variables[name]) != value:
            raise ConvertError(f'model.bin: {name} is {variables[name]}, expected {value}')
    if aliases != CT2_ALIASES:
        raise ConvertError(f'model.bin: aliases {aliases}, expected {CT2_ALIASES}')
    cfg = ct2_config(variables)
    flags = CT2_FLAGS.keys() | CT2_OPTIONAL_FLAGS.keys()
    sd, source, _ = rename({k: v for k, v in variables.items() if k not in flags}, CT2_TABLE)
    check_keys(sd, source, fused_shapes(cfg), CT2_TABLE, 'any layer')
    return cfg, unfuse(sd, source)


def convert_ct2(model_dir, out_dir):
    """A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json) -> our model directory."""
    spec, revision, variables, aliases = read_ct2(os.path.join(model_dir, 'model.bin'))
    if spec != 'WhisperSpec' or revision != CT2_REVISION:
        raise ConvertError(f'model.bin holds a {spec} revision {revision}, not a WhisperSpec revision {CT2_REVISION}')
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
            raise ConvertError(f'config.json: {name} is {obj[name]!r}, expected {value!r}')
    names = [n for n in WHISPER_FIELDS if n != 'layer_norm_eps']
    missing = [n for n in names if n not in obj]
    if missing:
        raise ConvertError(f'config.json: missing {missing}')
    return WhisperConfig(**{n: obj[n] for n in names})


def from_hf(state_dict, cfg: WhisperConfig):
    """A WhisperForConditionalGeneration state dict -> {our name: tensor}: the same names, less the tied
    proj_out.weight (which must equal the token embeddings)."""
    sd, source, _ = rename(state_dict, HF_TABLE)
    check_keys(sd, source, expected_shapes(cfg), HF_TABLE, 'any layer')
    proj = state_dict.get('proj_out.weight')
    if proj is not None and not torch.equal(proj, sd['model.decoder.embed_tokens.weight']):
        raise ConvertError('proj_out.weight is not tied to model.decoder.embed_tokens.weight')
    return sd


def convert_hf(model_dir, out_dir):
    """A Hugging Face Whisper directory (config.json, model.safetensors or pytorch_model.bin, tokenizer.json,
    generation_config.json if present) -> our model directory."""
    with open(os.path.join(model_dir, 'config.json')) as f:
        hf = json.load(f)
    cfg = hf_config(hf)
    st, pt = os.path.join(model_dir, 'model.safetensors'), os.path.join(model_dir, 'pytorch_model.bin')
    state_dict = read_checkpoint(st if os.path.exists(st) else pt)
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

# ModelDimensions -> ours (encoder and decoder share n_audio_state / n_text_state: Whisper's d_model)
OPENAI_DIMS = {
    'n_mels': 'num_mel_bins', 'n_audio_ctx': 'max_source_positions', 'n_audio_state': 'd_model',
    'n_audio_head': 'encoder_attention_heads', 'n_audio_layer': 'encoder_layers', 'n_vocab': 'vocab_size',
    'n_text_ctx': 'max_target_positions', 'n_text_head': 'decoder_attention_heads',
    'n_text_layer': 'decoder_layers',
}


def openai_config(dims):
    if dims['n_text_state'] != dims['n_audio_state']:
        raise ConvertError(f'dims: n_text_state {dims["n_text_state"]} != n_audio_state {dims["n_audio_state"]}')
    kw = {ours: dims[theirs] for theirs, ours in OPENAI_DIMS.items()}
    return WhisperConfig(**kw, encoder_ffn_dim=4 * kw['d_model'], decoder_ffn_dim=4 * kw['d_model'])


def from_openai(checkpoint):
    """{'dims', 'model_state_dict'} -> (WhisperConfig, {our name: tensor})."""
    cfg = openai_config(checkpoint['dims'])
    sd, source, _ = rename(checkpoint['model_state_dict'], OPENAI_TABLE)
    check_keys(sd, source, expected_shapes(cfg), OPENAI_TABLE, 'any layer')
    return cfg, sd


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
# command line

def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m acm_tools.whisper_convert', description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='kind', required=True)
    c = sub.add_parser('ct2', help='a CTranslate2 Whisper directory')
    c.add_argument('--model-dir', required=True, help='with model.bin, config.json, tokenizer.json')
    c.add_argument('--out', required=True)
    h = sub.add_parser('hf', help='a Hugging Face Whisper directory')
    h.add_argument('--model-dir', required=True,
                   help='with config.json, model.safetensors or pytorch_model.bin, tokenizer.json, '
                        'generation_config.json (optional)')
    h.add_argument('--out', required=True)
    o = sub.add_parser('openai', help='an OpenAI whisper .pt checkpoint')
    o.add_argument('--checkpoint', required=True)
    o.add_argument('--tokenizer', required=True, help="the model's Hugging Face tokenizer.json")
    o.add_argument('--generation-config', required=True,
                   help='generation_config.json (Hugging Face) or config.json (CTranslate2) with the suppress lists')
    o.add_argument('--out', required=True)
    args = p.parse_args(argv)
    if args.kind == 'ct2':
        convert_ct2(args.model_dir, args.out)
    elif args.kind == 'hf':
        convert_hf(args.model_dir, args.out)
    else:
        convert_openai(args.checkpoint, args.tokenizer, args.generation_config, args.out)


if __name__ == '__main__':
    main()
