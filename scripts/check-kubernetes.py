"""Checks rendered Nexus Kubernetes manifests (deploy/kubernetes) for what the schemas cannot
see: that each region's gateways keep their promises to adapters and operators.

Usage: check-kubernetes.py KIND RENDERED.yaml OUT_DIR [REGION]
  KIND is `region` (an overlay of deploy/kubernetes/overlays) or `control-plane`.
  Every config file found in a ConfigMap is written to OUT_DIR (for `nexus config check`).
Exits 1 naming each problem found.
"""

import sys

import yaml

problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


def by_kind(docs, kind):
    return [d for d in docs if d and d.get("kind") == kind]


def one(docs, kind, name_prefix):
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].startswith(name_prefix)]
    need(len(found) == 1, f"expected one {kind} named {name_prefix}*, found {len(found)}")
    return found[0] if found else None


def selects(service_or_pdb_selector, pod_labels):
    return all(pod_labels.get(k) == v for k, v in service_or_pdb_selector.items())


def container_port(container, port):
    """The container port a probe's port (number or name) refers to."""
    for p in container.get("ports", []):
        if port in (p.get("containerPort"), p.get("name")):
            return p
    return None


def check_volumes_resolve(docs, pod_spec, owner):
    names = {(d["kind"], d["metadata"]["name"]) for d in docs if d}
    for v in pod_spec.get("volumes", []):
        if "configMap" in v:
            need(("ConfigMap", v["configMap"]["name"]) in names,
                 f"{owner}: volume {v['name']} names ConfigMap {v['configMap']['name']}, which is not rendered")
        if "secret" in v:
            need(("Secret", v["secret"]["secretName"]) in names,
                 f"{owner}: volume {v['name']} names Secret {v['secret']['secretName']}, which is not rendered")


def check_hardened(container, owner):
    sc = container.get("securityContext", {})
    need(sc.get("allowPrivilegeEscalation") is False, f"{owner}: allowPrivilegeEscalation must be false")
    need(sc.get("readOnlyRootFilesystem") is True, f"{owner}: readOnlyRootFilesystem must be true")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{owner}: capabilities must drop ALL")


