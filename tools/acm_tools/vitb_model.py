"""
Random-weight ViT-B/16 models in our format, for `make bench-peers MODEL=vit-b`: the engine against OpenVINO
and ONNX Runtime at the size people deploy (224x224 RGB, 197 tokens, 12 layers of d = 768), which the
Fashion-MNIST models (50 tokens, d = 128) are too small to show.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.vitb_model --out build/models/vit-b-dense
    PYTHONPATH=tools .venv/bin/python -m acm_tools.vitb_model --acm --out build/models/vit-b-acm

- dense: torchvision's vit_b_16 shapes, 1000 classes.
- --acm: every MLP and every q/k/v/o projection an ACM, as in the Fashion ACM model: MLP ACMs of N = 4 learners
  of h = mlp_dim / 4 = 768 (GELU, k_min 0; N*h = mlp_dim, so all learners cost what the dense MLP does) and
  projection ACMs of N = 4 learners of h = hidden_dim / 8 = 96 (identity, k_min 1: N·h = d/2, as in the bundled Fashion-MNIST ACM); every gate 3 layers of 16,
  identity activation (models/fashion-vit-acm/config.json).
- --small: the same structure at a toy size (32x32, d = 48, 2 layers), for the tests.

The weights are random (seeded), trunc-normal with std 0.02 as timm's ViT-B, so that the activations stay O(1)
through 12 layers; predictions mean nothing, and speed does not depend on them. The gates are random too, with
the largest learner count favoured, so that in auto mode most tokens run most learners and a budget, not the
gate, decides what runs. Written as F16 (half the disk; the engine and load_model widen it to f32). The models
go to build/ and are not committed.
"""
import argparse

import torch

from .acm import ACMConfig, GateConfig
from .modelio import save_model
from .vit import ViTConfig, VisionTransformer, layer_path

# -----------------------------------------------------------------------------
# config
seed = 16
std = 0.02  # trunc-normal weights, cut at 2 std
gate_full_bias = 2.0  # added to the gate logit of k = N (the last choice)
vit_b = dict(image_size=224, patch_size=16, num_channels=3, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
             num_classes=1000)
small = dict(image_size=32, patch_size=16, num_channels=3, hidden_dim=48, num_layers=2, num_heads=3, mlp_dim=192,
             num_classes=10)
num_learners = 4
# -----------------------------------------------------------------------------


def config(acm=False, size=None):
    """ViT-B/16 (or the size given), dense or with ACMs at every MLP and projection."""
    size = dict(vit_b if size is None else size)
    d, mlp = size['hidden_dim'], size['mlp_dim']
    gate = GateConfig(depth=3, hidden_dim=16, activation='identity')  # the paper's gate, as the Fashion ACM's
    acms = {}
    for i in range(size['num_layers'] if acm else 0):
        acms[f'{layer_path(i)}.mlp'] = ACMConfig(num_learners=num_learners, learner_dim=mlp // num_learners,
                                                 activation='gelu', min_choice=0, hidden_bias=True,
                                                 output_bias=True, gate=gate)
        for p in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
            acms[f'{layer_path(i)}.self_attention.{p}'] = ACMConfig(
                num_learners=num_learners, learner_dim=d // (2 * num_learners), activation='identity', min_choice=1,
                hidden_bias=False, output_bias=True, gate=gate)
    return ViTConfig(**size, acm=acms)


@torch.no_grad()
def init_weights(model: VisionTransformer, seed):
    """timm's ViT-B initialisation (trunc-normal 0.02 weights, zero biases, unit LayerNorms, zero class token), and
    gates whose layers keep their logits O(1), so that choices vary from token to token, with k = N favoured."""
    g = torch.Generator().manual_seed(seed)
    last_gate_layers = {f'{path}.gating_network.net.{c.gate.depth - 1}' for path, c in model.cfg.acm.items()}
    for name, p in model.named_parameters():
        module, leaf = name.rsplit('.', 1) if '.' in name else ('', name)
        if '.ln' in name:  # LayerNorm
            p.fill_(1.0 if leaf == 'weight' else 0.0)
        elif name == 'class_token':
            p.zero_()
        elif '.gating_network.net.' in name:
            if leaf == 'weight':  # nn.Linear [out, in]
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.zero_()
                if module in last_gate_layers:
                    p[-1] = gate_full_bias  # the logit of k = N
        elif p.dim() >= 2:  # nn.Linear and conv_proj weights, ACM w1 and w2, pos_embedding
            torch.nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std, generator=g)
        else:  # biases: conv_proj, nn.Linear, b1, b2
            p.zero_()


def build(out, acm=False, size=None, seed=seed):
    """Write the model directory out; -> the model."""
    model = VisionTransformer(config(acm, size)).eval()
    init_weights(model, seed)
    save_model(model, out, dtype='F16')
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', required=True, help='model directory to write')
    ap.add_argument('--acm', action='store_true', help='ACMs at every MLP and attention projection')
    ap.add_argument('--small', action='store_true', help='a toy size of the same structure (tests)')
    ap.add_argument('--seed', type=int, default=seed)
    args = ap.parse_args(argv)
    build(args.out, args.acm, small if args.small else None, args.seed)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
