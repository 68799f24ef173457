"""The golden fixtures: deterministic, identical to the committed ones, and reproducible in float32."""
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from acm_tools import golden
from regeneration import generate_twice, tree
from acm_tools.modelio import load_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMITTED = os.path.join(REPO, 'Tests', 'ACMModelsTests', 'Fixtures')
NAMES = [fx.name for fx in golden.fixtures()]
FILES = ['config.json', 'example.npy', 'golden.safetensors', 'model.safetensors']




@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    return generate_twice(golden.main, tmp_path_factory.mktemp('golden'))


def test_generation_is_deterministic(generated):
    """Should write the same bytes every time."""
    a, b = generated
    assert sorted(a) == sorted(f'{n}/{f}' for n in NAMES for f in FILES)
    for path in a:
        assert a[path] == b[path], path


def test_committed_fixtures_match_the_generator(generated):
    """Should find the committed fixtures byte-identical to a fresh run (regenerate with
    `PYTHONPATH=tools .venv/bin/python -m acm_tools.golden` if the tool changed on purpose)."""
    a, _ = generated
    # the generator's fixture directories (others, such as fashion_parity, come from other tools)
    committed = {p: b for p, b in tree(COMMITTED).items() if p.split(os.sep)[0] in NAMES}
    assert sorted(committed) == sorted(a)
    for path in a:
        assert committed[path] == a[path], f'{path} drifted from acm_tools.golden'


@pytest.mark.parametrize('name', NAMES)
def test_golden_tensors(name):
    """Should hold input, logits.<mode>, fraction.<mode>, choices.<mode>.<acm path> and logits_bf16.<bf16 mode> with
    their shapes."""
    d = os.path.join(COMMITTED, name)
    model = load_model(d)
    cfg = model.cfg
    B, T = golden.batch_size, cfg.seq_length
    expected = {'input': ('F32', [B, cfg.num_channels, cfg.image_size, cfg.image_size])}
    for m in golden.modes:
        expected[f'logits.{m}'] = ('F32', [B, cfg.num_classes])
        expected[f'fraction.{m}'] = ('F32', [B])
        for path in cfg.acm:
            expected[f'choices.{m}.{path}'] = ('I32', [B, T])
    for m in golden.bf16_modes:
        expected[f'logits_bf16.{m}'] = ('F32', [B, cfg.num_classes])
    with safe_open(os.path.join(d, 'golden.safetensors'), framework='numpy') as f:
        found = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()}
    assert found == expected
    g = load_file(os.path.join(d, 'golden.safetensors'))
    example = np.load(os.path.join(d, 'example.npy'))
    assert example.dtype == np.float32 and np.array_equal(example, g['input'][0].numpy())
    if not cfg.acm:
        for m in golden.modes:
            assert torch.equal(g[f'logits.{m}'], g['logits.full'])
            assert torch.equal(g[f'fraction.{m}'], torch.ones(B))


@torch.no_grad()
@pytest.mark.parametrize('name', NAMES)
def test_float32_reproduces_golden(name):
    """Should give the golden choices exactly and the logits to 1e-4 when run in float32, as the Swift
    engine does: the generator left no near ties."""
    d = os.path.join(COMMITTED, name)
    model = load_model(d)
    g = load_file(os.path.join(d, 'golden.safetensors'))
    for m in golden.modes:
        logits, choices = model(g['input'], **golden.parse_mode(m))
        torch.testing.assert_close(logits, g[f'logits.{m}'], rtol=1e-4, atol=1e-4)
        for path, k in choices.items():
            assert torch.equal(k.to(torch.int32), g[f'choices.{m}.{path}']), (m, path)


@torch.no_grad()
@pytest.mark.parametrize('name', NAMES)
def test_bf16_logits_are_autocast(name):
    """Should hold the float32 model's logits under CPU bf16 autocast: reproduced here, apart from the float ones
    by bf16 rounding but within 2% of the largest logit."""
    d = os.path.join(COMMITTED, name)
    model = load_model(d)
    g = load_file(os.path.join(d, 'golden.safetensors'))
    for m in golden.bf16_modes:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            logits, _ = model(g['input'], **golden.parse_mode(m))
        torch.testing.assert_close(logits.float(), g[f'logits_bf16.{m}'], rtol=1e-3, atol=1e-3)
        gap = (g[f'logits_bf16.{m}'] - g[f'logits.{m}']).abs().max() / g[f'logits.{m}'].abs().max()
        assert 1e-4 < gap < 0.02, (m, gap.item())


def test_fixtures_spread_and_stay_small():
    """Should exercise the caps: auto uses >= 3 distinct k, cap_0.25 trims, and files stay small."""
    for name in ('vit_mixed', 'vit_bias'):
        g = load_file(os.path.join(COMMITTED, name, 'golden.safetensors'))
        auto = {k[len('choices.auto.'):]: v for k, v in g.items() if k.startswith('choices.auto.')}
        cap = {k[len('choices.cap_0.25.'):]: v for k, v in g.items() if k.startswith('choices.cap_0.25.')}
        assert max(len(torch.unique(v)) for v in auto.values()) >= 3
        assert any(not torch.equal(auto[p], cap[p]) for p in auto)
        assert (g['fraction.cap_0.25'] <= g['fraction.auto']).all()
    for name in NAMES:
        for f in FILES:
            assert os.path.getsize(os.path.join(COMMITTED, name, f)) < 300_000, (name, f)
