"""Checks that the Kubernetes manifests in deploy/k8s agree with each other and with the config.

A schema check (kubernetes-validate) proves each object is well formed; it cannot see that a
Service selects no pod, that the grace period is shorter than the drain, or that the ConfigMap
names a key voicegate does not have (which stops startup). Those are checked here.

Usage: check-k8s-manifests.py <repo root>   (scripts/validate-deploy.sh runs it)
"""

import pathlib
import sys
import tomllib

import yaml


def flat_keys(table, prefix=""):
    """Every leaf key of a TOML table, dotted: {"http": {"bind": ..}} -> {"http.bind"}."""
    keys = set()
    for k, v in table.items():
        if isinstance(v, dict):
            keys |= flat_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def main(root):
    k8s = root / "deploy" / "k8s"
    failures = []
    checks = 0

    def check(ok, message):
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(message)

    docs = {}
    for path in sorted(k8s.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]

    # The kustomization lists every manifest, and never the Secret template: re-applying it
    # must not put placeholders over real secrets.
    kustomization = docs.pop("kustomization.yaml")[0]
    listed = set(kustomization.get("resources", []))
    for name in listed:
        check((k8s / name).is_file(), f"kustomization.yaml lists {name}, which does not exist")
    for name in docs:
        if name.endswith(".template.yaml"):
            check(name not in listed, f"kustomization.yaml must not apply the template {name}")
        else:
            check(name in listed, f"{name} is not in kustomization.yaml's resources")

    objects = [(name, d) for name, ds in docs.items() for d in ds]

    def one(kind, name=None):
        found = [d for _, d in objects
                 if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
        check(len(found) == 1, f"want exactly one {kind} {name or ''}, found {len(found)}")
        return found[0] if found else {}

    sts = one("StatefulSet")
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p for p in container["ports"]}

    def selects(selector, what):
        check(selector and all(pod_labels.get(k) == v for k, v in selector.items()),
              f"{what} selector {selector} does not match the pod labels {pod_labels}")

    selects(sts["spec"]["selector"]["matchLabels"], "StatefulSet")
    headless = one("Service", sts["spec"]["serviceName"])
    check(headless.get("spec", {}).get("clusterIP") == "None",
          "the StatefulSet's serviceName must be a headless Service")
    check(headless.get("spec", {}).get("publishNotReadyAddresses") is True,
          "the headless Service must publish draining (not ready) pods: they own their calls")
    for _, svc in objects:
        if svc["kind"] != "Service":
            continue
        selects(svc["spec"]["selector"], f"Service {svc['metadata']['name']}")
        for p in svc["spec"]["ports"]:
            check(p["targetPort"] in ports,
                  f"Service {svc['metadata']['name']} targets port {p['targetPort']}, "
                  f"which the container does not name")
    selects(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")
    anti = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    selects(anti[0]["labelSelector"]["matchLabels"], "pod anti-affinity")

    # The ConfigMap's TOML: only keys voicegate has, and values the pod spec agrees with.
    defaults = tomllib.loads((root / "config" / "default.toml").read_text())
    config_map = one("ConfigMap", "voicegate-config")
    (file_name, text), = config_map["data"].items()
    config = tomllib.loads(text)
    for key in sorted(flat_keys(config) - flat_keys(defaults)):
        check(False, f"configmap.yaml sets {key}, which config/default.toml does not have")
    args = container["args"]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    check(args[args.index("--config") + 1] == f"{mount}/{file_name}",
          f"--config must name {mount}/{file_name}, the mounted ConfigMap")

    def setting(section, key):
        return config.get(section, {}).get(key, defaults[section][key])

    media = ports["media"]
    check(media["protocol"] == "UDP" and media["containerPort"] == setting("media", "udp_port"),
          "the media port must be UDP media.udp_port")
    check(ports["http"]["containerPort"] == int(setting("http", "bind").rsplit(":", 1)[1]),
          "the http port must be http.bind's port")
    grace_ms = pod["spec"]["terminationGracePeriodSeconds"] * 1000
    drain_ms = setting("calls", "shutdown_grace_ms")
    check(grace_ms >= drain_ms + 5000,
          f"terminationGracePeriodSeconds ({grace_ms} ms) must exceed calls.shutdown_grace_ms "
          f"({drain_ms} ms) by at least 5 s, or SIGKILL cuts the drain short")

    # Every Secret key the pod reads exists in the template, and the template holds only
    # placeholders: a real secret never lives in the repository.
    secret = one("Secret", "voicegate-secrets")
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(ref["name"] == "voicegate-secrets" and ref["key"] in secret["stringData"],
                  f"{env['name']} reads {ref['name']}/{ref['key']}, which the template lacks")
    for key, value in secret["stringData"].items():
        check(value == "REPLACE_ME", f"secret.template.yaml's {key} must be the placeholder")

    for message in failures:
        print(f"FAIL {message}")
    print(f"k8s manifests: {checks - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1])))
