"""deploy/Dockerfile and .dockerignore, offline (no Docker engine needed): hadolint, and what the image promises that can
be read from the files: the Swift release CI uses, a non-root numeric user, a health check, the models assembled as
`make whisper-model` does, the runtime packages of every library the binary links, a build context without the host's
builds."""
import ast
import fnmatch
import re
import subprocess

from deployfiles import DEPLOY, ROOT, acm_server_binary, load_doc, tool

DOCKERFILE = DEPLOY / 'Dockerfile'


def instructions(text=None):
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    out, pending = [], ''
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith('#')):
            continue
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        full = pending + line
        pending = ''
        keyword, _, args = full.strip().partition(' ')
        out.append((keyword.upper(), ' '.join(args.split())))
    return out


def stages():
    """{stage name or index: [instructions]}, in order; the last stage is the image."""
    result, current = {}, None
    for keyword, args in instructions():
        if keyword == 'FROM':
            parts = args.split()
            current = parts[parts.index('AS') + 1] if 'AS' in parts else f'stage{len(result)}'
            result[current] = []
        if current is not None:
            result[current].append((keyword, args))
    return result


def final_stage():
    return list(stages().values())[-1]


def dockerignore_patterns():
    lines = (ROOT / '.dockerignore').read_text().splitlines()
    return [line.strip().rstrip('/') for line in lines if line.strip() and not line.startswith('#')]


