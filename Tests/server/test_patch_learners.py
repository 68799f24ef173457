"""The per-patch learner heatmap of image models with ACMs: the `patch_learners` output of /infer (only when asked
for by name) and `heatmap=1` on /classify, on the bundled Fashion-MNIST models and real test images; checked against
the PyTorch reference's gate choices (acm_tools.vit) for the same input."""
import gzip
import json
import os
import struct
import sys

import numpy as np
import pytest

from harness import REPO, Server, error_message, infer, png_bytes, request

ACM, DENSE = 'fashion-vit-acm', 'fashion-vit-teacher'
MODELS = os.path.join(REPO, 'models')
DATA = '/usr/share/datasets/fashion-mnist'
GRID = 7  # 28 / patch 4
PATCHES = GRID * GRID


def fashion_test_images(count):
    """The first `count` Fashion-MNIST test images, uint8 [count, 28, 28] (Debian's dataset-fashion-mnist)."""
    with gzip.open(os.path.join(DATA, 't10k-images-idx3-ubyte.gz'), 'rb') as f:
        raw = f.read()
    _, n, rows, cols = struct.unpack_from('>IIII', raw, 0)
    return np.frombuffer(raw, np.uint8, count * rows * cols, 16).reshape(count, rows, cols)


def acm_config():
    with open(os.path.join(MODELS, ACM, 'config.json')) as f:
        return json.load(f)


def preprocess(pixels):
    """The model's preprocessing of 28×28 grey pixels (no resize or crop needed): [n, 1, 28, 28] float32."""
    pre = acm_config()['preprocessing']
    x = (pixels.astype(np.float32) / 255.0 - np.float32(pre['mean'][0])) / np.float32(pre['std'][0])
    return x[:, None].astype(np.float32)


@pytest.fixture(scope='module')
def server():
    s = Server(models={ACM: {'path': os.path.join(MODELS, ACM)}, DENSE: {'path': os.path.join(MODELS, DENSE)}})
    yield s
    s.close()


@pytest.fixture(scope='module')
def pixels():
    return fashion_test_images(8)


def bounds():
    acms = acm_config()['acm'].values()
    return min(a['min_choice'] for a in acms), max(a['num_learners'] for a in acms)


def heat(server, x, budget=None, binary=True, model=ACM):
    status, _, header, arrays = infer(server.port, model, x, budget=budget, outputs=['logits', 'patch_learners'],
                                      binary_outputs=binary)
    assert status == 200, header
    return header, arrays['patch_learners']


def test_metadata_lists_it(server):
    """Should list patch_learners (FP32 [-1, 49]) in the ACM model's metadata, and not in the dense model's."""
    for model, has in ((ACM, True), (DENSE, False)):
        status, _, body = request(server.port, 'GET', f'/v2/models/{model}')
        assert status == 200
        outputs = {o['name']: o for o in json.loads(body)['outputs']}
        assert ('patch_learners' in outputs) == has
        if has:
            assert outputs['patch_learners']['datatype'] == 'FP32'
            assert outputs['patch_learners']['shape'] == [-1, PATCHES]


def test_not_returned_by_default(server, pixels):
    """Should leave patch_learners out when the request names no outputs, so existing clients see no change."""
    status, _, header, arrays = infer(server.port, ACM, preprocess(pixels[:1]))
    assert status == 200
    assert sorted(arrays) == ['labels', 'logits']


@pytest.mark.parametrize('binary', [True, False])
def test_shape_range_and_variation(server, pixels, binary):
    """Should give [n, 49] values in [min k_min, N] that vary across a real image's patches, the same for an image
    alone as in a batch of three."""
    lo, hi = bounds()
    _, values = heat(server, preprocess(pixels[:3]), binary=binary)
    assert values.shape == (3, PATCHES)
    assert values.dtype == np.float32
    assert ((values >= lo) & (values <= hi)).all()
    for row in values:
        assert row.std() > 0.05, row
    # each value is a mean of integers over the ACMs: a multiple of 1 / (number of ACMs)
    layers = len(acm_config()['acm'])
    assert np.allclose(values * layers, np.round(values * layers), atol=1e-4)
    for i in range(3):
        _, alone = heat(server, preprocess(pixels[i:i + 1]), binary=binary)
        np.testing.assert_array_equal(alone[0], values[i])


