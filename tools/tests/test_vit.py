"""The ViT: per-sequence independence, the dense path against torch's own attention, and the key layout."""
import torch
import torch.nn.functional as F

from acm_tools.golden import fixtures, init_weights
from acm_tools.vit import (ViTConfig, VisionTransformer, compute_fraction, layer_budgets, pack_attention,
                           unpack_attention)

FIXTURES = {fx.name: fx for fx in fixtures()}


def make_model(name, **changes):
    fx = FIXTURES[name]
    cfg = ViTConfig(**{**fx.cfg.__dict__, **changes})
    model = VisionTransformer(cfg)
    init_weights(model, fx.seed, fx.gate_scale)
    return model.double().eval()


def images(cfg, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cfg.num_channels, cfg.image_size, cfg.image_size, generator=g, dtype=torch.float64)


@torch.no_grad()
def test_sequences_are_independent():
    """Should give each image the same logits and choices alone as in a batch with other budgets."""
    for name in ('vit_mixed', 'vit_bias'):
        model = make_model(name)
        x = images(model.cfg, 3, seed=7)
        betas = torch.tensor([0.25, 0.5, 1.0])
        for kw, per_image in [(dict(mode='cap', beta=betas), [dict(mode='cap', beta=float(b)) for b in betas]),
                              (dict(mode='auto'), [dict(mode='auto')] * 3),
                              (dict(mode='uniform', k=2), [dict(mode='uniform', k=2)] * 3)]:
            logits, choices = model(x, **kw)
            for b in range(3):
                alone_logits, alone_choices = model(x[b:b + 1], **per_image[b])
                torch.testing.assert_close(logits[b:b + 1], alone_logits, rtol=1e-12, atol=1e-12)
                assert alone_choices.keys() == choices.keys()
                for path in choices:
                    assert torch.equal(choices[path][b:b + 1], alone_choices[path]), (name, kw['mode'], b, path)


@torch.no_grad()
def test_choices_and_fraction():
    """Should report k [B, T] for every ACM, and the compute fraction of docs/compute-budget.md."""
    model = make_model('vit_mixed')
    cfg = model.cfg
    x = images(cfg, 2, seed=3)
    _, full = model(x, mode='full')
    assert sorted(full) == sorted(cfg.acm)
    assert all(k.shape == (2, cfg.seq_length) for k in full.values())
    torch.testing.assert_close(compute_fraction(cfg, full, 2), torch.ones(2, dtype=torch.float64))
    _, uni = model(x, mode='uniform', k=1)  # projections clamp to k_min = 1 as well: 1 of 4 everywhere
    torch.testing.assert_close(compute_fraction(cfg, uni, 2), torch.full((2,), 0.25, dtype=torch.float64))
    _, auto = model(x, mode='auto')
    d, T = cfg.hidden_dim, cfg.seq_length
    num = sum(auto[p].double().sum(1) * 2 * a.learner_dim * 2 * d for p, a in cfg.acm.items())
    den = sum(T * a.num_learners * 2 * a.learner_dim * 2 * d for a in cfg.acm.values())
    torch.testing.assert_close(compute_fraction(cfg, auto, 2), num / den)
    for beta in (0.5, 0.25):
        _, cap = model(x, mode='cap', beta=beta)
        budgets = layer_budgets(cfg, beta, 2)  # each ACM's share of the cap
        for p, a in cfg.acm.items():
            first = p.startswith('encoder.layers.encoder_layer_0.self_attention.') and not p.endswith('o_proj')
            if first:  # the same input as under auto, so never more than auto
                assert (cap[p] <= auto[p]).all()
            allowed = torch.floor(budgets[p] * a.num_learners * T + 1e-9).clamp(min=a.min_choice * T)
            assert (cap[p].sum(1) <= allowed).all()
        assert (compute_fraction(cfg, cap, 2) <= beta + 1e-12).all()


