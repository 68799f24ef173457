"""`acm-serve predict` end to end: the released binary on a fixture model against the PyTorch golden outputs."""
import os
import re
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, 'Tests', 'ACMModelsTests', 'Fixtures')
BIN = os.environ.get('ACM_SERVE_BIN', os.path.join(REPO, '.build', 'release', 'acm-serve'))

MODES = {
    'auto': [],
    'cap_0.5': ['--budget', '0.5'],
    'cap_0.25': ['--budget', '0.25'],
    'uniform_2': ['--uniform-k', '2'],
    'full': ['--full'],
}
LINE = re.compile(r'^\s+(\d+)\. .* p=([0-9.]+)\s+logit=(-?[0-9.]+)\s+\(class (\d+)\)$')
HEADER = re.compile(r'^image (\d+): compute fraction ([0-9.]+) \((.*)\)$')


def run(*args):
    assert os.path.exists(BIN), f'build acm-serve first (swift build -c release); looked for {BIN}'
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)


def parse(stdout):
    """{image: (fraction, [(class, logit, p), ...])} from predict's output."""
    images = {}
    current = None
    for line in stdout.splitlines():
        if m := HEADER.match(line):
            current = int(m.group(1))
            images[current] = (float(m.group(2)), [])
        elif m := LINE.match(line):
            images[current][1].append((int(m.group(4)), float(m.group(3)), float(m.group(2))))
    return images


@pytest.mark.parametrize('fixture', ['vit_mixed', 'vit_bias'])
@pytest.mark.parametrize('mode', MODES)
def test_predict_matches_pytorch(fixture, mode, tmp_path):
    """Should print the top 5 classes with PyTorch's logits and the compute fraction PyTorch computed."""
    d = os.path.join(FIXTURES, fixture)
    golden = load_file(os.path.join(d, 'golden.safetensors'))
    out = run('predict', '--model', d, '--input', os.path.join(d, 'example.npy'), *MODES[mode])
    assert out.returncode == 0, out.stderr
    images = parse(out.stdout)
    assert list(images) == [0]
    fraction, top = images[0]
    logits = golden[f'logits.{mode}'][0]
    assert abs(fraction - golden[f'fraction.{mode}'][0]) <= 5e-5
    assert [c for c, _, _ in top] == list(np.argsort(-logits)[:5])
    for c, logit, _ in top:
        assert abs(logit - logits[c]) <= 1e-4 * max(1.0, np.abs(logits).max()) + 5e-5  # printed to 4 places
    assert top[0][2] >= top[-1][2]


def test_predict_batch_file(tmp_path):
    """Should classify every image of an [N, C, H, W] file, matching the batch's golden logits."""
    d = os.path.join(FIXTURES, 'vit_mixed')
    golden = load_file(os.path.join(d, 'golden.safetensors'))
    batch = tmp_path / 'batch.npy'
    np.save(batch, golden['input'])
    out = run('predict', '--model', d, '--input', str(batch), '--budget', '0.25', '--top', '1')
    assert out.returncode == 0, out.stderr
    images = parse(out.stdout)
    assert sorted(images) == [0, 1, 2, 3]
    for b, (_, top) in images.items():
        assert top[0][0] == int(np.argmax(golden['logits.cap_0.25'][b]))


@pytest.mark.parametrize('args, message', [
    (['--budget', '1.5'], "invalid for '--budget <budget>': a compute budget must be in (0, 1], got 1.5"),
    (['--budget', '0'], 'a compute budget must be in (0, 1], got 0.0'),
    (['--budget', '0.5', '--full'], 'choose at most one'),
])
def test_predict_rejects_bad_options(args, message):
    """Should refuse an out-of-range budget or conflicting modes with a message and a non-zero exit."""
    d = os.path.join(FIXTURES, 'vit_mixed')
    out = run('predict', '--model', d, '--input', os.path.join(d, 'example.npy'), *args)
    assert out.returncode != 0
    assert message in out.stderr


def test_predict_rejects_bad_files(tmp_path):
    """Should name the problem for a wrong input shape, a non-.npy input and a missing model."""
    d = os.path.join(FIXTURES, 'vit_mixed')
    wrong = tmp_path / 'wrong.npy'
    np.save(wrong, np.zeros((3, 16, 16), np.float32))
    out = run('predict', '--model', d, '--input', str(wrong))
    assert out.returncode != 0 and 'input has shape [3, 16, 16]' in out.stderr

    text = tmp_path / 'text.npy'
    text.write_text('hello')
    out = run('predict', '--model', d, '--input', str(text))
    assert out.returncode != 0 and 'not a .npy file' in out.stderr

    out = run('predict', '--model', str(tmp_path / 'nope'), '--input', str(wrong))
    assert out.returncode != 0 and 'config.json' in out.stderr
