"""
The acm-serve model format for Whisper (docs/whisper.md): a directory with config.json, model.safetensors
(Hugging Face WhisperForConditionalGeneration's tensor names, F16) and tokenizer.json.

save_whisper writes it; load_whisper reads it back strictly, with modelio.py's checks of the ViT's directory:
a missing tensor, a tensor no layer uses, a wrong shape or a dtype other than F16 is an error that names the
tensor, and so is an unknown or missing config.json field. A layer whose MLP is an ACM (config.json's `acm`)
stores the ACM's tensors under the layer's path in place of fc1 and fc2. The converters into it:
whisper_convert.py.

Tensor names and hyperparameters:
https://github.com/huggingface/transformers/blob/v4.46.0/src/transformers/models/whisper/modeling_whisper.py
"""
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .modelio import (FORMAT, FORMAT_VERSION, ModelFormatError, acm_from_json, acm_shapes, acm_to_json,
                      check_fields, check_header, check_tensors, read_config, to_stored)

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
    # layer path (model.{encoder,decoder}.layers.{i}) -> the ACMConfig of the ACM that is its MLP; config.json's
    # `acm`, not a Hugging Face field
    acm: dict = field(default_factory=dict)

    def __post_init__(self):
        allowed = set(self.layer_paths())
        for path, c in self.acm.items():
            if path not in allowed:
                raise ValueError(f'acm entry {path!r} is not a layer of this Whisper (model.{{encoder,decoder}}.layers.{{i}})')
            if c.activation != 'gelu':
                raise ValueError(f'acm entry {path!r}: an MLP\'s learners use gelu, not {c.activation!r}')

    def layer_paths(self):
        """Every layer, whose MLP may be an ACM, in model order."""
        return ([f'model.encoder.layers.{i}' for i in range(self.encoder_layers)]
                + [f'model.decoder.layers.{i}' for i in range(self.decoder_layers)])


# config.json's `whisper` fields: Hugging Face's names
WHISPER_FIELDS = [f.name for f in fields(WhisperConfig) if f.name != 'acm']


@dataclass
class Generation:
    """How to decode: the forced prompt, the tokens never generated, those not generated first, and when to decode a
    window again at a higher temperature. Configs without the fallback's keys get its defaults."""
    decoder_start_token_id: int
    eos_token_id: int
    no_timestamps_token_id: int
    prompt: list
    suppress_tokens: list
    begin_suppress_tokens: list
    max_new_tokens: int
    # openai-whisper's fallback (docs/whisper.md#decoding): the temperatures a window is sampled at, in turn, while
    # its text is more repetitive than compression_ratio_threshold or less likely than logprob_threshold (None: no
    # such check)
    temperature_fallback: list = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = None


# -----------------------------------------------------------------------------
# tensors

def expected_shapes(cfg: WhisperConfig):
    """{tensor name: shape} of a Whisper model directory, in model order; an ACM layer's MLP is its ACM's
    tensors, under the layer's own path."""
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
        if p in cfg.acm:
            s.update(acm_shapes(p, cfg.acm[p], d, d))
        else:
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
        'whisper': {name: getattr(cfg, name) for name in WHISPER_FIELDS},
        'acm': {p: acm_to_json(cfg.acm[p]) for p in cfg.layer_paths() if p in cfg.acm},
        'generation': asdict(gen),
    }


def config_from_json(obj):
    """config.json object -> (WhisperConfig, Generation), strictly; the fallback's keys may be absent (their
    defaults) or null (no such check), as in the engine."""
    check_fields(obj, 'config', ['format', 'format_version', 'architecture', 'whisper', 'acm', 'generation'])
    check_header(obj, ARCHITECTURE)
    check_fields(obj['whisper'], 'whisper', WHISPER_FIELDS)
    fallback = ['temperature_fallback', 'compression_ratio_threshold', 'logprob_threshold']
    check_fields(obj['generation'], 'generation', [f.name for f in fields(Generation) if f.name not in fallback],
                 optional=fallback)
    try:
        cfg = WhisperConfig(**obj['whisper'], acm=acm_from_json(obj['acm']))
    except ValueError as e:
        raise ModelFormatError(f'config.json: {e}') from None
    return cfg, Generation(**obj['generation'])


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