def write_configs(docs, out_dir):
    for cm in by_kind(docs, "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith(".toml"):
                path = f"{out_dir}/{cm['metadata']['name']}-{key}"
                with open(path, "w") as f:
                    f.write(text)
                print(path)


def check_region(docs, region):
    ns = f"nexus-{region}"
    for d in docs:
        if d and d["kind"] != "Namespace":
            need(d["metadata"].get("namespace") == ns, f"{d['kind']}/{d['metadata']['name']} is not in namespace {ns}")
    sts = one(docs, "StatefulSet", "nexus-gateway")
    if not sts:
        return
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    c = spec["containers"][0]
    owner = "StatefulSet nexus-gateway"
    need(c["args"][:1] == ["gateway"] and "--config" in c["args"], f"{owner}: must run `nexus gateway --config FILE`")
    check_hardened(c, owner)
    need(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{owner}: runAsNonRoot")
    anti = spec.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    need(any(t.get("topologyKey") == "kubernetes.io/hostname" and selects(t["labelSelector"]["matchLabels"], labels) for t in anti),
         f"{owner}: needs required pod anti-affinity on kubernetes.io/hostname against its own pods")
    # Probes on the standard gRPC health service, on a port the container serves.
    for probe in ("readinessProbe", "livenessProbe"):
        g = c.get(probe, {}).get("grpc")
        need(g is not None, f"{owner}: {probe} must be a gRPC (grpc.health.v1) probe")
        if g:
            need(container_port(c, g["port"]) is not None, f"{owner}: {probe} port {g['port']} is not a container port")
    need(c["readinessProbe"].get("grpc", {}).get("service") == "nexus.v1.Gateway",
         f"{owner}: readiness must ask for service nexus.v1.Gateway (NOT_SERVING while draining)")
    env = {e["name"]: e for e in c.get("env", [])}
    need(env.get("NEXUS_REGION", {}).get("valueFrom", {}).get("configMapKeyRef", {}).get("key") == "region",
         f"{owner}: NEXUS_REGION must come from the ConfigMap's region")
    cm_name = env.get("NEXUS_REGION", {}).get("valueFrom", {}).get("configMapKeyRef", {}).get("name")
    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name]
    need(len(cms) == 1 and cms[0]["data"].get("region") == region, f"ConfigMap {cm_name}: region must be {region}")
    check_volumes_resolve(docs, spec, owner)
    # Each gateway's certificate is in the Secret.
    secret_names = [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]
    secrets = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] in secret_names]
    keys = set().union(*[set((s.get("data") or {}).keys()) for s in secrets]) if secrets else set()
    for i in range(sts["spec"]["replicas"]):
        for f in (f"nexus-gateway-{i}.pem", f"nexus-gateway-{i}-key.pem"):
            need(f in keys, f"Secret {secret_names}: no {f} for replica {i}")
    need("ca.pem" in keys, "the gateways' Secret has no ca.pem")
    # SRV for adapters: a headless Service with a TCP port named `nexus`, selecting the
    # gateways and serving the pods' adapter port: _nexus._tcp.<service>.<ns>.svc.<domain>,
    # which nexus+srv://<service>.<ns>.svc.<domain> looks up.
    adapter_port = container_port(c, "nexus")
    need(adapter_port is not None and adapter_port["protocol"] == "TCP", f"{owner}: needs a TCP container port named nexus")
    services = by_kind(docs, "Service")
    srv = [s for s in services if s["spec"].get("clusterIP") == "None" and selects(s["spec"]["selector"], labels)
           and any(p.get("name") == "nexus" and p.get("protocol", "TCP") == "TCP" for p in s["spec"]["ports"])]
    need(len(srv) == 1, f"need one headless Service with a TCP port named `nexus` selecting the gateways (SRV _nexus._tcp), found {len(srv)}")
    if srv:
        print(f"adapters: nexus+srv://{srv[0]['metadata']['name']}.{ns}.svc.cluster.local "
              f"(SRV _nexus._tcp.{srv[0]['metadata']['name']}.{ns}.svc.cluster.local)")
    # QUIC: a UDP Service to the pods' federation port.
    fed_port = container_port(c, "nexus-fed")
    need(fed_port is not None and fed_port["protocol"] == "UDP", f"{owner}: needs a UDP container port named nexus-fed")
    udp = [s for s in services if selects(s["spec"]["selector"], labels)
           and any(p.get("protocol") == "UDP" and p.get("targetPort") in ("nexus-fed", 7424) for p in s["spec"]["ports"])]
    need(len(udp) >= 1, "need a UDP Service for the federation's QUIC links")
    pdb = one(docs, "PodDisruptionBudget", "nexus-gateway")
    if pdb:
        need(selects(pdb["spec"]["selector"]["matchLabels"], labels), "PodDisruptionBudget must select the gateways")
        need(pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") is not None,
             "PodDisruptionBudget must bound the gateways down at once")


def check_control_plane(docs):
    etcd = one(docs, "StatefulSet", "etcd")
    if etcd:
        need(etcd["spec"]["replicas"] % 2 == 1 and etcd["spec"]["replicas"] >= 3, "etcd needs an odd number (>= 3) of members")
    cp = one(docs, "Deployment", "nexus-control-plane")
    if cp:
        spec = cp["spec"]["template"]["spec"]
        c = spec["containers"][0]
        owner = "Deployment nexus-control-plane"
        need(c["args"][:1] == ["control-plane"] and "--config" in c["args"], f"{owner}: must run `nexus control-plane --config FILE`")
        check_hardened(c, owner)
        g = c.get("readinessProbe", {}).get("grpc")
        need(g is not None and container_port(c, g["port"]) is not None, f"{owner}: readiness must be a gRPC (grpc.health.v1) probe on a served port")
        check_volumes_resolve(docs, spec, owner)
    console = one(docs, "Deployment", "nexus-console")
    if console:
        check_hardened(console["spec"]["template"]["spec"]["containers"][0], "Deployment nexus-console")
        check_volumes_resolve(docs, console["spec"]["template"]["spec"], "Deployment nexus-console")
    one(docs, "PodDisruptionBudget", "etcd")
    one(docs, "NetworkPolicy", "etcd")


def main():
    kind, rendered, out_dir = sys.argv[1:4]
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    write_configs(docs, out_dir)
    if kind == "region":
        check_region(docs, sys.argv[4])
    elif kind == "control-plane":
        check_control_plane(docs)
    else:
        sys.exit(f"unknown kind {kind!r}")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
