"""The README's example inputs, under examples/: Fashion-MNIST test images as PNG and a short spoken WAV.

Each image is the first test image of its class that the bundled fashion-vit-acm classifies correctly at
compute_budget 0.5 (the README's request), by this package's PyTorch reference; the WAV is espeak-ng's.

    python -m acm_tools.examples [--out examples]
"""
import argparse
import os
import subprocess

import numpy as np
import torch
from PIL import Image

from .fashion import LABELS, find, normalize, read_idx
from .modelio import load_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, 'models', 'fashion-vit-acm')
# file name -> class
IMAGES = {'shirt.png': 'Shirt', 'trouser.png': 'Trouser', 'sneaker.png': 'Sneaker', 'bag.png': 'Bag',
          'ankle-boot.png': 'Ankle boot'}
BUDGET = 0.5
SPEECH = 'Please turn on the lights in the kitchen.'


def pick_images():
    """file name -> (test index, uint8 [28, 28])"""
    x, y = read_idx(find('t10k-images-idx3-ubyte')), read_idx(find('t10k-labels-idx1-ubyte'))
    model = load_model(MODEL)
    with torch.no_grad():
        logits, _ = model(normalize(x[:1000]), mode='cap', beta=BUDGET)
    predicted = logits.argmax(1).numpy()
    out = {}
    for name, label in IMAGES.items():
        c = LABELS.index(label)
        i = next(i for i in range(len(predicted)) if y[i] == c and predicted[i] == c)
        out[name] = (i, x[i])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(REPO, 'examples'))
    ap.add_argument('--no-speech', action='store_true', help='images only')
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name, (index, pixels) in pick_images().items():
        Image.fromarray(np.ascontiguousarray(pixels), mode='L').save(os.path.join(args.out, name), optimize=False)
        print(f'{name}: Fashion-MNIST test image {index} ({IMAGES[name]})')
    if not args.no_speech:
        path = os.path.join(args.out, 'clip.wav')
        subprocess.run(['espeak-ng', '-v', 'en-us', '-s', '140', '-w', path, SPEECH], check=True)
        print(f'clip.wav: espeak-ng, "{SPEECH}"')


if __name__ == '__main__':
    main()
