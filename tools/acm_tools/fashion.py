"""Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX files), as float tensors.

Splits: the 60k training images are split, with a fixed seed, into `train` and a held-out `val`
(5000 images); `test` is the 10k test set, used only for final reports.
"""
import gzip
import os

import numpy as np
import torch

DIR = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
LABELS = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']
MEAN, STD = 0.2860, 0.3530  # of the training images' pixels in [0, 1]
PREPROCESSING = dict(color='grey', resize=28, crop=28, mean=[MEAN], std=[STD])
VAL_SIZE = 5000
SPLIT_SEED = 0


def read_idx(path):
    """An IDX file (gzip or not) -> numpy array of its dtype (uint8 here) and shape."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f'{path}: not an unsigned-byte IDX file')
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(name):
    for candidate in (os.path.join(DIR, name + '.gz'), os.path.join(DIR, name)):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f'{name} not found in {DIR}: apt-get install dataset-fashion-mnist '
                            f'(or set FASHION_MNIST_DIR)')


def normalize(images_u8):
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], (x/255 - mean)/std as the model's preprocessing."""
    x = torch.from_numpy(images_u8.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return (x - MEAN) / STD


def load(split, limit=None):
    """'train', 'val' or 'test' -> (images float32 [N, 1, 28, 28], labels int64 [N])."""
    if split == 'test':
        x, y = read_idx(find('t10k-images-idx3-ubyte')), read_idx(find('t10k-labels-idx1-ubyte'))
    else:
        x, y = read_idx(find('train-images-idx3-ubyte')), read_idx(find('train-labels-idx1-ubyte'))
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        idx = order[:VAL_SIZE] if split == 'val' else order[VAL_SIZE:]
        x, y = x[idx], y[idx]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return normalize(x), torch.from_numpy(y.astype(np.int64))