def functional_vit(sd, cfg, x):
    """The dense ViT written with torch.nn.functional and torch's own multi-head attention on the packed
    torchvision weights."""
    d, B = cfg.hidden_dim, x.shape[0]
    eps = cfg.layer_norm_eps
    y = F.conv2d(x, sd['conv_proj.weight'], sd['conv_proj.bias'], stride=cfg.patch_size)  # (B, d, h, w)
    y = y.flatten(2).transpose(1, 2)  # (B, T-1, d)
    y = torch.cat([sd['class_token'].expand(B, -1, -1), y], dim=1) + sd['encoder.pos_embedding']  # (B, T, d)
    for i in range(cfg.num_layers):
        p = f'encoder.layers.encoder_layer_{i}.'
        h = F.layer_norm(y, (d,), sd[p + 'ln_1.weight'], sd[p + 'ln_1.bias'], eps).transpose(0, 1)  # (T, B, d)
        a, _ = F.multi_head_attention_forward(
            h, h, h, d, cfg.num_heads,
            sd[p + 'self_attention.in_proj_weight'], sd[p + 'self_attention.in_proj_bias'],
            None, None, False, 0.0,
            sd[p + 'self_attention.out_proj.weight'], sd[p + 'self_attention.out_proj.bias'],
            training=False, need_weights=False)
        y = y + a.transpose(0, 1)  # (B, T, d)
        h = F.layer_norm(y, (d,), sd[p + 'ln_2.weight'], sd[p + 'ln_2.bias'], eps)
        h = F.linear(F.gelu(F.linear(h, sd[p + 'mlp.0.weight'], sd[p + 'mlp.0.bias'])),
                     sd[p + 'mlp.3.weight'], sd[p + 'mlp.3.bias'])
        y = y + h
    y = F.layer_norm(y, (d,), sd['encoder.ln.weight'], sd['encoder.ln.bias'], eps)
    return F.linear(y[:, 0], sd['heads.head.weight'], sd['heads.head.bias'])


@torch.no_grad()
def test_dense_vit_matches_torch_attention():
    """Should equal a functional ViT built on torch's multi_head_attention_forward with packed weights."""
    for changes in ({}, dict(num_layers=3, num_heads=2, layer_norm_eps=1e-5)):
        model = make_model('vit_dense', **changes)
        cfg = model.cfg
        sd = pack_attention(model.state_dict(), cfg)
        x = images(cfg, 3, seed=5)
        expected = functional_vit(sd, cfg, x)
        for mode in (dict(mode='full'), dict(mode='auto'), dict(mode='cap', beta=0.1)):
            logits, choices = model(x, **mode)
            assert choices == {}
            torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_torch_multihead_attention_loads_packed_weights():
    """Should match nn.MultiheadAttention (batch_first) fed the packed weights of one layer."""
    model = make_model('vit_dense')
    cfg = model.cfg
    a = 'encoder.layers.encoder_layer_0.self_attention'
    sd = pack_attention(model.state_dict(), cfg)
    mha = torch.nn.MultiheadAttention(cfg.hidden_dim, cfg.num_heads, batch_first=True).double()
    mha.load_state_dict({k[len(a) + 1:]: v for k, v in sd.items() if k.startswith(a)})
    x = torch.randn(2, cfg.seq_length, cfg.hidden_dim, dtype=torch.float64)
    torch.testing.assert_close(model.encoder.layers.encoder_layer_0.self_attention(x, {}, dict(mode='full')),
                               mha(x, x, x, need_weights=False)[0], rtol=1e-12, atol=1e-12)


def test_pack_unpack_round_trip():
    """Should pack only the layers without ACM projections, and unpack back to the same tensors."""
    model = make_model('vit_mixed')
    sd = model.state_dict()
    packed = pack_attention(sd, model.cfg)
    assert 'encoder.layers.encoder_layer_1.self_attention.in_proj_weight' in packed
    assert 'encoder.layers.encoder_layer_1.self_attention.q_proj.weight' not in packed
    assert 'encoder.layers.encoder_layer_0.self_attention.q_proj.w1' in packed
    assert not any(k.startswith('encoder.layers.encoder_layer_0.self_attention.in_proj') for k in packed)
    back = unpack_attention(packed, model.cfg)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_state_dict_keys():
    """Should produce exactly the tensor names of docs/model-format.md."""
    model = make_model('vit_bias')
    keys = set(model.state_dict())
    L0 = 'encoder.layers.encoder_layer_0'
    expected_some = {'conv_proj.weight', 'conv_proj.bias', 'class_token', 'encoder.pos_embedding',
                     f'{L0}.ln_1.weight', f'{L0}.ln_1.bias', f'{L0}.ln_2.weight', f'{L0}.ln_2.bias',
                     f'{L0}.self_attention.q_proj.weight', f'{L0}.self_attention.k_proj.bias',
                     f'{L0}.self_attention.v_proj.w1', f'{L0}.self_attention.v_proj.b2',
                     f'{L0}.self_attention.o_proj.gating_network.net.1.bias',
                     f'{L0}.mlp.w1', f'{L0}.mlp.b1', f'{L0}.mlp.w2', f'{L0}.mlp.b2',
                     f'{L0}.mlp.gating_network.net.0.weight', 'encoder.ln.weight', 'encoder.ln.bias',
                     'heads.head.weight', 'heads.head.bias'}
    assert expected_some <= keys
    dense = make_model('vit_dense')
    assert {'encoder.layers.encoder_layer_0.mlp.0.weight', 'encoder.layers.encoder_layer_0.mlp.3.bias'} <= set(
        dense.state_dict())
