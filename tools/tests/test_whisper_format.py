"""Whisper's model directory: save_whisper and load_whisper round trip, with and without ACM layers, strict
loading errors that name the tensor or field, and the bundled tiny.en stored as F16."""
import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from acm_tools import whisper_tiny_en
from acm_tools.acm import ACMConfig, GateConfig
from acm_tools.modelio import ModelFormatError, acm_to_json
from acm_tools.whisper_format import (Generation, WhisperConfig, expected_shapes, is_complete, load_whisper,
                                      save_whisper)
from edits import edit_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, whisper_tiny_en.out)
CFG = WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
                    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=32, max_source_positions=12,
                    max_target_positions=10, vocab_size=40)
ACM = ACMConfig(num_learners=4, learner_dim=8, activation='gelu', min_choice=0, hidden_bias=True, output_bias=True,
                gate=GateConfig(depth=3, hidden_dim=5), budget_share=0.625)
ACM_CFG = replace(CFG, acm={'model.encoder.layers.1': ACM, 'model.decoder.layers.0': replace(ACM, learner_dim=4)})
GEN = Generation(decoder_start_token_id=37, eos_token_id=36, no_timestamps_token_id=39, prompt=[37, 39],
                 suppress_tokens=[1, 2], begin_suppress_tokens=[3, 36], max_new_tokens=5)


def saved(tmp_path, cfg=CFG):
    """A small random Whisper saved into tmp_path / 'm' -> (dir, its tensors as given, in F32)."""
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(shape, generator=g) for k, shape in expected_shapes(cfg).items()}
    tokenizer = tmp_path / 'tokenizer.json'
    tokenizer.write_text(json.dumps({'added_tokens': []}))
    save_whisper(str(tmp_path / 'm'), cfg, GEN, tensors, str(tokenizer))
    return str(tmp_path / 'm'), tensors


@pytest.mark.parametrize('cfg', [CFG, ACM_CFG], ids=['dense', 'acm'])
def test_round_trip(tmp_path, cfg):
    """Should load back the config (its ACM entries too), the generation settings and every tensor as F16."""
    d, tensors = saved(tmp_path, cfg)
    cfg_back, gen, got = load_whisper(d)
    assert (cfg_back, gen) == (cfg, GEN)
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
    'ACM without its tensors': (lambda d: edit_config(d, lambda o: o['acm'].update(
        {'model.encoder.layers.0': acm_to_json(ACM)})),
        'missing tensor model.encoder.layers.0.w1'),
}

ACM_CORRUPTIONS = {  # on ACM_CFG's directory
    'dense MLP beside its ACM': (lambda d: edit_tensors(d, lambda t: t.update(
        {'model.encoder.layers.1.fc1.bias': torch.zeros(64, dtype=torch.float16)})),
        'tensor model.encoder.layers.1.fc1.bias is not used by any layer'),
    'missing gate tensor': (lambda d: edit_tensors(d, lambda t: t.pop('model.decoder.layers.0.gating_network.net.2.bias')),
                            'missing tensor model.decoder.layers.0.gating_network.net.2.bias'),
    'ACM of the wrong width': (lambda d: edit_config(d, lambda o: o['acm']['model.decoder.layers.0'].update(learner_dim=8)),
                               r'tensor model.decoder.layers.0.w1 has shape \[16, 16\], expected \[16, 32\]'),
    'ACM elsewhere': (lambda d: edit_config(d, lambda o: o['acm'].update(
        {'model.encoder.layers.1.self_attn.q_proj': o['acm'].pop('model.encoder.layers.1')})),
        "acm entry 'model.encoder.layers.1.self_attn.q_proj' is not a layer of this Whisper"),
    'unknown ACM field': (lambda d: edit_config(d, lambda o: o['acm']['model.encoder.layers.1'].update(size=3)),
                          r"unknown field acm\['model.encoder.layers.1'\].size"),
    'identity learners': (lambda d: edit_config(d, lambda o: o['acm']['model.encoder.layers.1'].update(
        activation='identity')), "learners use gelu, not 'identity'"),
}


@pytest.mark.parametrize('name', list(CORRUPTIONS) + list(ACM_CORRUPTIONS))
def test_load_is_strict(tmp_path, name):
    """Should refuse a missing, unused, misshapen or F32 tensor and an unknown or missing config.json field, an
    architecture other than whisper, an ACM entry that is not a layer's MLP or whose tensors are not there,
    naming what is at fault."""
    d, _ = saved(tmp_path, ACM_CFG if name in ACM_CORRUPTIONS else CFG)
    corrupt, error = {**CORRUPTIONS, **ACM_CORRUPTIONS}[name]
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
