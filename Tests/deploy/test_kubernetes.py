"""deploy/kubernetes: the core objects against Kubernetes' own schemas (kubernetes-validate, strict: an unknown field
fails), the kustomizations rendered with kubectl's kustomize, and what the manifests promise: restricted Pod Security,
probes on the v2 health routes, a grace period that covers the drain, an image that is not a bare :latest, and only
environment variables the server reads."""
import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from deployfiles import (DEFAULT_SHUTDOWN_GRACE_SECONDS, DEPLOY, KUBERNETES_VERSIONS, load_doc, load_docs,
                      server_env_variables, tool)

K8S = DEPLOY / 'kubernetes'
CORE_FILES = ['base/deployment.yaml', 'base/service.yaml', 'base/pdb.yaml', 'base/hpa.yaml', 'hpa-queue-depth.yaml',
              '../kserve/model-store.yaml']


def render(directory):
    """The objects `kubectl apply -k directory` would apply."""
    result = subprocess.run([tool('kubectl'), 'kustomize', str(directory)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def deployment():
    return load_doc(K8S / 'base/deployment.yaml')


@pytest.mark.parametrize('version', KUBERNETES_VERSIONS)
@pytest.mark.parametrize('name', CORE_FILES)
def test_core_objects_are_valid_kubernetes(name, version):
    """Should pass kubernetes-validate in strict mode (no unknown field) against the pinned Kubernetes releases."""
    for doc in load_docs(K8S / name):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field_and_a_wrong_type():
    """Should fail on a misspelt field and on a string where Kubernetes wants an integer (the validator is strict)."""
    bad = deployment()
    bad['spec']['template']['spec']['containers'][0]['readinessProb'] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)
    bad = deployment()
    bad['spec']['template']['spec']['terminationGracePeriodSeconds'] = '75'
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize('directory', ['.', 'base', 'monitoring'])
def test_kustomizations_list_files_that_exist(directory):
    """Should list, in each kustomization, only resources that exist (files, or folders with a kustomization)."""
    kustomization = load_doc(K8S / directory / 'kustomization.yaml')
    for resource in kustomization['resources']:
        path = K8S / directory / resource
        assert path.is_file() or (path / 'kustomization.yaml').is_file(), f'{directory}: {resource}'


def test_kustomization_renders_the_core_objects():
    """Should render, with kubectl's kustomize, the Deployment, Service, PDB and HPA, each valid."""
    objects = render(K8S)
    assert sorted(o['kind'] for o in objects) == sorted(
        ['Deployment', 'Service', 'PodDisruptionBudget', 'HorizontalPodAutoscaler'])
    for o in objects:
        kubernetes_validate.validate(o, KUBERNETES_VERSIONS[-1], strict=True)
    [hpa] = [o for o in objects if o['kind'] == 'HorizontalPodAutoscaler']
    assert [m['type'] for m in hpa['spec']['metrics']] == ['Resource'], 'the default HPA is the CPU one'


def test_monitoring_overlay_adds_the_service_monitor_and_rules():
    """Should render the core objects plus a ServiceMonitor and a PrometheusRule from deploy/kubernetes/monitoring."""
    kinds = sorted(o['kind'] for o in render(K8S / 'monitoring'))
    assert kinds == sorted(['Deployment', 'Service', 'PodDisruptionBudget', 'HorizontalPodAutoscaler',
                            'ServiceMonitor', 'PrometheusRule'])


def test_queue_depth_hpa_is_optional_and_replaces_the_cpu_one():
    """Should keep the queue-depth HPA out of the default kustomization, under the CPU HPA's name, on the exported
    acm_pending_requests, which the prometheus-adapter values serve."""
    rendered = [o['metadata']['name'] for o in render(K8S) if o['kind'] == 'HorizontalPodAutoscaler']
    assert rendered == ['acm-serve'] and 'hpa-queue-depth.yaml' not in load_doc(K8S / 'base/kustomization.yaml')['resources']
    queue, cpu = load_doc(K8S / 'hpa-queue-depth.yaml'), load_doc(K8S / 'base/hpa.yaml')
    assert queue['metadata']['name'] == cpu['metadata']['name']
    assert queue['spec']['scaleTargetRef'] == cpu['spec']['scaleTargetRef']
    [pods] = [m for m in queue['spec']['metrics'] if m['type'] == 'Pods']
    adapter = load_doc(K8S / 'prometheus-adapter-values.yaml')
    [rule] = adapter['rules']['custom']
    assert rule['name']['as'] == pods['pods']['metric']['name'] == 'acm_pending_requests'


def test_pod_security_is_restricted():
    """Should meet the restricted Pod Security Standard: non-root numeric user, RuntimeDefault seccomp, no privilege
    escalation, every capability dropped, and a read-only root filesystem with no writable volume."""
    pod = deployment()['spec']['template']['spec']
    assert pod['securityContext']['runAsNonRoot'] is True
    assert isinstance(pod['securityContext']['runAsUser'], int) and pod['securityContext']['runAsUser'] > 0
    assert pod['securityContext']['seccompProfile'] == {'type': 'RuntimeDefault'}
    for container in pod['containers']:
        sc = container['securityContext']
        assert sc['allowPrivilegeEscalation'] is False
        assert sc['capabilities'] == {'drop': ['ALL']}
        assert sc['readOnlyRootFilesystem'] is True
        assert not container.get('volumeMounts')
    assert not pod.get('volumes')
    assert not pod.get('hostNetwork') and not pod.get('hostPID') and not pod.get('hostIPC')


def test_probes_use_the_v2_health_routes():
    """Should probe startup and readiness on /v2/health/ready and liveness on /v2/health/live, on the served port."""
    [container] = deployment()['spec']['template']['spec']['containers']
    port_names = {p['name'] for p in container['ports']}
    routes = {probe: container[probe]['httpGet'] for probe in ['startupProbe', 'readinessProbe', 'livenessProbe']}
    assert routes['startupProbe']['path'] == routes['readinessProbe']['path'] == '/v2/health/ready'
    assert routes['livenessProbe']['path'] == '/v2/health/live'
    assert all(r['port'] in port_names for r in routes.values())


def test_grace_period_covers_the_drain():
    """Should give the pod longer than the preStop sleep plus the server's shutdown grace plus a long batch, so that
    SIGKILL never cuts an accepted request."""
    pod = deployment()['spec']['template']['spec']
    [container] = pod['containers']
    env = {e['name']: e.get('value') for e in container.get('env', [])}
    grace = float(env.get('ACM_SERVE_SHUTDOWN_GRACE_SECONDS', DEFAULT_SHUTDOWN_GRACE_SECONDS))
    pre_stop = container['lifecycle']['preStop']['exec']['command']
    assert pre_stop[0] == 'sleep'
    longest_batch = 30  # Whisper: 8 utterances of up to 10 minutes, about 40 s on 2 cores; at least 30 s kept
    assert pod['terminationGracePeriodSeconds'] >= int(pre_stop[1]) + grace + longest_batch


def test_image_is_versioned_and_pulled_only_when_absent():
    """Should name a versioned tag (never a bare or :latest one) with imagePullPolicy IfNotPresent, so that an image
    loaded into kind or minikube is used, in the manifest and as rendered."""
    for objects in [[deployment()], render(K8S)]:
        [d] = [o for o in objects if o['kind'] == 'Deployment']
        [container] = d['spec']['template']['spec']['containers']
        name, _, tag = container['image'].rpartition(':')
        assert name and re.fullmatch(r'\d+\.\d+\.\d+', tag), container['image']
        assert container['imagePullPolicy'] == 'IfNotPresent'


def test_environment_holds_only_variables_the_server_reads():
    """Should set only ACM_SERVE_* variables the server knows (it refuses to start on others), and turn off the
    Service links through which Kubernetes would add ACM_SERVE_PORT=tcp://... for the Service named acm-serve."""
    known = server_env_variables()
    pod = deployment()['spec']['template']['spec']
    assert pod['enableServiceLinks'] is False
    for container in pod['containers']:
        for e in container.get('env', []):
            assert not e['name'].startswith('ACM_SERVE_') or e['name'] in known, e['name']
    # The check itself: what a Service named acm-serve would inject is not a variable the server reads.
    assert 'ACM_SERVE_SERVICE_HOST' not in known


def test_service_pdb_and_hpa_point_at_the_deployment():
    """Should select the Deployment's pods (Service, PDB) and scale the Deployment (HPA), on its named port."""
    d = deployment()
    labels = d['spec']['template']['metadata']['labels']
    service, pdb = load_doc(K8S / 'base/service.yaml'), load_doc(K8S / 'base/pdb.yaml')
    assert service['spec']['selector'].items() <= labels.items()
    assert pdb['spec']['selector']['matchLabels'].items() <= labels.items()
    assert pdb['spec']['maxUnavailable'] == 1 and 'minAvailable' not in pdb['spec']
    [container] = d['spec']['template']['spec']['containers']
    assert {p['targetPort'] for p in service['spec']['ports']} <= {p['name'] for p in container['ports']}
    for name in ['base/hpa.yaml', 'hpa-queue-depth.yaml']:
        hpa = load_doc(K8S / name)
        assert hpa['spec']['scaleTargetRef'] == {'apiVersion': 'apps/v1', 'kind': 'Deployment',
                                                 'name': d['metadata']['name']}
        assert hpa['spec']['minReplicas'] >= d['spec']['replicas'] > pdb['spec']['maxUnavailable']

