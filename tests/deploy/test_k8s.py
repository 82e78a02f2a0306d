"""The Kubernetes overlays render, every manifest is valid for the API server, and they hold
the properties the deployment relies on (one beat, non-root pods, probes, no Redis in prod).

Validation is offline: kubernetes-validate ships the Kubernetes OpenAPI schemas (as JSON
Schema) inside the package, and ``strict=True`` also rejects fields the API does not know
(a typo such as ``readinessprobe`` would otherwise be dropped silently by the API server).
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.deployfiles import OVERLAYS, Manifest, find, pod_spec

# The oldest Kubernetes the manifests claim (deploy/README.md) and the newest schemas shipped.
K8S_VERSIONS = ("1.28", kubernetes_validate.latest_version())
GREENPLACE_UID = 10001


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a connection fails the test (the validation must be offline)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network use during validation: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_is_valid_for_the_kubernetes_api(
        rendered: dict[str, list[Manifest]], overlay: str, version: str, no_network: None) -> None:
    errors = []
    for manifest in rendered[overlay]:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: "
                          f"{'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_the_validation_rejects_an_unknown_field(rendered: dict[str, list[Manifest]],
                                                 no_network: None) -> None:
    deployment = copy.deepcopy(find(rendered["dev"], "Deployment", "greenplace-api"))
    pod_spec(deployment)["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_beat_replaced_with_recreate(rendered: dict[str, list[Manifest]],
                                         overlay: str) -> None:
    beat = find(rendered[overlay], "Deployment", "greenplace-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def _pods(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_non_root_read_only_without_capabilities(
        rendered: dict[str, list[Manifest]], overlay: str) -> None:
    pods = _pods(rendered[overlay])
    assert {p["metadata"]["name"] for p in pods} >= {
        "greenplace-api", "greenplace-worker", "greenplace-beat"}
    for pod in pods:
        spec, name = pod_spec(pod), pod["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        if pod["metadata"]["labels"]["app.kubernetes.io/name"] == "greenplace":
            assert spec["securityContext"]["runAsUser"] == GREENPLACE_UID, name
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp
                       for m in container["volumeMounts"]), f"{name}: no writable /tmp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_is_probed_on_readyz_and_healthz(rendered: dict[str, list[Manifest]],
                                                 overlay: str) -> None:
    (container,) = pod_spec(find(rendered[overlay], "Deployment", "greenplace-api"))["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == 8000


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_and_beat_have_no_http_probe(rendered: dict[str, list[Manifest]],
                                             overlay: str) -> None:
    # They serve no HTTP: a probe would fail forever (see the comment in worker.yaml).
    for name in ("greenplace-worker", "greenplace-beat"):
        (container,) = pod_spec(find(rendered[overlay], "Deployment", name))["containers"]
        assert not {"livenessProbe", "readinessProbe", "ports"} & set(container), name


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions In) selects ``labels``."""
    match = selector.get("matchLabels", {})
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is understood here"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _template_labels(manifests: list[Manifest], name: str) -> dict[str, str]:
    kind = "StatefulSet" if name == "greenplace-redis" else "Deployment"
    labels: dict[str, str] = find(manifests, kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_pick_their_own_pods(rendered: dict[str, list[Manifest]],
                                       overlay: str) -> None:
    manifests = rendered[overlay]
    names = [p["metadata"]["name"] for p in _pods(manifests)]
    for pod in _pods(manifests):
        own = pod["metadata"]["name"]
        assert _selects(pod["spec"]["selector"], _template_labels(manifests, own)), own
        others = [n for n in names if n != own]
        assert not any(_selects(pod["spec"]["selector"], _template_labels(manifests, n))
                       for n in others), f"{own}'s selector also picks another workload's pods"
    service = find(manifests, "Service", "greenplace-api")
    assert [n for n in names if _selects({"matchLabels": service["spec"]["selector"]},
                                         _template_labels(manifests, n))] == ["greenplace-api"]
    for name in ("greenplace-api", "greenplace-worker"):
        budget = find(manifests, "PodDisruptionBudget", name)
        assert budget["spec"]["maxUnavailable"] == 1
        assert _selects(budget["spec"]["selector"], _template_labels(manifests, name))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    api_labels = _template_labels(manifests, "greenplace-api")
    (api_policy,) = [p for p in policies if _selects(p["spec"]["podSelector"], api_labels)]
    assert api_policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]
    for name in ("greenplace-worker", "greenplace-beat"):
        (policy,) = [p for p in policies if _selects(p["spec"]["podSelector"],
                                                     _template_labels(manifests, name))]
        assert policy["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in policy["spec"]
    if overlay == "dev":
        redis_labels = _template_labels(manifests, "greenplace-redis")
        (redis_policy,) = [p for p in policies
                           if _selects(p["spec"]["podSelector"], redis_labels)]
        (rule,) = redis_policy["spec"]["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
        (source,) = rule["from"]
        allowed = {n for n in ("greenplace-api", "greenplace-worker", "greenplace-beat",
                               "greenplace-redis")
                   if _selects(source["podSelector"], _template_labels(manifests, n))}
        assert allowed == {"greenplace-api", "greenplace-worker", "greenplace-beat"}


def _env_sources(pod: Manifest) -> list[tuple[str, str]]:
    (container,) = pod_spec(pod)["containers"]
    return [(kind, source[kind]["name"]) for source in container["envFrom"]
            for kind in ("configMapRef", "secretRef") if kind in source]


def test_dev_runs_redis_in_the_cluster_with_appendonly(
        rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["dev"]
    redis = find(manifests, "StatefulSet", "greenplace-redis")
    (container,) = pod_spec(redis)["containers"]
    args = " ".join(container["args"])
    assert "--appendonly yes" in args and "--requirepass $(REDISCLI_AUTH)" in args
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    service = find(manifests, "Service", "greenplace-redis")
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    config = find(manifests, "ConfigMap", "greenplace-config")["data"]
    assert config["GREENPLACE_REDIS_URL"] == "redis://greenplace-redis:6379/0"
    assert service["spec"]["ports"][0]["port"] == 6379
    secret = find(manifests, "Secret", "greenplace-secrets")
    assert set(secret["data"]) == {"GREENPLACE_REDIS_PASSWORD"}
    password_ref = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert password_ref == {"name": secret["metadata"]["name"],
                            "key": "GREENPLACE_REDIS_PASSWORD"}
    for name in ("greenplace-api", "greenplace-worker"):
        assert find(manifests, "Deployment", name)["spec"]["replicas"] == 1
    for pod in _pods(manifests):
        if pod["kind"] == "Deployment":
            assert _env_sources(pod) == [("configMapRef", find(manifests, "ConfigMap",
                                          "greenplace-config")["metadata"]["name"]),
                                         ("secretRef", secret["metadata"]["name"])]


def test_prod_uses_an_external_redis_from_a_secret(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["prod"]
    kinds = {m["kind"] for m in manifests}
    assert "StatefulSet" not in kinds and "PersistentVolumeClaim" not in kinds
    assert "Secret" not in kinds, "prod's Secret is created by hand, never rendered"
    assert not [m for m in manifests if "redis" in m["metadata"]["name"]]
    config = find(manifests, "ConfigMap", "greenplace-config")["data"]
    assert not [k for k in config if k.startswith("GREENPLACE_REDIS")], \
        "the Redis URL and password come from the Secret only"
    for pod in _pods(manifests):
        assert ("secretRef", "greenplace-secrets") in _env_sources(pod)


def test_prod_scales_out(rendered: dict[str, list[Manifest]]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    worker = find(prod, "Deployment", "greenplace-worker")
    assert worker["spec"]["replicas"] > find(dev, "Deployment", "greenplace-worker")["spec"][
        "replicas"]
    api = find(prod, "Deployment", "greenplace-api")
    assert "replicas" not in api["spec"], "the autoscaler owns the API's replica count"
    hpa = find(prod, "HorizontalPodAutoscaler", "greenplace-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "greenplace-api"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_a_restricted_namespace(rendered: dict[str, list[Manifest]],
                                                    overlay: str) -> None:
    manifests = rendered[overlay]
    (namespace,) = [m for m in manifests if m["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {m["metadata"].get("namespace") for m in manifests if m is not namespace} == {name}
