"""The bundled demo model: reproducible from the tool, and loadable by the reference."""
import os

from acm_tools import demo_model
from acm_tools.modelio import load_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED = os.path.join(REPO, 'models', 'vit-demo')


def test_bundled_demo_model_matches_the_generator(tmp_path):
    """Should find models/vit-demo byte-identical to a fresh `python -m acm_tools.demo_model`."""
    demo_model.main(['--out', str(tmp_path)])
    for name in ('config.json', 'model.safetensors'):
        with open(tmp_path / name, 'rb') as fresh, open(os.path.join(BUNDLED, name), 'rb') as bundled:
            assert fresh.read() == bundled.read(), f'{name} drifted: run make demo-model'


def test_demo_model_loads_with_acms_everywhere():
    """Should load strictly, with an ACM at every MLP and attention projection."""
    model = load_model(BUNDLED)
    assert len(model.cfg.acm) == 2 * 5
    assert model.labels[0] == 'T-shirt/top' and model.preprocessing['color'] == 'grey'
