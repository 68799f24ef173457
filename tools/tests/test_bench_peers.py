"""make bench-peers: the ONNX export the peers run, their worker, the goals, the BENCHMARKS.md writer, and the
ViT-B model writer."""
import json
import os

import numpy as np
import onnx
import pytest
import torch

from acm_tools import bench_peers, vitb_model
from acm_tools.modelio import load_model
from acm_tools.onnx_export import export_onnx, onnx_max_diff, tolerance
from acm_tools.vit import compute_fraction

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEACHER = os.path.join(REPO, 'models', 'fashion-vit-teacher')


@pytest.fixture(scope='module')
def teacher_onnx(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('onnx') / 'teacher.onnx')
    return export_onnx(TEACHER, path), path


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_onnx_export_of_the_teacher_matches_pytorch(teacher_onnx, runtime):
    """Should give the teacher's PyTorch logits within 1e-4 through ONNX Runtime and OpenVINO fp32, at a batch
    size other than the traced one."""
    model, path = teacher_onnx
    assert onnx_max_diff(model, path, runtime) <= tolerance


def test_onnx_export_has_a_dynamic_batch(teacher_onnx):
    """Should name the batch dimension of the input and the logits, and fix the others."""
    graph = onnx.load(teacher_onnx[1]).graph
    [x], [y] = graph.input, graph.output
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ['batch', 1, 28, 28]
    assert [d.dim_param or d.dim_value for d in y.type.tensor_type.shape.dim][0] == 'batch'


def test_onnx_export_refuses_an_acm_model(tmp_path):
    """Should export dense models only: the peers run the teacher."""
    with pytest.raises(ValueError, match='has ACMs'):
        export_onnx(os.path.join(REPO, 'models', 'fashion-vit-acm'), str(tmp_path / 'acm.onnx'))


@pytest.mark.parametrize('engine', ['openvino', 'onnxruntime'])
def test_peer_worker_times_the_onnx_model(teacher_onnx, engine):
    """Should time the model in a fresh worker process and report images/s and what the runtime ran."""
    m = bench_peers.measure_peer(dict(engine=engine, precision='f32', onnx=teacher_onnx[1], shape=[1, 28, 28],
                                      batch=4, seconds=0.05))
    assert m['images_per_s'] > 0 and m['runs'] >= 1
    if engine == 'openvino':
        assert 'FullyConnected f32' in m['reported']


def test_goals_are_ratios_of_bests():
    """Should compute each goal from the two rows' best images/s at its batch size, and say met or missed."""
    m = bench_peers.models['vit-b']
    table_rows = bench_peers.rows(m)
    res = {'ov fp32': {1: [dict(images_per_s=10.0), dict(images_per_s=12.0)], 8: [dict(images_per_s=20.0)]},
           'ours dense': {1: [dict(images_per_s=11.0, compute_fraction=1.0), dict(images_per_s=12.0,
                                                                                  compute_fraction=1.0)],
                          8: [dict(images_per_s=18.0, compute_fraction=1.0)]},
           'ours cap 0.5': {8: [dict(images_per_s=35.0, compute_fraction=0.5)]}}
    summary = bench_peers.summarize(res)
    assert summary['ov fp32'][1] == dict(best=12.0, median=11.0)
    got = bench_peers.goals(m, table_rows, summary)
    assert [g['met'] for g in got] == [True, False, True, None]
    assert got[0]['figure'] == pytest.approx(1.0) and got[2]['figure'] == pytest.approx(1.75)
    assert 'compute fraction 0.500' in got[2]['text'] and got[2]['text'].endswith('met')
    assert got[3]['text'].endswith('not measured')  # the bf16 rows did not run


def test_goals_leave_out_the_rows_not_run():
    """Should give only the goals whose rows --precision kept (`--precision bf16` leaves out our f32 rows, which the
    f32 goals compare), instead of failing on the missing rows' labels."""
    m = bench_peers.models['vit-b']
    table_rows = bench_peers.rows(m, precisions=('bf16',))
    summary = bench_peers.summarize({'ov bf16': {8: [dict(images_per_s=11.0)]},
                                     'ours dense bf16': {8: [dict(images_per_s=11.5, compute_fraction=1.0)]}})
    got = bench_peers.goals(m, table_rows, summary)
    assert len(got) == 1 and got[0]['met'] and 'acm-serve bf16 dense' in got[0]['text']


def test_table_keeps_three_figures_of_slow_rows():
    """Should print images/s to three significant figures where a row runs under 100 (ViT-B's 5 to 20 images/s
    rounded to integers could not tell 6.0 from 6.4), and as integers above."""
    assert bench_peers.rate(6.44) == '6.44' and bench_peers.rate(11.25) == '11.2' and bench_peers.rate(5.7) == '5.70'
    assert bench_peers.rate(2101.9) == '2102' and bench_peers.rate(99.94) == '99.9'


