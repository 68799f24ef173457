"""save_model / load_model: round trips of every layout and dtype, and strict loading errors."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from acm_tools.golden import fixtures, init_weights
from acm_tools.modelio import DTYPES, ModelFormatError, load_model, save_model
from acm_tools.vit import VisionTransformer
from edits import edit_config

FIXTURES = {fx.name: fx for fx in fixtures()}


def saved(tmp_path, name, **overrides):
    """Save fixture `name` with its own dtype and layout (or overrides) -> (model, dir)."""
    fx = FIXTURES[name]
    model = VisionTransformer(fx.cfg)
    init_weights(model, fx.seed, fx.gate_scale)
    kw = dict(dtype=fx.dtype, packed_attention=fx.packed, preprocessing=fx.preprocessing, labels=fx.labels)
    kw.update(overrides)
    d = str(tmp_path / name)
    save_model(model, d, **kw)
    return model, d


@pytest.mark.parametrize('name', list(FIXTURES))
def test_round_trip(tmp_path, name):
    """Should load back the config, the extras and every tensor as stored, and re-save byte for byte."""
    fx = FIXTURES[name]
    model, d = saved(tmp_path, name)
    stored = load_file(os.path.join(d, 'model.safetensors'))
    assert {t.dtype for t in stored.values()} == {DTYPES[fx.dtype]}
    loaded = load_model(d)
    assert loaded.cfg == fx.cfg
    assert loaded.preprocessing == fx.preprocessing and loaded.labels == fx.labels
    original = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, original[k].to(DTYPES[fx.dtype]).float()), k
    save_model(loaded, str(tmp_path / 'again'), dtype=fx.dtype, packed_attention=fx.packed)
    for f in ('config.json', 'model.safetensors'):
        with open(os.path.join(d, f), 'rb') as a, open(tmp_path / 'again' / f, 'rb') as b:
            assert a.read() == b.read(), f


def test_config_json_schema(tmp_path):
    """Should write the config.json of docs/model-format.md."""
    _, d = saved(tmp_path, 'vit_mixed')
    with open(os.path.join(d, 'config.json')) as f:
        obj = json.load(f)
    assert list(obj) == ['format', 'format_version', 'architecture', 'vit', 'acm', 'preprocessing', 'labels']
    assert (obj['format'], obj['format_version'], obj['architecture']) == ('acm-serve', 1, 'vit')
    assert obj['vit'] == {'image_size': 16, 'patch_size': 4, 'num_channels': 1, 'hidden_dim': 48, 'num_layers': 2,
                          'num_heads': 3, 'mlp_dim': 192, 'num_classes': 10, 'layer_norm_eps': 1e-6}
    assert obj['acm']['encoder.layers.encoder_layer_0.self_attention.q_proj'] == {
        'num_learners': 4, 'learner_dim': 6, 'activation': 'identity', 'min_choice': 1,
        'hidden_bias': True, 'output_bias': False,
        'gate': {'depth': 3, 'hidden_dim': 16, 'activation': 'identity'}, 'budget_share': 0.6}
    assert len(obj['acm']) == 6
    _, d = saved(tmp_path, 'vit_dense')
    with open(os.path.join(d, 'config.json')) as f:
        obj = json.load(f)
    assert obj['acm'] == {} and 'preprocessing' not in obj and 'labels' not in obj


def test_layouts(tmp_path):
    """Should store packed attention only where asked and allowed, and load either layout."""
    a0, a1 = 'encoder.layers.encoder_layer_0.self_attention', 'encoder.layers.encoder_layer_1.self_attention'
    _, d = saved(tmp_path, 'vit_mixed', packed_attention=True)
    keys = set(load_file(os.path.join(d, 'model.safetensors')))
    assert {f'{a1}.in_proj_weight', f'{a1}.in_proj_bias', f'{a1}.out_proj.weight', f'{a1}.out_proj.bias'} <= keys
    assert not any(k.startswith(f'{a1}.q_proj') for k in keys)
    assert f'{a0}.q_proj.w1' in keys and not any('in_proj' in k for k in keys if k.startswith(a0))
    _, d2 = saved(tmp_path / 'split', 'vit_mixed')
    packed = load_model(d)
    split = load_model(d2)
    for k, v in split.state_dict().items():
        assert torch.equal(v, packed.state_dict()[k]), k
    _, d = saved(tmp_path, 'vit_dense', packed_attention=False)
    assert 'encoder.layers.encoder_layer_0.self_attention.q_proj.weight' in load_file(
        os.path.join(d, 'model.safetensors'))
    load_model(d)


def rewrite(d, change):
    """Apply change(tensors) to d/model.safetensors."""
    path = os.path.join(d, 'model.safetensors')
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


L0 = 'encoder.layers.encoder_layer_0'
BAD = [
    ('vit_mixed', 'heads.head.bias', lambda t: t.pop('heads.head.bias'), 'missing'),
    ('vit_mixed', f'{L0}.mlp.gating_network.net.2.weight', lambda t: t.pop(f'{L0}.mlp.gating_network.net.2.weight'),
     'missing'),
    ('vit_mixed', f'{L0}.mlp.b2', lambda t: t.__setitem__(f'{L0}.mlp.b2', torch.zeros(5 * 48)), 'not used'),
    ('vit_mixed', f'{L0}.mlp.gating_network.net.3.weight',
     lambda t: t.__setitem__(f'{L0}.mlp.gating_network.net.3.weight', torch.zeros(5, 5)), 'not used'),
    ('vit_mixed', 'encoder.pos_embedding', lambda t: t.__setitem__('encoder.pos_embedding', torch.zeros(1, 16, 48)),
     'shape'),
    ('vit_mixed', f'{L0}.self_attention.q_proj.w1',
     lambda t: t.__setitem__(f'{L0}.self_attention.q_proj.w1', t[f'{L0}.self_attention.q_proj.w1'].T.contiguous()),
     'shape'),
    ('vit_mixed', 'class_token', lambda t: t.__setitem__('class_token', t['class_token'].double()), 'dtype'),
    ('vit_mixed', f'{L0}.self_attention.in_proj_weight',
     lambda t: t.__setitem__(f'{L0}.self_attention.in_proj_weight', torch.zeros(144, 48)), 'packed'),
    ('vit_dense', f'{L0}.self_attention.q_proj.weight',
     lambda t: t.__setitem__(f'{L0}.self_attention.q_proj.weight', torch.zeros(32, 32, dtype=torch.bfloat16)),
     'split'),
    ('vit_dense', f'{L0}.self_attention.out_proj.bias', lambda t: t.pop(f'{L0}.self_attention.out_proj.bias'),
     'missing'),
    ('vit_dense', f'{L0}.self_attention.in_proj_bias',
     lambda t: t.__setitem__(f'{L0}.self_attention.in_proj_bias', torch.zeros(32, dtype=torch.bfloat16)), 'shape'),
]


@pytest.mark.parametrize('name,key,change,what', BAD, ids=[f'{b[3]}:{b[1]}' for b in BAD])
def test_strict_loading_names_the_tensor(tmp_path, name, key, change, what):
    """Should refuse a missing, unused, misshapen, wrongly typed or wrongly laid out tensor, naming it."""
    _, d = saved(tmp_path, name)
    rewrite(d, change)
    with pytest.raises(ModelFormatError) as e:
        load_model(d)
    assert key in str(e.value) and what in str(e.value)


@pytest.mark.parametrize('edit,field', [
    (lambda o: o.__setitem__('extra', 1), 'extra'),
    (lambda o: o['vit'].pop('hidden_dim'), 'hidden_dim'),
    (lambda o: o['acm'][f'{L0}.mlp']['gate'].__setitem__('width', 3), 'width'),
    (lambda o: o['acm'].__setitem__(f'{L0}.self_attention.x_proj', o['acm'][f'{L0}.mlp']), 'x_proj'),
    (lambda o: o['acm'][f'{L0}.mlp'].__setitem__('activation', 'swish'), 'swish'),
    (lambda o: o.__setitem__('format_version', 2), 'version'),
    (lambda o: o['labels'].pop(), 'labels'),
    (lambda o: o['acm'][f'{L0}.mlp'].__setitem__('budget_share', 1.5), 'budget_share'),
    (lambda o: o['acm'][f'{L0}.mlp'].__setitem__('budget_share', 'half'), 'budget_share'),
])
def test_strict_config(tmp_path, edit, field):
    """Should refuse an unknown, missing or invalid config.json field, naming it."""
    _, d = saved(tmp_path, 'vit_mixed')
    edit_config(d, edit)
    with pytest.raises(ModelFormatError, match=field):
        load_model(d)