def ignored(path, patterns):
    """Whether .dockerignore keeps path (relative to the context, or one of its parent folders) out of the context.
    Docker's rules as far as this file uses them: a pattern matches from the root, `**/` at any depth; no `!`."""
    assert not any(p.startswith('!') for p in patterns), 'exceptions (!) are not handled here'
    parts = path.split('/')
    prefixes = ['/'.join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        for prefix in prefixes:
            if pattern.startswith('**/'):
                if any(fnmatch.fnmatchcase('/'.join(prefix.split('/')[j:]), pattern[3:])
                       for j in range(len(prefix.split('/')))):
                    return True
            elif fnmatch.fnmatchcase(prefix, pattern):
                return True
    return False


def test_hadolint_finds_nothing():
    """Should pass hadolint with no finding at any level, style included."""
    result = subprocess.run([tool('hadolint'), '--no-color', '-t', 'style', str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_ignores_only_unpinned_apt_packages():
    """Should ignore only DL3008 (apt packages without versions, which bookworm's point releases replace): without
    the inline pragmas, that and nothing else is reported, so hadolint does run and the pragmas hide nothing more."""
    result = subprocess.run([tool('hadolint'), '--no-color', '--disable-ignore-pragma', str(DOCKERFILE)],
                            capture_output=True, text=True)
    rules = set(re.findall(r' (DL\d{4}|SC\d{4}) ', result.stdout))
    assert rules == {'DL3008'}, result.stdout
    assert DOCKERFILE.read_text().count('# hadolint ignore=') == DOCKERFILE.read_text().count('# hadolint ignore=DL3008\n')


def test_swift_release_is_the_one_ci_uses():
    """Should build with the Swift release this machine (and so CI, which runs here) builds with, named once."""
    [arg] = [a for k, a in instructions() if k == 'ARG' and a.startswith('SWIFT_VERSION=')]
    pinned = arg.split('=', 1)[1]
    [build_from] = [a for k, a in stages()['build'] if k == 'FROM']
    assert build_from.startswith('swift:${SWIFT_VERSION}-bookworm '), build_from
    version = subprocess.run(['swift', '--version'], capture_output=True, text=True, check=True).stdout
    m = re.search(r'Swift version (\d+\.\d+(?:\.\d+)?)', version)
    assert m, version
    assert m.group(1) == pinned, f'CI builds with Swift {m.group(1)}, the image with {pinned}'


def test_final_stage_runs_as_a_numeric_non_root_user_matching_the_manifests():
    """Should run as a numeric non-root uid and gid, the one the Kubernetes and KServe manifests name."""
    users = [a for k, a in final_stage() if k == 'USER']
    assert users, 'the final stage has no USER'
    m = re.fullmatch(r'(\d+):(\d+)', users[-1])
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, users[-1]
    deployment = load_doc(DEPLOY / 'kubernetes/base/deployment.yaml')
    pod = deployment['spec']['template']['spec']['securityContext']
    assert (pod['runAsUser'], pod['runAsGroup']) == (int(m.group(1)), int(m.group(2)))
    runtime = load_doc(DEPLOY / 'kserve/cluster-serving-runtime.yaml')
    container = runtime['spec']['containers'][0]['securityContext']
    assert (container['runAsUser'], container['runAsGroup']) == (int(m.group(1)), int(m.group(2)))


def test_healthcheck_asks_the_ready_route_with_a_tool_the_image_installs():
    """Should have a HEALTHCHECK on /v2/health/ready whose client (wget) the final stage installs."""
    [check] = [a for k, a in final_stage() if k == 'HEALTHCHECK']
    assert '/v2/health/ready' in check and 'CMD' in check
    installs = ' '.join(a for k, a in final_stage() if k == 'RUN' and 'apt-get install' in a)
    assert 'wget' in check and re.search(r'\bwget\b', installs), (check, installs)


def test_default_command_serves_the_bundled_config_and_args_replace_it():
    """Should run acm-serve as the entrypoint with `serve --config` the image's config as the default command, so that
    `docker run IMAGE serve --model NAME=/mnt/models` (KServe's args) replaces only the command."""
    entry = [a for k, a in final_stage() if k == 'ENTRYPOINT']
    cmd = [a for k, a in final_stage() if k == 'CMD']
    assert entry == ['["acm-serve"]'], entry
    assert cmd == ['["serve", "--config", "/opt/acm-serve/config/acm-serve.json"]'], cmd
    copies = [a for k, a in final_stage() if k == 'COPY']
    assert 'deploy/docker/acm-serve.json /opt/acm-serve/config/acm-serve.json' in copies


def test_models_stage_mirrors_make_whisper_model():
    """Should assemble Whisper with the command `make whisper-model` runs, with tools/requirements.txt's torch, and copy
    the two directories that command writes (whisper_tiny_en's `out` and `acm_out`)."""
    makefile = (ROOT / 'Makefile').read_text()
    recipe = re.search(r'^whisper-model:.*\n\t(.*)$', makefile, re.M).group(1)
    assert recipe == 'PYTHONPATH=tools $(PY) -m acm_tools.whisper_tiny_en', recipe
    runs = [a for k, a in stages()['models'] if k == 'RUN']
    assert 'PYTHONPATH=tools python -m acm_tools.whisper_tiny_en' in runs, runs
    torch_pin = re.search(r'^(torch==\S+)', (ROOT / 'tools/requirements.txt').read_text(), re.M).group(1)
    assert any(torch_pin in run.split() for run in runs), (torch_pin, runs)
    module = ast.parse((ROOT / 'tools/acm_tools/whisper_tiny_en.py').read_text())
    constants = {t.id: n.value.value for n in module.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    copies = [a for k, a in final_stage() if k == 'COPY' and a.startswith('--from=models ')]
    sources = {a.split()[1] for a in copies}
    assert sources == {f"/src/{constants['out']}", f"/src/{constants['acm_out']}"}, sources
    # The trained ACM layers it assembles from are copied in before it runs.
    assert f"{constants['acm_layers']} ./{constants['acm_layers']}" in [a for k, a in stages()['models'] if k == 'COPY']


def test_bundled_config_is_the_repository_config_with_the_image_paths():
    """Should serve, in the image, what config/acm-serve.json serves, with the same settings, each model in
    ../models/NAME relative to the config, where the final stage copies it."""
    import json
    repo = json.loads((ROOT / 'config/acm-serve.json').read_text())
    image = json.loads((DEPLOY / 'docker/acm-serve.json').read_text())
    assert set(image['models']) == set(repo['models'])
    for name, model in image['models'].items():
        assert model['path'] == f'../models/{name}'
        assert {k: v for k, v in model.items() if k != 'path'} == {k: v for k, v in repo['models'][name].items() if k != 'path'}
    assert {k: v for k, v in image.items() if k != 'models'} == {k: v for k, v in repo.items() if k != 'models'}
    destinations = {a.split()[-1] for k, a in final_stage() if k == 'COPY'}
    for name in image['models']:
        assert f'/opt/acm-serve/models/{name}' in destinations, name


def test_dockerignore_keeps_host_builds_out_and_copied_sources_in():
    """Should leave the host's venvs, SwiftPM and make builds and tools out of the build context, and every path the
    Dockerfile copies from the context in (a COPY of an ignored or missing path fails the build)."""
    patterns = dockerignore_patterns()
    for path in ['.venv', '.venv-kserve', '.build', '.build-tsan', 'build', 'build/models/whisper-tiny.en', '.tools',
                 'Tests/fuzz/.build', '.git', 'tools/acm_tools/__pycache__']:
        assert ignored(path, patterns), f'{path} is in the build context'
    for keyword, args in instructions():
        if keyword != 'COPY' or args.startswith('--from='):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f'COPY {source}: no such path'
            assert not ignored(source.rstrip('/'), patterns), f'COPY {source}: excluded by .dockerignore'
    # The ignore check itself: a path that is not excluded.
    assert not ignored('Sources/ACMCore', patterns)


def test_runtime_packages_cover_every_library_the_binary_links():
    """Should install, in the final stage, the Debian package of every shared library the binary needs (libc aside),
    and copy the Swift runtime libraries from the toolchain's lib/swift/linux, as the build stage's ldd filter does."""
    binary = acm_server_binary()
    needed = re.findall(r'\(NEEDED\)\s+Shared library: \[(.+?)\]',
                        subprocess.run(['readelf', '-d', binary], capture_output=True, text=True, check=True).stdout)
    ldd = dict(re.findall(r'^\s*(\S+) => (\S+)', subprocess.run(['ldd', binary], capture_output=True, text=True,
                                                                   check=True).stdout, re.M))
    installs = ' '.join(a for k, a in final_stage() if k == 'RUN' and 'apt-get install' in a).split()
    swift_libs, packages = [], {}
    for lib in needed:
        if lib.startswith('ld-linux'):
            continue
        path = ldd[lib]
        if '/lib/swift/linux/' in path:
            swift_libs.append(lib)
            continue
        real = subprocess.run(['readlink', '-f', path], capture_output=True, text=True, check=True).stdout.strip()
        owner = subprocess.run(['dpkg', '-S', real], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(['dpkg', '-S', path], capture_output=True, text=True, check=True)
        packages[lib] = owner.stdout.split(':')[0]
    assert swift_libs, 'no Swift runtime library found: is the binary statically linked? then drop the copy'
    for lib, package in packages.items():
        assert package == 'libc6' or package in installs, f'{lib} comes from {package}, which the image does not install'
    [ldd_run] = [a for k, a in stages()['build'] if k == 'RUN' and 'ldd' in a]
    assert '/lib/swift/linux/' in ldd_run.replace('\\/', '/')
    assert any(k == 'COPY' and a.startswith('--from=build /out/swift/ /usr/lib/swift/linux/') for k, a in final_stage())

