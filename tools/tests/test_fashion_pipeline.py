"""The Fashion-MNIST pipeline end to end on a few hundred images (the full run is `make fashion-models`)."""
import json
import os

from acm_tools import fashion_pipeline
from acm_tools.modelio import load_model


def test_quick_pipeline(tmp_path):
    """Should train a teacher, ACMize it with and without budget robustness, and write loadable models
    with their metrics."""
    work, models = tmp_path / 'work', tmp_path / 'models'
    fashion_pipeline.main(['--quick', '--work', str(work), '--models', str(models)])
    teacher = load_model(str(models / 'fashion-vit-teacher'))
    acm = load_model(str(models / 'fashion-vit-acm'))
    assert not teacher.cfg.acm and len(acm.cfg.acm) == 5 * teacher.cfg.num_layers
    nonrobust = load_model(str(work / 'acm-nonrobust'))
    assert set(nonrobust.cfg.acm) == set(acm.cfg.acm)
    metrics = json.load(open(models / 'fashion-vit-acm' / 'metrics.json'))
    assert metrics['robust'] is True and 'after_phase3' in metrics
    assert json.load(open(work / 'acm-nonrobust' / 'metrics.json'))['robust'] is False
    assert set(json.load(open(work / 'pipeline.json'))['seconds']) >= {'teacher', 'acmize', 'acmize_nonrobust'}