def test_passes_must_realize_the_same_compute_fraction():
    """Should refuse a row whose passes realized different compute fractions on the same images (the engine ran a
    different network in one process: its speed must not stand as the best), and accept equal ones."""
    same = {'ours cap 0.5': {8: [dict(images_per_s=21.0, compute_fraction=0.5),
                                 dict(images_per_s=22.0, compute_fraction=0.5)]}}
    assert bench_peers.summarize(same)['ours cap 0.5'][8]['best'] == 22.0
    odd = {'ours cap 0.5': {1: [dict(images_per_s=20.0, compute_fraction=0.5),
                                dict(images_per_s=67.0, compute_fraction=0.089)]}}
    with pytest.raises(RuntimeError, match='different compute fractions'):
        bench_peers.summarize(odd)


def test_bf16_rows_say_when_they_ran_f32():
    """Should time our rows in each precision asked for, and label a bf16 row that ran f32 (a CPU without AVX-512
    BF16) as such rather than as bf16."""
    m = bench_peers.models['fashion']
    keys = [key for key, _, _ in bench_peers.rows(m, ['f32'])]
    assert 'ours dense' in keys and not any(k.endswith('bf16') and k.startswith('ours') for k in keys)
    table_rows = bench_peers.rows(m, ['bf16'])
    assert [k for k, _, w in table_rows if w['engine'] == 'acm-serve'] == \
        ['ours dense bf16', 'ours auto bf16', 'ours cap 0.5 bf16', 'ours cap 0.25 bf16']
    res = {'ov fp32': {1: [dict(images_per_s=10.0)]},
           'ours dense bf16': {1: [dict(images_per_s=9.0, compute_fraction=1.0, precision='f32')]},
           'ours cap 0.5 bf16': {1: [dict(images_per_s=15.0, compute_fraction=0.5, precision='bf16')]}}
    skip = {key: 'not run' for key, _, _ in table_rows if key not in res}
    text = bench_peers.table(table_rows, bench_peers.summarize(res), [1], skip)
    assert 'acm-serve bf16, teacher (ran f32: no bf16 on this CPU) | 9.00 |' in text
    assert 'acm-serve bf16 ACM, cap 0.5 | 15.0 |' in text


def test_write_section_replaces_only_its_own_section(tmp_path):
    """Should rewrite the text between this model's markers and nothing else, append a section when the markers
    are missing, and refuse a broken pair."""
    path = tmp_path / 'BENCHMARKS.md'
    b, e = bench_peers.markers('fashion')
    vb, ve = bench_peers.markers('vit-b')
    before = (f'# Benchmarks\n\nintro\n\n## Peers: old\n\n{b}\nold table\n{e}\n\nReading: kept.\n\n'
              f'## Peers: ViT-B\n\n{vb}\nvit-b table\n{ve}\n\n## Last\n\ntail\n')
    path.write_text(before)
    bench_peers.write_section(str(path), 'fashion', 'ignored', 'new table\n')
    assert path.read_text() == before.replace('old table', 'new table')

    bench_peers.write_section(str(path), 'other', 'Something else', 'its table')
    text = path.read_text()
    assert text.startswith(before.replace('old table', 'new table').rstrip('\n'))
    ob, oe = bench_peers.markers('other')
    assert text.endswith(f'\n\n## Peers: Something else\n\n{ob}\nits table\n{oe}\n')

    path.write_text(f'# Benchmarks\n\n{e}\n{b}\n')
    with pytest.raises(ValueError, match='markers'):
        bench_peers.write_section(str(path), 'fashion', 'x', 'y')


def test_vitb_model_config_is_vit_b_16():
    """Should describe ViT-B/16 with the brief's ACMs: MLP N=4 h=768 GELU k_min 0, projections N=4 h=96
    identity k_min 1, gates of 3 layers of 16."""
    cfg = vitb_model.config(acm=True)
    assert (cfg.image_size, cfg.patch_size, cfg.num_channels, cfg.hidden_dim, cfg.num_layers, cfg.num_heads,
            cfg.mlp_dim, cfg.num_classes) == (224, 16, 3, 768, 12, 12, 3072, 1000)
    assert len(cfg.acm) == 12 * 5
    mlp = cfg.acm['encoder.layers.encoder_layer_11.mlp']
    q = cfg.acm['encoder.layers.encoder_layer_0.self_attention.q_proj']
    assert (mlp.num_learners, mlp.learner_dim, mlp.activation, mlp.min_choice) == (4, 768, 'gelu', 0)
    assert (q.num_learners, q.learner_dim, q.activation, q.min_choice) == (4, 96, 'identity', 1)
    assert (q.gate.depth, q.gate.hidden_dim, q.gate.activation) == (3, 16, 'identity')
    assert not vitb_model.config(acm=False).acm


