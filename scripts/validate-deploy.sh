#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s offline, with the tools that
# `scripts/setup.sh --test` pins in .venv-tools/ (scripts/deploy-tools.txt):
#   1. yamllint (deploy/.yamllint) on everything under deploy/;
#   2. kubernetes-validate --strict (unknown fields are errors) against the schemas it bundles,
#      for the newest Kubernetes it knows and the oldest we support (the pod-index label the
#      node ids come from is GA since 1.32); an object whose kind or apiVersion has no schema
#      is a failure here, not the tool's warning;
#   3. scripts/check-k8s-manifests.py: the objects agree with each other and with
#      config/default.toml (selectors, ports, grace period, ConfigMap keys, Secret keys);
#   4. when kubectl is installed, the kustomization rendered by `kubectl kustomize` (offline)
#      passes the schema check too.
# Exits non-zero on the first stage that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=(1.37.0 1.32.0)
tools=.venv-tools/bin
if [ ! -x "$tools/kubernetes-validate" ] || [ ! -x "$tools/yamllint" ]; then
  echo "validate-deploy: $tools lacks the tools; run scripts/setup.sh --test" >&2
  exit 1
fi

echo "-- yamllint"
"$tools/yamllint" --strict -c deploy/.yamllint deploy/

# kubernetes-validate exits 0 when it has no schema for an object (it only warns), so its
# output is read as well: anything but INFO lines fails.
schema_check() {
  local out rc=0 args=()
  for v in "${K8S_VERSIONS[@]}"; do args+=(-k "$v"); done
  out=$("$tools/kubernetes-validate" --strict "${args[@]}" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  if [ "$rc" -ne 0 ] || grep -qv '^INFO ' <<<"$out"; then
    echo "validate-deploy: schema check failed" >&2
    return 1
  fi
}

echo "-- kubernetes-validate (Kubernetes ${K8S_VERSIONS[*]})"
manifests=()
for f in deploy/k8s/*.yaml; do
  # The kustomization is kustomize's own file, not a Kubernetes object; step 3 checks it.
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
schema_check "${manifests[@]}"

echo "-- consistency"
"$tools/python" scripts/check-k8s-manifests.py .

if command -v kubectl >/dev/null 2>&1; then
  echo "-- kubectl kustomize deploy/k8s"
  rendered=$(mktemp)
  trap 'rm -f "$rendered"' EXIT
  kubectl kustomize deploy/k8s >"$rendered"
  schema_check "$rendered"
else
  echo "-- kubectl not installed: the rendered kustomization is not checked (each file is)"
fi
echo "validate-deploy: ok"
