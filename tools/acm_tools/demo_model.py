"""
The bundled demo model: a small ACM ViT for 28x28 grey images (Fashion-MNIST's shape and labels) with
random weights, so that `make serve` has something to serve before the distilled models exist. Its
predictions mean nothing; its shapes, ACM layers and preprocessing are those of a real model.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.demo_model --out models/vit-demo
"""
import argparse

import torch

from .acm import ACMConfig, GateConfig
from .golden import init_weights
from .modelio import save_model
from .vit import ViTConfig, VisionTransformer, layer_path

# -----------------------------------------------------------------------------
# config
out = 'models/vit-demo'
seed = 7
gate_scale = 2.0  # spreads the gates' choices over all k, as a trained gate would
labels = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']
preprocessing = dict(color='grey', resize=28, crop=28, mean=[0.2860], std=[0.3530])  # Fashion-MNIST's
# -----------------------------------------------------------------------------


def config():
    gate = GateConfig(depth=3, hidden_dim=16, activation='identity')  # the paper's gate
    d, mlp, layers, n = 64, 256, 2, 4
    acm = {}
    for i in range(layers):
        acm[f'{layer_path(i)}.mlp'] = ACMConfig(num_learners=n, learner_dim=mlp // n, activation='gelu',
                                               min_choice=0, gate=gate)
        for p in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
            acm[f'{layer_path(i)}.self_attention.{p}'] = ACMConfig(
                num_learners=n, learner_dim=d // 8, activation='identity', min_choice=1, gate=gate)
    return ViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_dim=d, num_layers=layers, num_heads=4,
                     mlp_dim=mlp, num_classes=10, acm=acm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=out)
    args = ap.parse_args(argv)
    model = VisionTransformer(config()).eval()
    init_weights(model, seed, gate_scale)
    save_model(model, args.out, dtype='F16', preprocessing=preprocessing, labels=labels)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    torch.manual_seed(seed)
    main()
