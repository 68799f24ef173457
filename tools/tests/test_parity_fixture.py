"""The committed Python/Swift parity fixture matches the bundled model."""
import os

import torch
from safetensors.torch import load_file

from acm_tools import parity

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, 'models', 'fashion-vit-acm')
FIXTURE = os.path.join(REPO, parity.out)


def test_parity_fixture_matches_the_bundled_model():
    """Should find the committed fixture equal to a fresh computation from models/fashion-vit-acm
    (regenerate with `python -m acm_tools.parity --model models/fashion-vit-acm`)."""
    committed = load_file(FIXTURE)
    fresh = parity.fixture(MODEL)
    assert sorted(committed) == sorted(fresh)
    for name in fresh:
        assert torch.equal(committed[name], fresh[name]), name
