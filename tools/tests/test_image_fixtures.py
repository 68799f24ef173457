"""The image fixtures: deterministic, identical to the committed ones, small, and a reference that agrees
with PIL and torch where they are plain."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from acm_tools import image_fixtures
from regeneration import generate_twice, tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMITTED = os.path.join(REPO, 'Tests', 'ACMServingTests', 'Fixtures', 'images')




@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    return generate_twice(image_fixtures.main, tmp_path_factory.mktemp('images'))


def test_generation_is_deterministic(generated):
    """Should write the same bytes every time."""
    a, b = generated
    assert a == b


def test_committed_fixtures_match_the_generator(generated):
    """Should find the committed fixtures byte-identical to a fresh run (regenerate with
    `PYTHONPATH=tools .venv/bin/python -m acm_tools.image_fixtures` if the tool changed on purpose)."""
    a, _ = generated
    committed = tree(COMMITTED)
    assert sorted(committed) == sorted(a)
    for name in a:
        assert committed[name] == a[name], f'{name} drifted from acm_tools.image_fixtures'


def test_cases_and_expected_agree():
    """Should list every case once, with its file present and an expected f32 [C, S, S] array."""
    with open(os.path.join(COMMITTED, 'cases.json')) as fh:
        cases = json.load(fh)
    expected = load_file(os.path.join(COMMITTED, 'expected.safetensors'))
    assert sorted(c['name'] for c in cases) == sorted(expected)
    for c in cases:
        assert os.path.exists(os.path.join(COMMITTED, c['file']))
        assert c['channels'] == len(c['preprocessing']['mean']) == len(c['preprocessing']['std'])
        x = expected[c['name']]
        assert x.dtype == np.float32 and x.shape == (c['channels'], c['image_size'], c['image_size'])


def test_fixtures_stay_small():
    """Should keep all fixture files together under 100 KB."""
    assert sum(len(b) for b in tree(COMMITTED).values()) < 100_000


def test_identity_case_is_plain_normalisation():
    """Should give (pixel / 255 - mean) / std when resize and crop change nothing."""
    case = next(c for c in image_fixtures.cases() if c.name == 'grey_png_identity')
    with open(os.path.join(COMMITTED, case.file), 'rb') as fh:
        pixels = np.asarray(Image.open(fh).convert('L'), dtype=np.float32)
    x = load_file(os.path.join(COMMITTED, 'expected.safetensors'))[case.name][0]
    np.testing.assert_allclose(x, (pixels / 255 - case.mean[0]) / case.std[0], atol=1e-6)


def test_reference_decodes_like_pil():
    """Should decode 8-bit images exactly as PIL's convert('RGB') (alpha dropped, gAMA ignored) and
    16-bit grey as round(v * 255 / 65535)."""
    files = image_fixtures.images()
    for name in ('rgba_9x17.png', 'gamma_10x7.png', 'palette_12x10.png', 'rgb_32x24.jpg'):
        pil = np.asarray(Image.open(io.BytesIO(files[name])).convert('RGB'))
        assert np.array_equal(image_fixtures.decode(files[name]), pil), name
    raw = np.asarray(Image.open(io.BytesIO(files['grey16_11x11.png'])), dtype=np.int64)
    assert raw.max() > 255  # really 16-bit
    grey = image_fixtures.decode(files['grey16_11x11.png'])
    assert np.array_equal(grey[..., 0], (raw * 255 + 32767) // 65535)