def test_follows_the_budget(server, pixels):
    """Should fall with the compute budget: 0.25 runs fewer learners per patch than 0.5, and 0.5 fewer than full
    (1.0, where the gates choose), as the compute fraction does."""
    x = preprocess(pixels[:4])
    means, fractions = [], []
    for budget in (0.25, 0.5, 1.0):
        header, values = heat(server, x, budget=budget)
        means.append(float(values.mean()))
        fractions.append(header['parameters']['compute_fraction'])
    assert means[0] < means[1] < means[2], means
    assert fractions[0] < fractions[1] < fractions[2], fractions
    _, hi = bounds()
    # the mean learner count over the patches and the compute fraction tell the same story, roughly
    assert abs(means[0] / hi - fractions[0]) < 0.15, (means, fractions)


def test_classify_heatmap(server, pixels):
    """Should add 7 rows of 7 patch values and learners_max to /classify's answer with heatmap=1, equal to /infer's
    patch_learners for the same PNG; and nothing without it."""
    png = png_bytes(pixels[0])
    path = f'/v2/models/{ACM}/classify'
    status, _, body = request(server.port, 'POST', path + '?compute_budget=0.5&heatmap=1', png)
    assert status == 200, body
    answer = json.loads(body)
    lo, hi = bounds()
    assert answer['learners_max'] == hi and answer['learners_min'] == lo
    grid = np.array(answer['patch_learners'], np.float32)
    assert grid.shape == (GRID, GRID)
    _, values = heat(server, preprocess(pixels[:1]), budget=0.5)
    np.testing.assert_allclose(grid.reshape(-1), values[0], rtol=0, atol=1e-6)
    status, _, body = request(server.port, 'POST', path + '?compute_budget=0.5', png)
    assert status == 200 and 'patch_learners' not in json.loads(body)
    status, headers, body = request(server.port, 'POST', path + '?heatmap=maybe', png)
    assert status == 400 and 'heatmap' in error_message(status, headers, body)


def test_dense_model_refuses(server, pixels):
    """Should answer 400, saying the model is dense, when a model without ACMs is asked for the heatmap."""
    status, headers, body, _ = infer(server.port, DENSE, preprocess(pixels[:1]), outputs=['logits', 'patch_learners'])
    assert status == 400
    assert 'dense' in error_message(status, headers, body)
    status, headers, body = request(server.port, 'POST', f'/v2/models/{DENSE}/classify?heatmap=1', png_bytes(pixels[0]))
    assert status == 400
    assert 'dense' in error_message(status, headers, body)


@pytest.mark.parametrize('mode', ['auto', 'cap_0.5', 'cap_0.25'])
def test_matches_the_pytorch_reference(server, pixels, mode):
    """Should equal, exactly, the per-patch mean of the PyTorch reference's gate choices (acm_tools.vit) for the same
    input: every ACM's k of every patch token, averaged over the ACMs."""
    import torch  # the tools' venv has it (scripts/setup)
    sys.path.insert(0, os.path.join(REPO, 'tools'))
    from acm_tools.modelio import load_model

    torch.set_num_threads(2)
    model = load_model(os.path.join(MODELS, ACM))
    x = preprocess(pixels[:2])
    budget = None if mode == 'auto' else float(mode.split('_')[1])
    with torch.no_grad():
        kwargs = {'mode': 'auto'} if budget is None else {'mode': 'cap', 'beta': budget}
        _, choices = model(torch.from_numpy(x), **kwargs)
    ks = np.stack([choices[p].numpy() for p in acm_config()['acm']])  # (ACMs, B, T)
    expected = (ks[:, :, 1:].astype(np.int64).sum(axis=0) / ks.shape[0]).astype(np.float32)  # (B, patches)
    for i in range(2):
        _, values = heat(server, x[i:i + 1], budget=budget)
        np.testing.assert_array_equal(values[0], expected[i])
