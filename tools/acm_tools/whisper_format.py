"""
The acm-serve model format for Whisper (docs/whisper.md): a directory with config.json, model.safetensors
(Hugging Face WhisperForConditionalGeneration's tensor names, F16) and tokenizer.json.

save_whisper writes it; load_whisper reads it back strictly, with modelio.py's checks of the ViT's directory:
a missing tensor, a tensor no layer uses, a wrong shape or a dtype other than F16 is an error that names the
tensor, and so is an unknown or missing config.json field. The converters into it: whisper_convert.py.

Tensor names and hyperparameters:
https://github.com/huggingface/transformers/blob/v4.46.0/src/transformers/models/whisper/modeling_whisper.py
"""
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .modelio import (FORMAT, FORMAT_VERSION, ModelFormatError, check_fields, check_header, check_tensors,
                      read_config, to_stored)

ARCHITECTURE = 'whisper'


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
# tensors

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
    def layer(p, ffn, cross_attention):
        attention(f'{p}.self_attn')
        norm(f'{p}.self_attn_layer_norm')
        if cross_attention:
            attention(f'{p}.encoder_attn')
            norm(f'{p}.encoder_attn_layer_norm')
        linear(f'{p}.fc1', ffn, d)
        linear(f'{p}.fc2', d, ffn)
        norm(f'{p}.final_layer_norm')

    for i in range(cfg.encoder_layers):
        layer(f'model.encoder.layers.{i}', cfg.encoder_ffn_dim, cross_attention=False)
    norm('model.encoder.layer_norm')
    s['model.decoder.embed_tokens.weight'] = [cfg.vocab_size, d]
    s['model.decoder.embed_positions.weight'] = [cfg.max_target_positions, d]
    for i in range(cfg.decoder_layers):
        layer(f'model.decoder.layers.{i}', cfg.decoder_ffn_dim, cross_attention=True)
    norm('model.decoder.layer_norm')
    return s


# -----------------------------------------------------------------------------
# config.json

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
    check_fields(obj, 'config', ['format', 'format_version', 'architecture', 'whisper', 'acm', 'generation'])
    check_header(obj, ARCHITECTURE)
    if obj['acm'] != {}:
        raise ModelFormatError('config.json: ACM layers in Whisper are not supported yet')
    check_fields(obj['whisper'], 'whisper', [f.name for f in fields(WhisperConfig)])
    check_fields(obj['generation'], 'generation', [f.name for f in fields(Generation)])
    return WhisperConfig(**obj['whisper']), Generation(**obj['generation'])


# -----------------------------------------------------------------------------
# save / load

def save_whisper(dir, cfg: WhisperConfig, gen: Generation, tensors, tokenizer_json):
    """Write config.json, model.safetensors (F16; safetensors orders the tensors by name) and a copy of
    tokenizer.json into dir."""
    check_tensors(tensors, expected_shapes(cfg), where='converted model')
    sd = to_stored(tensors, 'F16')
    os.makedirs(dir, exist_ok=True)
    obj = config_to_json(cfg, gen)
    with open(os.path.join(dir, 'config.json'), 'w') as f:  # a section a line
        f.write('{\n' + ',\n'.join(f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in obj.items()) + '\n}\n')
    save_file(sd, os.path.join(dir, 'model.safetensors'), metadata={'format': 'pt'})
    os.chmod(os.path.join(dir, 'model.safetensors'), 0o644)  # safetensors writes 0600
    shutil.copyfile(tokenizer_json, os.path.join(dir, 'tokenizer.json'))


def load_whisper(dir):
    """A model directory -> (WhisperConfig, Generation, {name: F16 tensor}), checked strictly."""
    cfg, gen = config_from_json(read_config(dir))
    tensors = load_file(os.path.join(dir, 'model.safetensors'))
    check_tensors(tensors, expected_shapes(cfg), where='model.safetensors')
    for k, v in tensors.items():
        if v.dtype != torch.float16:
            raise ModelFormatError(f'model.safetensors: tensor {k} is {v.dtype}, expected F16')
    return cfg, gen, tensors


def is_complete(dir):
    """Whether dir holds a whole model: a valid config.json, tokenizer.json, and every tensor's header
    entry (without reading the weights)."""
    try:
        cfg, _ = config_from_json(read_config(dir))
        with safe_open(os.path.join(dir, 'model.safetensors'), framework='pt') as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        with open(os.path.join(dir, 'tokenizer.json')) as f:
            json.load(f)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return shapes == expected_shapes(cfg)
