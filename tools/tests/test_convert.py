"""acm_tools.convert: timm, torchvision and ACM-reference state dicts -> our model directory.

timm and torchvision cannot be installed here (timm's import needs torchvision, whose wheels need CUDA torch),
so each test builds the library's state dict from one of our models with an explicit mapping written below,
independently of the converter's tables, and checks the converted model against an independent forward in
that library's layout."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from acm_tools.acm import ACMConfig, GateConfig
from acm_tools.convert import main
from acm_tools.golden import init_weights
from acm_tools.modelio import load_model
from acm_tools.vit import ViTConfig, VisionTransformer

D, HEADS, LAYERS = 24, 3, 2
L = 'encoder.layers.encoder_layer_'


def dense_model(seed=0):
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_dim=D, num_layers=LAYERS,
                    num_heads=HEADS, mlp_dim=48, num_classes=5)
    model = VisionTransformer(cfg)
    init_weights(model, seed, gate_scale=1.0)
    return model.eval()


def images(n=2, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def run(tmp_path, kind, ckpt, *flags):
    """Convert with the command line (in process) -> the model read back with load_model."""
    out = tmp_path / 'out'
    main([kind, '--checkpoint', str(ckpt), '--out', str(out), '--num-heads', str(HEADS), *flags])
    return load_model(str(out))


def fails(tmp_path, kind, sd, *flags):
    """Convert a state dict that must fail -> the error message."""
    torch.save(sd, tmp_path / 'bad.pth')
    with pytest.raises(SystemExit) as e:
        run(tmp_path, kind, tmp_path / 'bad.pth', *flags)
    return str(e.value.code)


# -----------------------------------------------------------------------------
# timm: names of timm/models/vision_transformer.py, written out here

def timm_state_dict(model):
    sd = model.state_dict()
    out = {
        'patch_embed.proj.weight': sd['conv_proj.weight'], 'patch_embed.proj.bias': sd['conv_proj.bias'],
        'cls_token': sd['class_token'], 'pos_embed': sd['encoder.pos_embedding'],
        'norm.weight': sd['encoder.ln.weight'], 'norm.bias': sd['encoder.ln.bias'],
        'head.weight': sd['heads.head.weight'], 'head.bias': sd['heads.head.bias'],
    }
    for i in range(LAYERS):
        a, b = f'{L}{i}.', f'blocks.{i}.'
        for ours, theirs in [('ln_1', 'norm1'), ('ln_2', 'norm2'), ('mlp.0', 'mlp.fc1'), ('mlp.3', 'mlp.fc2'),
                             ('self_attention.o_proj', 'attn.proj')]:
            for s in ('weight', 'bias'):
                out[f'{b}{theirs}.{s}'] = sd[f'{a}{ours}.{s}']
        for s in ('weight', 'bias'):  # one Linear for q, k and v: rows [q; k; v]
            out[f'{b}attn.qkv.{s}'] = torch.cat([sd[f'{a}self_attention.{p}_proj.{s}'] for p in 'qkv'])
    return out


def timm_forward(sd, x, eps=1e-6):
    """timm's VisionTransformer.forward (global_pool='token'), written from its source."""
    B = x.shape[0]
    hs = D // HEADS
    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=4)  # (B, d, 4, 4)
    x = x.flatten(2).transpose(1, 2)  # (B, 16, d)
    x = torch.cat([sd['cls_token'].expand(B, -1, -1), x], dim=1) + sd['pos_embed']  # (B, T, d)
    T = x.shape[1]
    for i in range(LAYERS):
        b = f'blocks.{i}.'
        h = F.layer_norm(x, (D,), sd[b + 'norm1.weight'], sd[b + 'norm1.bias'], eps)
        qkv = F.linear(h, sd[b + 'attn.qkv.weight'], sd[b + 'attn.qkv.bias'])  # (B, T, 3d)
        q, k, v = qkv.reshape(B, T, 3, HEADS, hs).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)  # (B, T, d)
        x = x + F.linear(a, sd[b + 'attn.proj.weight'], sd[b + 'attn.proj.bias'])
        h = F.layer_norm(x, (D,), sd[b + 'norm2.weight'], sd[b + 'norm2.bias'], eps)
        h = F.gelu(F.linear(h, sd[b + 'mlp.fc1.weight'], sd[b + 'mlp.fc1.bias']))
        x = x + F.linear(h, sd[b + 'mlp.fc2.weight'], sd[b + 'mlp.fc2.bias'])
    x = F.layer_norm(x, (D,), sd['norm.weight'], sd['norm.bias'], eps)
    return F.linear(x[:, 0], sd['head.weight'], sd['head.bias'])


