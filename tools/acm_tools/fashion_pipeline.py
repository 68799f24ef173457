"""
Rebuild the bundled Fashion-MNIST models from scratch: the dense ViT teacher, the ACMized model trained
for every budget (robust), and the comparison model trained without budget robustness.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.fashion_pipeline            # or: make fashion-models
    PYTHONPATH=tools .venv/bin/python -m acm_tools.fashion_pipeline --quick --work /tmp/f --models /tmp/m

Steps, each in <work>/: teacher/ (train_teacher), acm/ (acmize, phases 1-3 with random caps; its
phase-2 model in acm/phase2/), acm-nonrobust/ (phase 3 again from acm/phase2, without caps). Then the
teacher and the robust ACM model are copied to <models>/fashion-vit-teacher and <models>/fashion-vit-acm
(the server's default config serves the latter), the comparison model to <work>/acm-nonrobust, and the
Python/Swift parity fixture is written. <work>/pipeline.json records each step's wall time.
--quick trains on a few hundred images for a step or two (CI runs it to keep the code path tested).
"""
import argparse
import json
import os
import shutil
import time

from . import acmize, parity, train_teacher

# -----------------------------------------------------------------------------
# config
work = 'build/fashion'
models = 'models'
quick_limit = 300  # training images with --quick
# -----------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--work', default=work)
    ap.add_argument('--models', default=models)
    ap.add_argument('--quick', action='store_true', help='a few hundred images, one epoch per phase')
    args = ap.parse_args(argv)
    limit = ['--limit', str(quick_limit)] if args.quick else []
    teacher_epochs = ['--epochs', '1'] if args.quick else []
    acm_epochs = ['--epochs', '1', '1', '1'] if args.quick else []
    times = {}

    def step(name, fn, argv):
        t = time.time()
        fn(argv)
        times[name] = round(time.time() - t, 1)

    teacher, acm, nonrobust = (os.path.join(args.work, d) for d in ('teacher', 'acm', 'acm-nonrobust'))
    step('teacher', train_teacher.main, ['--out', teacher] + teacher_epochs + limit)
    step('acmize', acmize.main, ['--teacher', teacher, '--out', acm] + acm_epochs + limit)
    step('acmize_nonrobust', acmize.main, ['--teacher', teacher, '--out', nonrobust, '--no-robust',
                                           '--from-phase2', os.path.join(acm, 'phase2')] + acm_epochs + limit)
    for src, name in [(teacher, 'fashion-vit-teacher'), (acm, 'fashion-vit-acm')]:
        dst = os.path.join(args.models, name)
        os.makedirs(dst, exist_ok=True)
        for f in ('config.json', 'model.safetensors', 'metrics.json'):
            shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
    if not args.quick:
        step('parity_fixture', parity.main, ['--model', os.path.join(args.models, 'fashion-vit-acm')])
    times['total'] = round(sum(times.values()), 1)
    with open(os.path.join(args.work, 'pipeline.json'), 'w') as f:
        json.dump({'seconds': times, 'quick': args.quick}, f, indent=1)
    print(f'pipeline done: {times}')


if __name__ == '__main__':
    main()