def test_vitb_model_small_writes_loadable_models(tmp_path):
    """Should write dense and ACM models that load strictly, give finite logits, and whose caps set the compute."""
    vitb_model.main(['--small', '--out', str(tmp_path / 'dense')])
    vitb_model.main(['--small', '--acm', '--out', str(tmp_path / 'acm')])
    dense, acm = load_model(str(tmp_path / 'dense')), load_model(str(tmp_path / 'acm'))
    assert not dense.cfg.acm and len(acm.cfg.acm) == 2 * 5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(dense(x)[0]).all()
        _, auto = acm(x, mode='auto')
        logits, capped = acm(x, mode='cap', beta=0.5)
    assert torch.isfinite(logits).all()
    assert compute_fraction(acm.cfg, auto, 2).min() > 0.5  # the gates favour all learners ...
    assert np.allclose(compute_fraction(acm.cfg, capped, 2).numpy(), 0.5, atol=0.05)  # ... so the cap decides


def test_vitb_models_are_rebuilt_when_their_description_changes(tmp_path):
    """Should call a ViT-B directory stale when missing or built to other shapes, and fresh when it matches."""
    from acm_tools.bench_peers import vitb_stale
    from acm_tools.modelio import config_to_json
    d = tmp_path / 'vit-b-acm'
    assert vitb_stale(str(d), acm=True)
    d.mkdir()
    obj = config_to_json(vitb_model.config(acm=True))
    (d / 'config.json').write_text(json.dumps(obj))
    assert not vitb_stale(str(d), acm=True)
    assert vitb_stale(str(d), acm=False)
    obj['acm']['encoder.layers.encoder_layer_0.self_attention.q_proj']['learner_dim'] = 192
    (d / 'config.json').write_text(json.dumps(obj))
    assert vitb_stale(str(d), acm=True)


def test_interleaved_goals_are_ratios_of_medians():
    """Should compute the goals between two of our own rows from one interleaved run's median batches, and leave out
    the goals against a peer."""
    m = bench_peers.models['fashion']
    row = lambda median, best: dict(images_per_s=median, best_images_per_s=best, compute_fraction=0.5)
    measured = {32: {'ours dense': row(100.0, 200.0), 'ours auto': row(125.0, 300.0), 'ours cap 0.5': row(150.0, 150.0),
                     'ours cap 0.25': row(170.0, 170.0), 'ours uniform 1': row(200.0, 200.0),
                     'ours uniform 2': row(160.0, 160.0)}}
    got = bench_peers.interleaved_goals(m, measured)
    assert [g['figure'] for g in got] == pytest.approx([1.5, 1.25, 0.85, 0.9375])
    assert [g['met'] for g in got] == [True, False, True, True]
    assert got[0]['text'].startswith('(4) cap 0.5 ≥ 1.40× dense at batch 32, interleaved: 1.50×')


def test_measure_interleaved_runs_one_process_and_reads_each_row(tmp_path):
    """Should run acm-bench once with --interleave, the dense model as --baseline and every policy, and take each
    row's median rate; a row it did not print is an error."""
    args = tmp_path / 'args'
    fake = tmp_path / 'acm-bench'
    lines = [dict(batch=32, policy=p, images_per_s=v, best_images_per_s=v + 1, compute_fraction=f)
             for p, v, f in [('auto', 120.0, 0.63), ('cap 0.50', 130.0, 0.5), ('baseline', 100.0, 1.0)]]
    fake.write_text('#!/bin/sh\necho "$@" > ' + str(args) + '\n'
                    + ''.join(f"echo '{json.dumps(x)}'\n" for x in lines))
    fake.chmod(0o755)
    dirs = dict(dense='models/d', acm='models/a')
    got = bench_peers.measure_interleaved(str(fake), dirs, ['auto', 'cap 0.5'], 32, 1.5)
    assert got['ours dense']['images_per_s'] == 100.0 and got['ours cap 0.5']['best_images_per_s'] == 131.0
    assert got['ours auto']['compute_fraction'] == 0.63
    ran = args.read_text().split()
    assert '--interleave' in ran and ran[ran.index('--baseline') + 1] == 'models/d'
    assert ran[ran.index('--model') + 1] == 'models/a' and ran.count('--budget') == 2
    with pytest.raises(RuntimeError, match='no line'):
        bench_peers.measure_interleaved(str(fake), dirs, ['auto', 'uniform 1'], 32, 1.5)