@pytest.mark.parametrize('container', ['bare.pth', 'model.pth', 'safetensors'])
@torch.no_grad()
def test_timm(tmp_path, container):
    """Should convert a timm vit_* state dict (bare, {'model': ...} or safetensors) to a model whose logits
    are timm's forward's."""
    sd = timm_state_dict(dense_model())
    ckpt = tmp_path / ('in.safetensors' if container == 'safetensors' else 'in.pth')
    if container == 'safetensors':
        save_file({k: v.contiguous() for k, v in sd.items()}, ckpt)
    else:
        torch.save(sd if container == 'bare.pth' else {'model': sd, 'epoch': 3}, ckpt)
    model = run(tmp_path, 'timm', ckpt)
    cfg = model.cfg
    assert (cfg.image_size, cfg.patch_size, cfg.num_channels, cfg.hidden_dim, cfg.num_layers, cfg.mlp_dim,
            cfg.num_classes, cfg.acm) == (16, 4, 3, D, LAYERS, 48, 5, {})
    x = images()
    torch.testing.assert_close(model(x, mode='full')[0], timm_forward(sd, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize('key, why', [
    ('fc_norm.weight', 'fc_norm'), ('reg_token', 'register'), ('dist_token', 'distillation'),
    ('blocks.0.attn.q_norm.weight', 'QK'), ('blocks.1.ls1.gamma', 'layer scale')])
def test_timm_unsupported_variants(tmp_path, key, why):
    """Should refuse a timm variant we cannot run, naming its key and what it is."""
    sd = timm_state_dict(dense_model())
    sd[key] = torch.zeros(1, 1, D) if key.endswith('token') else torch.ones(D)
    msg = fails(tmp_path, 'timm', sd)
    assert f'key {key}' in msg and why in msg and 'not supported' in msg


def test_timm_key_errors(tmp_path):
    """Should name an unknown key, a missing key, a wrong shape, and a missing class token or its position."""
    good = timm_state_dict(dense_model())
    sd = {**good, 'blocks.0.attn.foo.weight': torch.ones(D)}
    assert 'unknown key blocks.0.attn.foo.weight' in fails(tmp_path, 'timm', sd)
    sd = {k: v for k, v in good.items() if k != 'blocks.1.mlp.fc2.bias'}
    assert 'missing key blocks.1.mlp.fc2.bias' in fails(tmp_path, 'timm', sd)
    sd = {**good, 'blocks.1.norm1.weight': torch.ones(D + 1)}
    assert f'key blocks.1.norm1.weight has shape [{D + 1}], expected [{D}]' in fails(tmp_path, 'timm', sd)
    sd = {k: v for k, v in good.items() if k != 'cls_token'}
    assert 'missing key cls_token: a timm ViT without a class token' in fails(tmp_path, 'timm', sd)
    sd = {**good, 'pos_embed': good['pos_embed'][:, 1:]}  # no_embed_class=True
    assert 'key pos_embed has 16 positions' in fails(tmp_path, 'timm', sd)
    assert '--image-size 32 disagrees' in fails(tmp_path, 'timm', good, '--image-size', '32')


# -----------------------------------------------------------------------------
# torchvision: vit_b_16's names (packed nn.MultiheadAttention), written out here

def torchvision_state_dict(model, legacy_mlp=False):
    sd = model.state_dict()
    out = {k: sd[k] for k in ('conv_proj.weight', 'conv_proj.bias', 'class_token', 'encoder.pos_embedding',
                              'encoder.ln.weight', 'encoder.ln.bias', 'heads.head.weight', 'heads.head.bias')}
    fc1, fc2 = ('mlp.linear_1', 'mlp.linear_2') if legacy_mlp else ('mlp.0', 'mlp.3')
    for i in range(LAYERS):
        a = f'{L}{i}.'
        for ours, theirs in [('ln_1', 'ln_1'), ('ln_2', 'ln_2'), ('mlp.0', fc1), ('mlp.3', fc2),
                             ('self_attention.o_proj', 'self_attention.out_proj')]:
            for s in ('weight', 'bias'):
                out[f'{a}{theirs}.{s}'] = sd[f'{a}{ours}.{s}']
        out[a + 'self_attention.in_proj_weight'] = torch.cat(
            [sd[f'{a}self_attention.{p}_proj.weight'] for p in 'qkv'])  # (3d, d)
        out[a + 'self_attention.in_proj_bias'] = torch.cat([sd[f'{a}self_attention.{p}_proj.bias'] for p in 'qkv'])
    return out


def torchvision_forward(sd, x, legacy_mlp=False):
    """torchvision's VisionTransformer.forward, with torch's own nn.MultiheadAttention on the packed weights."""
    fc1, fc2 = ('mlp.linear_1', 'mlp.linear_2') if legacy_mlp else ('mlp.0', 'mlp.3')
    B = x.shape[0]
    x = F.conv2d(x, sd['conv_proj.weight'], sd['conv_proj.bias'], stride=4).flatten(2).transpose(1, 2)
    x = torch.cat([sd['class_token'].expand(B, -1, -1), x], dim=1) + sd['encoder.pos_embedding']  # (B, T, d)
    for i in range(LAYERS):
        a = f'{L}{i}.'
        mha = nn.MultiheadAttention(D, HEADS, batch_first=True).eval()
        mha.load_state_dict({k: sd[a + 'self_attention.' + k] for k in
                             ('in_proj_weight', 'in_proj_bias', 'out_proj.weight', 'out_proj.bias')})
        h = F.layer_norm(x, (D,), sd[a + 'ln_1.weight'], sd[a + 'ln_1.bias'], 1e-6)
        x = x + mha(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (D,), sd[a + 'ln_2.weight'], sd[a + 'ln_2.bias'], 1e-6)
        h = F.gelu(F.linear(h, sd[f'{a}{fc1}.weight'], sd[f'{a}{fc1}.bias']))
        x = x + F.linear(h, sd[f'{a}{fc2}.weight'], sd[f'{a}{fc2}.bias'])
    x = F.layer_norm(x, (D,), sd['encoder.ln.weight'], sd['encoder.ln.bias'], 1e-6)
    return F.linear(x[:, 0], sd['heads.head.weight'], sd['heads.head.bias'])


@pytest.mark.parametrize('legacy_mlp', [False, True])
@torch.no_grad()
def test_torchvision(tmp_path, legacy_mlp):
    """Should convert a torchvision vit_b_16-style state dict (also with the legacy mlp.linear_1/2 names) to a
    model whose logits are those of nn.MultiheadAttention on the packed weights."""
    sd = torchvision_state_dict(dense_model(seed=1), legacy_mlp)
    torch.save(sd, tmp_path / 'in.pth')
    model = run(tmp_path, 'torchvision', tmp_path / 'in.pth', '--dtype', 'F32')
    x = images(seed=1)
    torch.testing.assert_close(model(x, mode='full')[0], torchvision_forward(sd, x, legacy_mlp), rtol=0, atol=1e-5)


def test_torchvision_errors(tmp_path):
    """Should refuse heads.pre_logits and name a missing packed attention key."""
    good = torchvision_state_dict(dense_model())
    sd = {**good, 'heads.pre_logits.weight': torch.ones(D, D), 'heads.pre_logits.bias': torch.ones(D)}
    assert 'key heads.pre_logits.' in fails(tmp_path, 'torchvision', sd)
    sd = {k: v for k, v in good.items() if k != f'{L}1.self_attention.in_proj_bias'}
    assert f'missing key {L}1.self_attention.in_proj_bias' in fails(tmp_path, 'torchvision', sd)


# -----------------------------------------------------------------------------
# ACM reference code: our keys are its keys; written as its final.pth: {'model_state': ..., 'args': ...}

def acm_model():
    gate = GateConfig(depth=3, hidden_dim=8, activation='identity')
    mlp = ACMConfig(num_learners=4, learner_dim=12, activation='gelu', min_choice=0, hidden_bias=True,
                    output_bias=True, gate=gate)
    proj = ACMConfig(num_learners=4, learner_dim=6, activation='identity', min_choice=1, hidden_bias=True,
                     output_bias=False, gate=gate)
    shallow = ACMConfig(num_learners=4, learner_dim=12, activation='gelu', min_choice=0, hidden_bias=False,
                        output_bias=False, gate=GateConfig(depth=1))
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_dim=D, num_layers=LAYERS, num_heads=HEADS,
                    mlp_dim=48, num_classes=5, acm={f'{L}0.mlp': mlp, f'{L}0.self_attention.q_proj': proj,
                                                    f'{L}0.self_attention.k_proj': proj, f'{L}1.mlp': shallow})
    model = VisionTransformer(cfg)  # layer 0's v/o_proj and layer 1's attention: dense, split
    init_weights(model, 5, gate_scale=3.0)
    return model.eval()


def reference_state_dict(model):
    sd = dict(model.state_dict())
    # layer 1's one-layer gate as the reference's GumbelGatingNetwork names it
    for s in ('weight', 'bias'):
        sd[f'{L}1.mlp.gating_network.fc.{s}'] = sd.pop(f'{L}1.mlp.gating_network.net.0.{s}')
    sd[f'{L}0.mlp.gating_network.gs_tau'] = torch.ones(1)  # gs_tau='trainable'
    return sd


@torch.no_grad()
def test_acm_reference(tmp_path, capsys):
    """Should convert a reference final.pth to our config (N, h, k_min, biases, gate from shapes) and the same
    logits and choices in modes full, auto and cap 0.5; and explain the pickled args and a missing N."""
    model = acm_model()
    ckpt = tmp_path / 'final.pth'
    torch.save({'model_state': reference_state_dict(model), 'args': argparse.Namespace(epochs=1),
                'final_score': 0.5}, ckpt)
    with pytest.raises(SystemExit) as e:
        run(tmp_path, 'acm-reference', ckpt)
    assert 'argparse.Namespace' in e.value.code and '--unsafe-pickle' in e.value.code
    with pytest.raises(SystemExit) as e:
        run(tmp_path, 'acm-reference', ckpt, '--unsafe-pickle')
    assert f'key {L}0.self_attention.q_proj.w1' in e.value.code and '--num-learners' in e.value.code
    converted = run(tmp_path, 'acm-reference', ckpt, '--unsafe-pickle', '--num-learners', '4')
    assert 'dropped encoder.layers.encoder_layer_0.mlp.gating_network.gs_tau' in capsys.readouterr().err
    assert converted.cfg == model.cfg
    x = images(3, seed=2)
    for kw in (dict(mode='full'), dict(mode='auto'), dict(mode='cap', beta=0.5)):
        want, want_k = model(x, **kw)
        got, got_k = converted(x, **kw)
        assert torch.equal(got, want), kw
        assert got_k.keys() == want_k.keys() and all(torch.equal(got_k[p], want_k[p]) for p in want_k), kw
        if kw['mode'] == 'auto':  # the gates do choose: not every token takes the same k
            assert all(len(k.unique()) > 1 for k in want_k.values())


def test_acm_reference_errors(tmp_path):
    """Should name a missing gate (a phase-I checkpoint), a wrong --num-learners and a gate of impossible width."""
    good = reference_state_dict(acm_model())
    gate = f'{L}0.self_attention.k_proj.gating_network.net.'
    sd = {k: v for k, v in good.items() if not k.startswith(gate)}
    assert f'missing key {gate}0.weight' in fails(tmp_path, 'acm-reference', sd, '--num-learners', '4')
    assert f'key {L}0.mlp.b2 gives 4 learners' in fails(tmp_path, 'acm-reference', good, '--num-learners', '3')
    sd = {**good, f'{gate}2.weight': torch.ones(7, 8), f'{gate}2.bias': torch.ones(7)}
    assert f'key {gate}2.weight has 7 outputs' in fails(tmp_path, 'acm-reference', sd, '--num-learners', '4')
