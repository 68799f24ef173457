"""
The Python/Swift parity fixture for a bundled model: the first 100 Fashion-MNIST test images and the
logits this reference gives them in auto mode and at cap 0.5 (float64), for the Swift test
ACMModelsTests/BundledModelTests.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.parity --model models/fashion-vit-acm
"""
import argparse
import os

import torch
from safetensors.torch import save_file

from . import fashion
from .modelio import load_model

# -----------------------------------------------------------------------------
# config
out = 'Tests/ACMModelsTests/Fixtures/fashion_parity/parity.safetensors'
count = 100
modes = {'auto': dict(mode='auto'), 'cap_0.5': dict(mode='cap', beta=0.5)}
# -----------------------------------------------------------------------------


@torch.no_grad()
def fixture(model_dir):
    model = load_model(model_dir).double().eval()
    x, y = fashion.load('test', limit=count)
    tensors = {'input': x.contiguous(), 'labels': y.to(torch.int32)}
    for name, kw in modes.items():
        logits, _ = model(x.double(), **kw)
        tensors[f'logits.{name}'] = logits.float().contiguous()
    return tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', required=True)
    ap.add_argument('--out', default=out)
    args = ap.parse_args(argv)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file(fixture(args.model), args.out, metadata={'model': args.model})
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
