"""Validate rendered Kubernetes manifests (`kubectl kustomize` output) against the
Kubernetes schemas, KEDA's resources against KEDA's models, and the rules of
deploy/README.md that no schema knows: image tags, hardening, secrets per component, names
and label values the API server accepts (the schemas only say "string"), and a release
label that matches the image tag.

Usage: python manifests.py KUBERNETES_VERSION RENDERED.yaml [RENDERED.yaml ...]
Runs in deploy/.tools (kubernetes-validate, cloudcoil.models.keda)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

KEDA_MODELS = {
    "ScaledObject": keda.ScaledObject,
    "TriggerAuthentication": keda.TriggerAuthentication,
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
AUTOSCALERS = ("HorizontalPodAutoscaler", "ScaledObject")
# The only Secret keys a worker or the migration Job may see (README: "Secrets").
DATABASE_AND_BROKER = {"CDRFLOW_AMQP_URL", "CDRFLOW_DATABASE_URL"}
# The provider API credentials of the reconciler (its sources' appkey_env, secretkey_env):
# its own Secret, which no other workload may see.
RECONCILER_SECRET = "cdrflow-reconciler"  # noqa: S105 (a Secret's name, not its value)

# The API server's rules (apimachinery validation): most names are DNS-1123 subdomains;
# a Service's is a DNS-1035 label; a workload's name goes into its pods' labels (job-name,
# controller-revision-hash, ...), whose values are at most 63 characters.
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
NAME_MAX = 253
LABEL_MAX = 63
NAME_IN_POD_LABELS = ("Job", "CronJob", "Deployment", "StatefulSet", "Service")
RELEASE_LABEL = "app.kubernetes.io/version"

Doc = dict[str, Any]


def main(argv: list[str]) -> int:
    version, paths = argv[0], argv[1:]
    failures = 0
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            docs = [doc for doc in yaml.safe_load_all(handle) if doc]
        problems = [
            *schema_problems(docs, version),
            *name_problems(docs),
            *policy_problems(docs),
        ]
        for problem in problems:
            print(f"{path}: {problem}")
        failures += len(problems)
        if not problems:
            print(f"{path}: {len(docs)} resources valid (Kubernetes {version}, KEDA, policy)")
    return 1 if failures else 0


def schema_problems(docs: list[Doc], version: str) -> Iterator[str]:
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        if doc["apiVersion"].startswith("keda.sh/"):
            yield from (f"{name}: {p}" for p in keda_problems(doc))
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            yield f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}"


def name_problems(docs: list[Doc]) -> Iterator[str]:
    for doc in docs:
        kind, name = doc["kind"], str(doc["metadata"].get("name", ""))
        if not DNS_1123_SUBDOMAIN.fullmatch(name) or len(name) > NAME_MAX:
            yield f"{kind}/{name}: name is not a DNS-1123 subdomain (lowercase, digits, '-', '.')"
        if kind == "Service" and not DNS_1035_LABEL.fullmatch(name):
            yield f"{kind}/{name}: not a DNS-1035 label (no '.', starts with a letter)"
        if kind in NAME_IN_POD_LABELS and len(name) > LABEL_MAX:
            yield f"{kind}/{name}: name is {len(name)} characters, over {LABEL_MAX}"
        for key, value in label_values(doc):
            if len(value) > LABEL_MAX or not LABEL_VALUE.fullmatch(value):
                yield f"{kind}/{name}: label {key}={value!r} is not a valid label value"


def label_values(doc: Doc) -> Iterator[tuple[str, str]]:
    yield from doc["metadata"].get("labels", {}).items()
    template = doc.get("spec", {}).get("template", {})
    if isinstance(template, dict):
        yield from template.get("metadata", {}).get("labels", {}).items()


def keda_problems(doc: Doc) -> Iterator[str]:
    model = KEDA_MODELS.get(doc["kind"])
    if model is None:
        yield f"no KEDA model for kind {doc['kind']}"
        return
    try:
        parsed = model.model_validate(doc)
    except ValueError as exc:  # pydantic's ValidationError
        yield str(exc)
        return
    # The models ignore unknown fields; a misspelt field would be silently dropped.
    kept = parsed.model_dump(by_alias=True, exclude_unset=True)
    yield from (f"{path}: unknown field" for path in dropped_keys(doc, kept))


def dropped_keys(given: Any, kept: Any, path: str = "") -> Iterator[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                yield where
            else:
                yield from dropped_keys(value, kept[key], where)
    elif isinstance(given, list) and isinstance(kept, list):
        for index, (one, other) in enumerate(zip(given, kept, strict=False)):
            yield from dropped_keys(one, other, f"{path}[{index}]")


def policy_problems(docs: list[Doc]) -> Iterator[str]:
    secrets = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Secret"}
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in docs if doc["kind"] in AUTOSCALERS}
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            problems = workload_problems(doc, secrets, policies, scaled)
            yield from (f"{name}: {p}" for p in problems)
    if not any(p["spec"]["podSelector"] == {} for p in policies):
        yield "no default-deny NetworkPolicy"
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            name = f"ScaledObject/{doc['metadata']['name']}"
            yield from (f"{name}: {p}" for p in scaler_problems(doc))


def scaler_problems(doc: Doc) -> Iterator[str]:
    """A Prometheus trigger reads this installation's series only, and a broken trigger
    leaves a fixed count rather than the last reading."""
    namespace = doc["metadata"].get("namespace")
    for trigger in doc["spec"]["triggers"]:
        query = trigger["metadata"].get("query", "")
        if trigger["type"] == "prometheus" and f'namespace="{namespace}"' not in query:
            yield f"prometheus trigger not scoped to namespace {namespace}: {query}"
    if "fallback" not in doc["spec"]:
        yield "no fallback replicas"


def workload_problems(
    doc: Doc, secrets: dict[str, Doc], policies: list[Doc], scaled: set[str]
) -> Iterator[str]:
    pod = pod_spec(doc)
    component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
    if pod.get("automountServiceAccountToken") is not False:
        yield "automountServiceAccountToken is not false"
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        yield "pod seccompProfile is not RuntimeDefault"
    if doc["metadata"]["name"] in scaled and "replicas" in doc["spec"]:
        yield "fixed replicas: the autoscaler owns the count"
    release = doc["metadata"].get("labels", {}).get(RELEASE_LABEL)
    for container in pod.get("initContainers", []) + pod["containers"]:
        yield from (f"container {container['name']}: {p}" for p in container_problems(container))
        if release is not None:
            yield from (
                f"container {container['name']}: {p}" for p in release_problems(container, release)
            )
        if doc["kind"] != "Job":
            yield from (f"container {container['name']}: {p}" for p in probe_problems(container))
        if component != "ingress":
            yield from secret_problems(container, secrets, component)
    labels = pod_labels(doc)
    if not any(selects(p, labels) for p in policies if p["spec"]["podSelector"]):
        yield "no NetworkPolicy of its own"


def container_problems(container: Doc) -> Iterator[str]:
    image = container["image"]
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if "@sha256:" not in image and (not tag or tag == "latest"):
        yield f"image {image} has no release tag"
    context = container.get("securityContext", {})
    expected = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    for key, value in expected.items():
        if context.get(key) is not value:
            yield f"securityContext.{key} is not {value}"
    if not isinstance(context.get("runAsUser"), int) or context["runAsUser"] == 0:
        yield "securityContext.runAsUser is not a numeric non-root user"
    if context.get("capabilities", {}).get("drop") != ["ALL"]:
        yield "capabilities are not all dropped"
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(kind, {})):
            yield f"resources.{kind} lack cpu or memory"


def release_problems(container: Doc, release: str) -> Iterator[str]:
    """A cdrflow image's tag is the release the resources are labelled with (a digest
    alone is fine: the label names the release then)."""
    image = container["image"].partition("@")[0]
    repository, _, tag = (
        image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    )
    if repository.rsplit("/", 1)[-1] == "cdrflow" and tag and tag != release:
        yield f"image tag {tag} is not the release label {RELEASE_LABEL}={release}"


def probe_problems(container: Doc) -> Iterator[str]:
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            yield f"no {probe}"
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        yield "readinessProbe is not /readyz"
    if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        yield "livenessProbe is not /healthz"


def secret_problems(container: Doc, secrets: dict[str, Doc], component: str) -> Iterator[str]:
    """Provider tokens and signing secrets reach the ingress only; provider API
    credentials reach the reconciler only."""
    for source in container.get("envFrom", []):
        name = source.get("secretRef", {}).get("name")
        if name and _generated_from(name, RECONCILER_SECRET):
            if component != "reconciler":
                yield f"container {container['name']}: sees Secret {name}, the reconciler's"
            continue
        secret = secrets.get(name) if name else None
        if secret is None:
            continue  # created outside git (prod): its keys are the operator's to keep right
        extra = set(secret.get("data", {})) | set(secret.get("stringData", {}))
        extra -= DATABASE_AND_BROKER
        if extra:
            yield f"container {container['name']}: Secret {name} carries {sorted(extra)}"


def _generated_from(name: str, base: str) -> bool:
    """The Secret is `base`, or kustomize's `base-<hash>` of it."""
    return name == base or (name.startswith(f"{base}-") and "-" not in name[len(base) + 1 :])


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def pod_labels(doc: Doc) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"].get("labels", {})
    return labels


def selects(policy: Doc, labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
