#!/usr/bin/env python3
"""Offline consistency checks of deploy/ that a schema cannot express.

Run by deploy/kubernetes/check (which also runs kubeconform, promtool and the
meterline binary when they are available). Standard library + PyYAML only.

Checks:
  kubernetes  every stage has a StatefulSet, a headless Service and a PDB that
              agree with each other and with config/meterline.toml (instance id
              from the pod name, listen address, port `metrics`, probes,
              resources, scrape annotations, grace period >= commit timeout,
              state volume at runtime.state_dir); every METERLINE__ variable
              names a real config key (src/config/mod.rs); kustomization.yaml
              lists every manifest but the Secret examples; config/topics.toml
              has the topics of topology/topics.toml with production replication.
  container   deploy/container/meterline.toml keys exist.
  compose     services, one instance id per stage, env keys exist.
  monitoring  alerts.yaml and grafana-dashboard.json parse; every metric they
              name is served by meterline (names read from src/) or recorded by
              alerts.yaml; the dashboard uses the ${datasource} variable; the
              partition count in MeterlinePartitionsUnowned matches topics.toml.

Prints one line per check group; exits 1 if anything failed.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - the shell wrapper installs it
    sys.stderr.write("check.py: PyYAML is missing (pip install pyyaml)\n")
    sys.exit(2)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
STAGES = ["validate", "dedupe", "enrich", "rate", "aggregate", "post", "invoice"]
METRICS_PORT = 9464

failures: list[str] = []
checked: dict[str, int] = {}


def check(group: str, cond: bool, message: str) -> None:
    checked[group] = checked.get(group, 0) + 1
    if not cond:
        failures.append(f"{group}: {message}")


def load_yaml_docs(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- what the code defines --------------------------------------------------

def config_keys() -> dict[str, set[str]]:
    """Section -> keys, read from the serde structs of src/config/mod.rs.

    The sections are the fields of `Config` whose type is a struct declared
    there (`Option<...>` unwrapped); a field marked #[serde(skip)] is no key.
    """
    text = "".join((REPO / "src/config" / f).read_text() for f in ("mod.rs", "api.rs", "invoice.rs", "ledger.rs"))
    structs: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        fields = {}
        for fm in re.finditer(r"((?:\s*#\[[^\]]*\]\s*|\s*///[^\n]*\n)*)\s*pub (\w+): ([^,\n]+),", m.group(2)):
            if "serde(skip)" in fm.group(1):
                continue
            fields[fm.group(2)] = fm.group(3).strip()
        structs[m.group(1)] = fields
    if "Config" not in structs:
        failures.append("setup: struct Config not found in src/config/mod.rs")
        return {}
    out = {}
    for section, ty in structs["Config"].items():
        ty = re.sub(r"^Option<(.*)>$", r"\1", ty)
        if ty in structs:
            out[section] = set(structs[ty])
    for expected in ("kafka", "runtime", "http", "topology"):
        if expected not in out:
            failures.append(f"setup: section {expected} not found in Config (src/config/mod.rs changed?)")
    return out


def served_metrics() -> set[str]:
    """Metric names meterline registers: the literals in src/ (the metrics every
    stage has are one name each with a `stage` label, in src/metrics.rs)."""
    names = set()
    for path in (REPO / "src").rglob("*.rs"):
        for m in re.finditer(r'"(meterline_[a-z0-9_]+)"', path.read_text()):
            names.add(m.group(1))
    if "meterline_records_in_total" not in names:
        failures.append("setup: meterline_records_in_total not found in src/ (src/metrics.rs changed?)")
    histograms = {n for n in names if n.endswith("_seconds") and "latency" in n}
    for h in histograms:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    names -= {n for n in names if n.startswith("meterline_invalid")}
    return names


def env_key_ok(name: str, keys: dict[str, set[str]]) -> bool:
    if name.startswith("METERLINE_KAFKA__"):
        return len(name) > len("METERLINE_KAFKA__")
    if name.startswith("METERLINE__"):
        parts = name[len("METERLINE__"):].lower().split("__")
        if len(parts) == 2:
            return parts[0] in keys and parts[1] in keys[parts[0]]
        # Map keys (kafka.client.<prop>, validate.hmac_keys_hex.<source>).
        if len(parts) == 3:
            return parts[0] in keys and parts[1] in {"client", "consumer", "producer", "hmac_keys_hex"} \
                and parts[1] in keys[parts[0]]
        return False
    return name in {"METERLINE_CONFIG", "METERLINE_LOG", "METERLINE_LEDGER_URL"}


def check_toml_keys(group: str, path: Path, keys: dict[str, set[str]]) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        check(group, False, f"{path.relative_to(REPO)}: {e}")
        return {}
    check(group, True, "parses")
    for section, table in data.items():
        check(group, section in keys, f"{path.relative_to(REPO)}: unknown section [{section}]")
        if section in keys and isinstance(table, dict):
            for key in table:
                check(group, key in keys[section],
                      f"{path.relative_to(REPO)}: unknown key {section}.{key}")
    return data


# --- kubernetes ---------------------------------------------------------------

def check_kubernetes(keys: dict[str, set[str]]) -> None:
    g = "kubernetes"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kust.get("resources", [])
    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in manifests:
        if name == "secret-examples.yaml":
            check(g, name not in resources, "secret-examples.yaml must not be listed (placeholder credentials)")
        else:
            check(g, name in resources, f"kustomization.yaml does not list {name}")
    for r in resources:
        check(g, (K8S / r).exists(), f"kustomization.yaml lists missing {r}")
    gen = {c["name"]: c for c in kust.get("configMapGenerator", [])}
    check(g, "meterline-config" in gen, "configMapGenerator meterline-config missing")
    files = gen.get("meterline-config", {}).get("files", [])
    for f in files:
        check(g, (K8S / f).exists(), f"configMapGenerator file {f} missing")
    check(g, {Path(f).name for f in files} >= {"meterline.toml", "meters.toml", "topics.toml"},
          "meterline-config must carry meterline.toml, meters.toml and topics.toml")

    cfg = check_toml_keys(g, K8S / "config/meterline.toml", keys)
    runtime = cfg.get("runtime", {})
    state_dir = runtime.get("state_dir", "")
    call_timeout_s = runtime.get("transaction_call_timeout_ms", 30000) / 1000
    check(g, cfg.get("http", {}).get("listen_addr", "").startswith("0.0.0.0:"),
          "config/meterline.toml: http.listen_addr must listen on 0.0.0.0 in a pod")
    check(g, cfg.get("topology", {}).get("meters_file") == "meters.toml"
          and cfg.get("topology", {}).get("topics_file") == "topics.toml",
          "config/meterline.toml: meters_file/topics_file must name the ConfigMap files")
    check(g, "hmac_keys_hex" not in cfg.get("validate", {}),
          "config/meterline.toml: HMAC keys belong in a Secret, not in the ConfigMap")

    # meters.toml
    try:
        meters = tomllib.loads((K8S / "config/meters.toml").read_text()).get("meter", [])
        check(g, len(meters) > 0, "config/meters.toml declares no [[meter]]")
        for m in meters:
            check(g, {"slug", "event_type", "aggregation"} <= set(m), f"meter {m.get('slug')}: slug, event_type, aggregation required")
            check(g, m.get("aggregation") in {"SUM", "COUNT", "MAX", "UNIQUE_COUNT", "LATEST"},
                  f"meter {m.get('slug')}: aggregation {m.get('aggregation')}")
    except tomllib.TOMLDecodeError as e:
        check(g, False, f"config/meters.toml: {e}")

    # topics.toml: the repo's topics, production replication.
    prod = tomllib.loads((K8S / "config/topics.toml").read_text())
    repo = tomllib.loads((REPO / "topology/topics.toml").read_text())
    d = prod.get("defaults", {})
    check(g, d.get("replication_factor", 0) >= 3, "config/topics.toml: defaults.replication_factor must be >= 3")
    check(g, 2 <= d.get("min_insync_replicas", 0) < d.get("replication_factor", 0),
          "config/topics.toml: defaults.min_insync_replicas must be >= 2 and < replication_factor")
    check(g, d.get("partitions") == repo.get("defaults", {}).get("partitions"),
          "config/topics.toml: defaults.partitions differs from topology/topics.toml")
    check(g, prod.get("topic") == repo.get("topic"),
          "config/topics.toml: [[topic]] entries differ from topology/topics.toml (keep them in step)")

    docs = {}
    for name in manifests:
        for doc in load_yaml_docs(K8S / name):
            check(g, "apiVersion" in doc and "kind" in doc and "name" in doc.get("metadata", {}),
                  f"{name}: a document without apiVersion/kind/metadata.name")
            docs[(doc.get("kind"), doc.get("metadata", {}).get("name"))] = (name, doc)

    for stage in STAGES:
        name = f"meterline-{stage}"
        where = f"{stage}.yaml"
        sts = docs.get(("StatefulSet", name), (None, None))[1]
        svc = docs.get(("Service", name), (None, None))[1]
        pdb = docs.get(("PodDisruptionBudget", name), (None, None))[1]
        check(g, sts is not None, f"StatefulSet {name} missing")
        check(g, svc is not None, f"Service {name} missing")
        check(g, pdb is not None, f"PodDisruptionBudget {name} missing")
        if sts is None or svc is None or pdb is None:
            continue
        spec = sts["spec"]
        sel = spec["selector"]["matchLabels"]
        pod = spec["template"]
        pod_labels = pod["metadata"].get("labels", {})
        check(g, all(pod_labels.get(k) == v for k, v in sel.items()), f"{where}: selector does not match pod labels")
        check(g, sel.get("app.kubernetes.io/component") == stage, f"{where}: selector must pick component={stage}")
        check(g, spec.get("serviceName") == name, f"{where}: serviceName must be {name}")
        # Service
        check(g, svc["spec"].get("clusterIP") == "None", f"{where}: Service {name} must be headless")
        check(g, svc["spec"].get("selector") == sel, f"{where}: Service selector differs from the StatefulSet's")
        check(g, any(p.get("name") == "metrics" and p.get("port") == METRICS_PORT for p in svc["spec"].get("ports", [])),
              f"{where}: Service port metrics {METRICS_PORT} missing")
        # PDB
        check(g, pdb["spec"].get("maxUnavailable") == 1, f"{where}: PDB maxUnavailable must be 1")
        check(g, pdb["spec"].get("selector", {}).get("matchLabels") == sel, f"{where}: PDB selector differs")
        # Pod
        ann = pod["metadata"].get("annotations", {})
        check(g, ann.get("prometheus.io/scrape") == "true", f"{where}: prometheus.io/scrape annotation")
        check(g, ann.get("prometheus.io/port") == str(METRICS_PORT), f"{where}: prometheus.io/port annotation")
        check(g, ann.get("prometheus.io/path") == "/metrics", f"{where}: prometheus.io/path annotation")
        ps = pod["spec"]
        grace = ps.get("terminationGracePeriodSeconds", 30)
        check(g, grace >= call_timeout_s + 10,
              f"{where}: terminationGracePeriodSeconds {grace} < transaction_call_timeout_ms/1000 + 10")
        check(g, ps.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
        containers = ps.get("containers", [])
        check(g, len(containers) == 1, f"{where}: one container expected")
        if not containers:
            continue
        c = containers[0]
        args = c.get("args", [])
        check(g, "run" in args and args[args.index("run") + 1:] == ["--stage", stage],
              f"{where}: args must end with run --stage {stage}")
        env = {e["name"]: e for e in c.get("env", [])}
        for e in env:
            check(g, env_key_ok(e, keys), f"{where}: env {e} names no config key (src/config/mod.rs)")
        iid = env.get("METERLINE__RUNTIME__INSTANCE_ID", {})
        check(g, iid.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
              f"{where}: METERLINE__RUNTIME__INSTANCE_ID must come from metadata.name")
        check(g, env.get("METERLINE__HTTP__LISTEN_ADDR", {}).get("value") == f"0.0.0.0:{METRICS_PORT}",
              f"{where}: METERLINE__HTTP__LISTEN_ADDR must be 0.0.0.0:{METRICS_PORT}")
        check(g, env.get("METERLINE_CONFIG", {}).get("value") == "/etc/meterline/meterline.toml",
              f"{where}: METERLINE_CONFIG")
        for var, key in (("METERLINE_KAFKA__SASL_USERNAME", "username"), ("METERLINE_KAFKA__SASL_PASSWORD", "password")):
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(g, ref.get("name") == "meterline-kafka-sasl" and ref.get("key") == key,
                  f"{where}: {var} must come from Secret meterline-kafka-sasl key {key}")
        sd = env.get("METERLINE__RUNTIME__STATE_DIR", {}).get("value", state_dir)
        check(g, sd == state_dir, f"{where}: METERLINE__RUNTIME__STATE_DIR differs from config runtime.state_dir")
        ports = c.get("ports", [])
        check(g, any(p.get("name") == "metrics" and p.get("containerPort") == METRICS_PORT for p in ports),
              f"{where}: container port named metrics ({METRICS_PORT}) missing")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            h = c.get(probe, {}).get("httpGet", {})
            check(g, h.get("path") == path and h.get("port") in ("metrics", METRICS_PORT),
                  f"{where}: {probe} must GET {path} on port metrics")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            check(g, {"cpu", "memory"} <= set(res.get(kind, {})), f"{where}: resources.{kind} cpu and memory")
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        vct = {v["metadata"]["name"]: v for v in spec.get("volumeClaimTemplates", [])}
        check(g, "state" in vct, f"{where}: volumeClaimTemplate state missing")
        check(g, mounts.get("state", {}).get("mountPath") == state_dir,
              f"{where}: volume state must be mounted at runtime.state_dir ({state_dir})")
        check(g, mounts.get("config", {}).get("mountPath") == "/etc/meterline", f"{where}: config mount")
        vols = {v["name"]: v for v in ps.get("volumes", [])}
        check(g, vols.get("config", {}).get("configMap", {}).get("name") == "meterline-config",
              f"{where}: volume config must be ConfigMap meterline-config")
        if stage == "validate":
            ref = env.get("METERLINE__VALIDATE__HMAC_KEYS_HEX", {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(g, ref.get("name") == "meterline-hmac-keys", f"{where}: HMAC keys from Secret meterline-hmac-keys")
        if stage == "invoice":
            ref = env.get("METERLINE__INVOICE__ACTOR_KEYS_HEX", {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(g, ref.get("name") == "meterline-actor-keys", f"{where}: actor keys from Secret meterline-actor-keys")

    check_api_manifest(g, docs, keys)
    check_ledger_manifest(g, docs, keys)

    secrets = [d for (k, _), (_, d) in docs.items() if k == "Secret"]
    check(g, any(s["metadata"]["name"] == "meterline-kafka-sasl"
                 and {"username", "password"} <= set(s.get("stringData", {})) for s in secrets),
          "secret-examples.yaml: Secret meterline-kafka-sasl with username and password")
    check(g, any(s["metadata"]["name"] == "meterline-actor-keys" and "keys" in s.get("stringData", {})
                 for s in secrets),
          "secret-examples.yaml: Secret meterline-actor-keys with keys")


def check_api_manifest(g: str, docs: dict, keys: dict[str, set[str]]) -> None:
    """api.yaml: a Deployment serving on 0.0.0.0:8090 with its keys from a Secret."""
    dep = docs.get(("Deployment", "meterline-api"), (None, None))[1]
    svc = docs.get(("Service", "meterline-api"), (None, None))[1]
    check(g, dep is not None and svc is not None, "api.yaml: Deployment and Service meterline-api")
    if dep is None or svc is None:
        return
    sel = dep["spec"]["selector"]["matchLabels"]
    check(g, svc["spec"].get("selector") == sel, "api.yaml: Service selector differs from the Deployment's")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    check(g, c.get("args", [])[-1:] == ["api"], "api.yaml: args must end with api")
    env = {e["name"]: e for e in c.get("env", [])}
    for e in env:
        check(g, env_key_ok(e, keys), f"api.yaml: env {e} names no config key")
    check(g, env.get("METERLINE__API__LISTEN_ADDR", {}).get("value") == "0.0.0.0:8090",
          "api.yaml: METERLINE__API__LISTEN_ADDR must be 0.0.0.0:8090")
    ref = env.get("METERLINE__API__KEYS", {}).get("valueFrom", {}).get("secretKeyRef", {})
    check(g, ref.get("name") == "meterline-api-keys" and not ref.get("optional", False),
          "api.yaml: METERLINE__API__KEYS from Secret meterline-api-keys, not optional")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        h = c.get(probe, {}).get("httpGet", {})
        check(g, h.get("path") == path, f"api.yaml: {probe} must GET {path}")


def check_ledger_manifest(g: str, docs: dict, keys: dict[str, set[str]]) -> None:
    """ledger-sync.yaml: a Deployment running ledger-sync, its URL from a Secret."""
    dep = docs.get(("Deployment", "meterline-ledger-sync"), (None, None))[1]
    check(g, dep is not None, "Deployment meterline-ledger-sync missing")
    check(g, docs.get(("PodDisruptionBudget", "meterline-ledger-sync")) is not None,
          "PodDisruptionBudget meterline-ledger-sync missing")
    if dep is None:
        return
    c = dep["spec"]["template"]["spec"]["containers"][0]
    check(g, c.get("args", [])[-1:] == ["ledger-sync"], "ledger-sync.yaml: args must end with ledger-sync")
    env = {e["name"]: e for e in c.get("env", [])}
    for e in env:
        check(g, env_key_ok(e, keys), f"ledger-sync.yaml: env {e} names no config key")
    ref = env.get("METERLINE_LEDGER_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
    check(g, ref.get("name") == "meterline-ledger" and ref.get("key") == "url",
          "ledger-sync.yaml: METERLINE_LEDGER_URL from Secret meterline-ledger key url")
    check(g, env.get("METERLINE__HTTP__LISTEN_ADDR", {}).get("value") == f"0.0.0.0:{METRICS_PORT}",
          f"ledger-sync.yaml: METERLINE__HTTP__LISTEN_ADDR must be 0.0.0.0:{METRICS_PORT}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        h = c.get(probe, {}).get("httpGet", {})
        check(g, h.get("path") == path, f"ledger-sync.yaml: {probe} must GET {path}")


# --- container ----------------------------------------------------------------

def check_container(keys: dict[str, set[str]]) -> None:
    g = "container"
    cfg = check_toml_keys(g, DEPLOY / "container/meterline.toml", keys)
    check(g, cfg.get("http", {}).get("listen_addr", "").startswith("0.0.0.0:"), "meterline.toml: listen on 0.0.0.0")
    dockerfile = (DEPLOY / "container/Dockerfile").read_text()
    for needle in ("FROM rust:1.95-bookworm", "FROM debian:bookworm-slim", "cargo build --release --locked --bin meterline",
                   "EXPOSE 9464", 'ENTRYPOINT ["meterline"]', "USER 10001", "/var/lib/meterline"):
        check(g, needle in dockerfile, f"Dockerfile lacks {needle!r}")
    ignore = (DEPLOY / "container/Dockerfile.dockerignore").read_text().split()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        if copied in ("Cargo.toml",):
            continue
        check(g, f"!{copied.rstrip('/')}" in ignore or f"!{copied.rstrip('/')}/" in ignore,
              f"Dockerfile COPYs {copied} but Dockerfile.dockerignore does not let it through")


# --- compose --------------------------------------------------------------------

def check_compose(keys: dict[str, set[str]]) -> None:
    g = "compose"
    doc = yaml.safe_load((DEPLOY / "compose/compose.yaml").read_text())
    services = doc.get("services", {})
    for s in ["kafka", "registry", "topology"] + STAGES:
        check(g, s in services, f"service {s} missing")
    check(g, services.get("kafka", {}).get("image") == "apache/kafka:4.1.1", "kafka image apache/kafka:4.1.1")
    check(g, str(services.get("registry", {}).get("image", "")).startswith("apicurio/apicurio-registry:3."),
          "registry image apicurio/apicurio-registry:3.x")
    ids = set()
    for stage in STAGES:
        svc = services.get(stage, {})
        check(g, svc.get("command") == ["run", "--stage", stage], f"{stage}: command run --stage {stage}")
        env = svc.get("environment", {})
        for k in env:
            check(g, env_key_ok(k, keys), f"{stage}: env {k} names no config key")
        iid = env.get("METERLINE__RUNTIME__INSTANCE_ID")
        check(g, iid is not None and iid not in ids, f"{stage}: needs its own METERLINE__RUNTIME__INSTANCE_ID")
        ids.add(iid)
        check(g, "/apis/ccompat/v7" in env.get("METERLINE__REGISTRY__URL", ""), f"{stage}: registry URL under /apis/ccompat/v7")
        b = svc.get("build", {})
        check(g, b.get("dockerfile") == "deploy/container/Dockerfile"
              and (DEPLOY / "compose" / b.get("context", "") / b.get("dockerfile", "")).resolve().exists(),
              f"{stage}: build must use deploy/container/Dockerfile with the repo root as context")


# --- monitoring -----------------------------------------------------------------

METRIC_RE = re.compile(r"\b(meterline[_:][a-zA-Z0-9_:]+)")


def check_monitoring() -> None:
    g = "monitoring"
    served = served_metrics()
    rules = yaml.safe_load((DEPLOY / "monitoring/alerts.yaml").read_text())
    recorded = set()
    alerts = []
    for group in rules.get("groups", []):
        for r in group.get("rules", []):
            if "record" in r:
                recorded.add(r["record"])
            if "alert" in r:
                alerts.append(r)
            for m in METRIC_RE.findall(r.get("expr", "")):
                check(g, m in served or m in recorded, f"alerts.yaml: {r.get('alert') or r.get('record')} uses unknown metric {m}")
    check(g, len(alerts) > 0, "alerts.yaml has no alerts")
    for a in alerts:
        check(g, a.get("labels", {}).get("severity") in {"warning", "critical"}, f"{a['alert']}: severity label")
        check(g, "summary" in a.get("annotations", {}), f"{a['alert']}: summary annotation")
    # A recording rule keeps the `stage` label of the metric it reads: it sets
    # none, and each recorded name has one rule.
    for rec in recorded:
        same = [r for grp in rules["groups"] for r in grp["rules"] if r.get("record") == rec]
        check(g, len(same) == 1, f"alerts.yaml: {rec} is recorded {len(same)} times")
        check(g, all("stage" not in r.get("labels", {}) for r in same),
              f"alerts.yaml: {rec} sets a stage label (the metric has it)")
    # No metric named after a stage for what every stage has (src/metrics.rs).
    texts = [(DEPLOY / "monitoring/alerts.yaml").read_text(), (DEPLOY / "monitoring/alerts.test.yaml").read_text(),
             (DEPLOY / "monitoring/grafana-dashboard.json").read_text()]
    for stage in STAGES:
        for noun in ("records_in", "records_out", "dead_letters", "transaction_", "consumer_lag", "store_keys",
                     "assigned_partitions", "restored_records", "event_time_lag"):
            check(g, not any(f"meterline_{stage}_{noun}" in t for t in texts),
                  f"deploy/monitoring names meterline_{stage}_{noun}*: use meterline_{noun}*{{stage=\"{stage}\"}}")
    wanted = {
        "meterline_enrich_revenue_at_risk", "meterline_enrich_parked_oldest_age_seconds",
        "meterline:dead_letters_total:rate5m", "meterline:transaction_aborts_total:rate5m",
        "meterline_consumer_lag_records",
    }
    used = {m for a in alerts for m in METRIC_RE.findall(a["expr"])}
    for w in wanted:
        check(g, w in used, f"alerts.yaml: no alert on {w}")
    # Partition count in MeterlinePartitionsUnowned == topics.toml partitions.
    parts = tomllib.loads((K8S / "config/topics.toml").read_text())["defaults"]["partitions"]
    for a in alerts:
        if a["alert"] == "MeterlinePartitionsUnowned":
            check(g, re.search(rf"<\s*{parts}\b", a["expr"]) is not None,
                  f"MeterlinePartitionsUnowned must compare with {parts} partitions (config/topics.toml)")

    dash = json.loads((DEPLOY / "monitoring/grafana-dashboard.json").read_text())
    check(g, any(v.get("type") == "datasource" and v.get("name") == "datasource"
                 for v in dash.get("templating", {}).get("list", [])), "dashboard: datasource variable missing")
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    check(g, len(panels) >= 10, "dashboard: too few panels")
    ids = [p.get("id") for p in dash.get("panels", [])]
    check(g, len(ids) == len(set(ids)), "dashboard: duplicate panel ids")
    exprs = []
    for p in panels:
        check(g, p.get("datasource", {}).get("uid") == "${datasource}", f"dashboard panel {p.get('title')}: datasource must be ${{datasource}}")
        check(g, bool(p.get("targets")), f"dashboard panel {p.get('title')}: no targets")
        for t in p.get("targets", []):
            exprs.append(t["expr"])
            for m in METRIC_RE.findall(t["expr"]):
                check(g, m in served or m in recorded, f"dashboard panel {p.get('title')!r} uses unknown metric {m}")
    titles = " ".join(p.get("title", "").lower() for p in panels)
    for topic in ("records in", "records out", "dead letters", "duplicates", "parked", "revenue at risk",
                  "commit latency", "aborts", "lag", "store keys"):
        check(g, topic in titles, f"dashboard: no panel about {topic}")
    # Hand the expressions to the shell wrapper for promtool syntax checking.
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if out:
        out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-exprs", "rules": [
            {"record": f"dashboard:expr{i}", "expr": e.replace("$stage", ".*")} for i, e in enumerate(exprs)
        ]}]}))


def main() -> int:
    keys = config_keys()
    check_kubernetes(keys)
    check_container(keys)
    check_compose(keys)
    check_monitoring()
    for group, n in checked.items():
        bad = [f for f in failures if f.startswith(group + ":")]
        print(f"{'FAIL' if bad else 'ok  '} {group}: {n} checks" + (f", {len(bad)} failed" if bad else ""))
    for f in failures:
        print(f"  - {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
