"""Whisper's model directory: save_whisper and load_whisper round trip, strict loading errors that name the
tensor or field, and the bundled tiny.en stored as F16."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from acm_tools import whisper_tiny_en
from acm_tools.modelio import ModelFormatError
from acm_tools.whisper_format import (Generation, WhisperConfig, expected_shapes, is_complete, load_whisper,
                                      save_whisper)
from edits import edit_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, whisper_tiny_en.out)
CFG = WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
                    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=32, max_source_positions=12,
                    max_target_positions=10, vocab_size=40)
GEN = Generation(decoder_start_token_id=37, eos_token_id=36, no_timestamps_token_id=39, prompt=[37, 39],
                 suppress_tokens=[1, 2], begin_suppress_tokens=[3, 36], max_new_tokens=5)


def saved(tmp_path):
    """A small random Whisper saved into tmp_path / 'm' -> (dir, its tensors as given, in F32)."""
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(shape, generator=g) for k, shape in expected_shapes(CFG).items()}
    tokenizer = tmp_path / 'tokenizer.json'
    tokenizer.write_text(json.dumps({'added_tokens': []}))
    save_whisper(str(tmp_path / 'm'), CFG, GEN, tensors, str(tokenizer))
    return str(tmp_path / 'm'), tensors


def test_round_trip(tmp_path):
    """Should load back the config, the generation settings and every tensor as F16."""
    d, tensors = saved(tmp_path)
    cfg, gen, got = load_whisper(d)
    assert (cfg, gen) == (CFG, GEN)
    assert sorted(got) == sorted(tensors)
    for k, t in tensors.items():
        assert got[k].dtype == torch.float16 and torch.equal(got[k], t.half()), k
    with open(os.path.join(d, 'config.json')) as f:
        assert list(json.load(f)) == ['format', 'format_version', 'architecture', 'whisper', 'acm', 'generation']
    assert is_complete(d)


def edit_tensors(d, edit):
    path = os.path.join(d, 'model.safetensors')
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)




CORRUPTIONS = {  # name: (what to change, the error it must raise)
    'missing tensor': (lambda d: edit_tensors(d, lambda t: t.pop('model.decoder.layers.0.fc2.bias')),
                       'model.safetensors: missing tensor model.decoder.layers.0.fc2.bias'),
    'unused tensor': (lambda d: edit_tensors(d, lambda t: t.update(
        {'model.encoder.layers.1.self_attn.k_proj.bias': torch.zeros(16, dtype=torch.float16)})),
        'tensor model.encoder.layers.1.self_attn.k_proj.bias is not used by any layer'),
    'wrong shape': (lambda d: edit_tensors(d, lambda t: t.update(
        {'model.encoder.conv1.bias': torch.zeros(15, dtype=torch.float16)})),
        r'tensor model.encoder.conv1.bias has shape \[15\], expected \[16\]'),
    'F32': (lambda d: edit_tensors(d, lambda t: t.update(
        {'model.decoder.layer_norm.weight': t['model.decoder.layer_norm.weight'].float()})),
        'tensor model.decoder.layer_norm.weight is torch.float32, expected F16'),
    'unknown field': (lambda d: edit_config(d, lambda o: o['whisper'].update(dropout=0.0)),
                      'unknown field whisper.dropout'),
    'missing field': (lambda d: edit_config(d, lambda o: o['generation'].pop('prompt')),
                      'missing field generation.prompt'),
    'architecture': (lambda d: edit_config(d, lambda o: o.update(architecture='vit')),
                     "architecture 'vit' is not 'whisper'"),
    'ACM': (lambda d: edit_config(d, lambda o: o['acm'].update({'model.encoder.layers.0': {}})),
            'ACM layers in Whisper are not supported yet'),
}


@pytest.mark.parametrize('name', list(CORRUPTIONS))
def test_load_is_strict(tmp_path, name):
    """Should refuse a missing, unused, misshapen or F32 tensor and an unknown or missing config.json field, an
    architecture other than whisper and ACM layers, naming what is at fault."""
    d, _ = saved(tmp_path)
    corrupt, error = CORRUPTIONS[name]
    corrupt(d)
    with pytest.raises(ModelFormatError, match=error):
        load_whisper(d)


def test_save_refuses_what_f16_cannot_hold(tmp_path):
    """Should refuse a tensor that overflows F16, naming it, and write nothing."""
    tensors = {k: torch.zeros(shape) for k, shape in expected_shapes(CFG).items()}
    tensors['model.encoder.layers.0.fc1.weight'][0, 0] = 1e5  # F16's largest is 65504
    with pytest.raises(ModelFormatError, match='tensor model.encoder.layers.0.fc1.weight is not finite as F16'):
        save_whisper(str(tmp_path / 'm'), CFG, GEN, tensors, 'unused')
    assert not os.path.exists(tmp_path / 'm')


def test_stored_as_f16():
    """Should store every tensor of the bundled tiny.en as F16."""
    with safe_open(MODEL + '/model.safetensors', framework='pt') as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {'F16'}
