"""Static checks of the deployment files, all offline: the Dockerfile (hadolint and
what the image must have), docker-compose (docker-compose config), nginx (nginx -t
on the loopback copy), the Helm chart (lint, render with several values files,
kubernetes-validate --strict, yamllint), Prometheus (promtool) and Grafana (the
dashboard's queries name metrics inferd exports), and k6 (k6 inspect)."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, exported_metrics, family, inferd_bin, run, tool

CHART = ROOT / "charts/inferd"
KUBE_VERSION = "1.30.0"
VALUES_FILES = [None, CHART / "ci/hpa-values.yaml", CHART / "ci/custom-metric-values.yaml",
                CHART / "ci/grpc-values.yaml"]


def inferd_defaults() -> dict[str, str]:
    """The server's own defaults as `inferd serve --help` prints them."""
    out = run([inferd_bin(), "serve", "--help"]).stdout
    return dict(re.findall(r"\[env: (INFERD_[A-Z_]+)=[^\]]*\]\s*\[default: ([^\]]+)\]", out))


# ---- Dockerfile --------------------------------------------------------------------

def test_dockerfile_lints_clean():
    run([tool("hadolint"), "--failure-threshold", "info", "Dockerfile"])


def test_dockerfile_runtime_stage():
    text = (ROOT / "Dockerfile").read_text()
    runtime = text.split("# ---- runtime")[1]
    user = re.search(r"^USER (\S+)", runtime, re.M)
    assert user and user.group(1).split(":")[0].isdigit() and user.group(1) != "0", \
        "runtime stage must run as a numeric non-root user (runAsNonRoot checks need it)"
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["inferd", "healthcheck"', runtime), "HEALTHCHECK via inferd"
    # The library path the image sets is the file install-ort.sh writes.
    ort_version = re.search(r'ORT_VERSION="\$\{ORT_VERSION:-([0-9.]+)\}"',
                            (ROOT / "scripts/install-ort.sh").read_text()).group(1)
    assert f"ARG ORT_VERSION={ort_version}" in runtime
    assert "ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}" in runtime
    # The CUDA variant is a build-arg away, and the cargo feature it names exists.
    for arg in ("RUNTIME_IMAGE", "ORT_PACKAGE", "CARGO_FEATURES"):
        assert re.search(rf"^ARG {arg}\b", text, re.M), arg
    assert re.search(r"^cuda = ", (ROOT / "Cargo.toml").read_text(), re.M)
    # So is the libtorch one, with the torch version `make test` builds against.
    assert re.search(r"^ARG TORCH_VERSION\b", text, re.M)
    assert re.search(r'^torch = \["dep:inferd-torch", "inferd-torch/libtorch"\]',
                     (ROOT / "Cargo.toml").read_text(), re.M)
    pinned = re.search(r"^torch==(\S+)", (ROOT / "scripts/torch-requirements.txt").read_text(), re.M)
    assert f"--build-arg TORCH_VERSION={pinned.group(1)}" in text
    # Everything COPY'd from the context exists and is not excluded by .dockerignore.
    ignored = [l.strip().rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    for src in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        if src != ".":
            assert (ROOT / src).exists(), src
            assert src.split("/")[0] not in ignored, src
    assert "target" in ignored and ".ort" in ignored


def test_healthcheck_subcommand_fails_without_a_server():
    r = subprocess.run([inferd_bin(), "healthcheck", "--url", "http://127.0.0.1:9/healthz",
                        "--timeout-ms", "500"], capture_output=True, text=True)
    assert r.returncode == 1 and "127.0.0.1:9" in r.stderr


# ---- docker compose -------------------------------------------------------------------

def compose_config(*files: str) -> dict:
    args = [tool("docker-compose")]
    for f in files:
        args += ["-f", f]
    run(args + ["config", "-q"])
    return yaml.safe_load(run(args + ["config"]).stdout)


def test_compose_config_is_valid_and_ordered():
    cfg = compose_config("docker-compose.yml")
    svc = cfg["services"]
    assert {"nginx", "inferd", "redis", "postgres", "prometheus", "grafana"} <= set(svc)
    assert svc["inferd"]["deploy"]["replicas"] == 3
    # Workers wait for healthy Redis and PostgreSQL; nginx for healthy workers.
    assert svc["inferd"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert svc["nginx"]["depends_on"]["inferd"]["condition"] == "service_healthy"
    for name in ("redis", "postgres", "nginx"):
        assert svc[name]["healthcheck"]["test"], name
    assert "pgdata:/var/lib/postgresql/data:rw" in svc["postgres"]["volumes"]
    assert svc["inferd"]["read_only"] is True
    # Docker must not SIGKILL a worker before drain + grace are over.
    env = svc["inferd"]["environment"]
    budget_s = (int(env["INFERD_DRAIN_DELAY_MS"]) + int(env["INFERD_SHUTDOWN_GRACE_MS"])) / 1000
    grace = svc["inferd"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > budget_s, (grace, budget_s)
    # The files the services mount are in the repository.
    for name in ("nginx", "prometheus", "grafana", "k6"):
        for v in svc[name]["volumes"]:
            source = v.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), v


def test_compose_wires_the_grpc_port():
    """Workers listen for gRPC where nginx's inferd_grpc upstream looks, expose
    that port on the compose network, and nginx publishes its gRPC listener."""
    d = inferd_defaults()
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        svc = compose_config(*files)["services"]
        worker = svc["inferd"]
        listen = worker["environment"].get("INFERD_GRPC_LISTEN", d["INFERD_GRPC_LISTEN"])
        grpc_port = int(listen.rsplit(":", 1)[1])
        http_port = int(worker["environment"].get("INFERD_LISTEN", d["INFERD_LISTEN"]).rsplit(":", 1)[1])
        assert grpc_port != http_port
        assert {str(http_port), str(grpc_port)} <= set(worker["expose"]), worker["expose"]
        # Only nginx is published: the workers stay on the compose network.
        assert "ports" not in worker
        published = {(p["target"], p["published"]) for p in svc["nginx"]["ports"]}
        assert {(8080, 8080), (8081, 8081)} <= published, published
        servers = re.findall(r"^\s*server (\S+)", nginx_blocks("upstream inferd_grpc")[0], re.M)
        assert servers == [f"inferd:{grpc_port}"], servers


def test_compose_gpu_override_is_valid():
    cfg = compose_config("docker-compose.yml", "docker-compose.gpu.yml")
    inferd = cfg["services"]["inferd"]
    assert inferd["build"]["args"]["ORT_PACKAGE"] == "onnxruntime-gpu"
    assert inferd["environment"]["INFERD_DEVICE"] == "cuda"


# ---- nginx ----------------------------------------------------------------------------

def nginx_blocks(head: str, text: str | None = None) -> list[str]:
    """The bodies of every `head { ... }` block in nginx.conf (or TEXT), braces balanced."""
    text = (ROOT / "nginx/nginx.conf").read_text() if text is None else text
    bodies = []
    for m in re.finditer(rf"^\s*{re.escape(head)}\s*\{{", text, re.M):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        bodies.append(text[m.end():i - 1])
    assert bodies, f"nginx.conf: no `{head} {{` block"
    return bodies


def upstream_servers(body: str) -> list[str]:
    return re.findall(r"^\s*server (\S+)", body, re.M)


def test_nginx_config_passes_nginx_t(tmp_path):
    conf = tmp_path / "nginx.conf"
    (tmp_path / "nginx").mkdir()
    # As `stack.sh up` calls it: HTTP port and workers as arguments, gRPC by environment.
    run(["scripts/stack.sh", "nginx-conf", conf, "18080", "18081", "18082", "18083"],
        env={"STACK_DIR": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/sbin",
             "GRPC_LISTEN": "28090", "GRPC_PORTS": "28091 28092 28093"})
    rendered = conf.read_text()
    assert rendered.count("server 127.0.0.1:1808") == 3
    (http,) = nginx_blocks("upstream inferd", rendered)
    (grpc,) = nginx_blocks("upstream inferd_grpc", rendered)
    assert "least_conn;" in http and "least_conn;" in grpc
    assert upstream_servers(http) == [f"127.0.0.1:1808{i}" for i in (1, 2, 3)], http
    assert upstream_servers(grpc) == [f"127.0.0.1:2809{i}" for i in (1, 2, 3)], grpc
    listens = re.findall(r"^\s*listen ([^;]+);", rendered, re.M)
    assert sorted(l.split()[:2] for l in listens) == [
        ["127.0.0.1:18080", "reuseport"], ["127.0.0.1:28090", "http2"]], listens
    run([tool("nginx"), "-t", "-c", conf, "-p", f"{tmp_path}/nginx/", "-g", f"pid {tmp_path}/nginx.pid;"])


def test_nginx_grpc_door():
    """nginx's gRPC listener: HTTP/2 on 8081, grpc_pass to a least_conn upstream
    of the workers' gRPC ports, with the HTTP side's limits and retry rules."""
    (up,) = nginx_blocks("upstream inferd_grpc")
    assert "least_conn;" in up and re.search(r"^\s*keepalive \d+;", up, re.M), up
    assert upstream_servers(up) == [f"inferd:{inferd_defaults()['INFERD_GRPC_LISTEN'].rsplit(':', 1)[1]}"]
    (door,) = [b for b in nginx_blocks("server") if "grpc_pass" in b]
    assert re.search(r"^\s*listen 8081 http2\b", door, re.M), door
    assert "proxy_pass" not in door
    (root,) = [b for b in nginx_blocks("location /", door)]
    assert "grpc_pass grpc://inferd_grpc;" in root
    assert "grpc_set_header X-Request-Id $req_id;" in root
    d = inferd_defaults()
    body = re.search(r"client_max_body_size (\d+)m;", door).group(1)
    assert int(body) * 1024 * 1024 == int(d["INFERD_MAX_BODY_BYTES"]), "same body bound as HTTP"
    read = re.search(r"grpc_read_timeout (\d+)s;", root).group(1)
    assert int(read) * 1000 > int(d["INFERD_REQUEST_TIMEOUT_MS"]), "inferd's DEADLINE_EXCEEDED first"
    assert re.search(r"grpc_connect_timeout \d+s;", root) and re.search(r"grpc_send_timeout \d+s;", root)
    retry = re.search(r"grpc_next_upstream ([^;]+);", root).group(1).split()
    assert "timeout" not in retry, "never retry timeouts"
    # Model control is refused at the balancer, over gRPC as over HTTP.
    (control,) = nginx_blocks("location ^~ /inference.GRPCInferenceService/Repository", door)
    assert "add_header grpc-status 7 always;" in control


def test_nginx_limits_match_inferd():
    text = (ROOT / "nginx/nginx.conf").read_text()
    for needed in ("least_conn;", "keepalive 64;", "proxy_http_version 1.1;",
                   'proxy_set_header Connection "";', "$upstream_addr", "$upstream_response_time"):
        assert needed in text, needed
    retry = re.search(r"proxy_next_upstream ([^;]+);", text).group(1).split()
    assert "timeout" not in retry and "http_429" not in retry, "never retry timeouts or shed load"
    d = inferd_defaults()
    body = re.search(r"client_max_body_size (\d+)m;", text).group(1)
    assert int(body) * 1024 * 1024 == int(d["INFERD_MAX_BODY_BYTES"])
    read = re.search(r"proxy_read_timeout (\d+)s;", text).group(1)
    assert int(read) * 1000 > int(d["INFERD_REQUEST_TIMEOUT_MS"]), "inferd's 504 must come first"


# ---- Helm -----------------------------------------------------------------------------

def render(values_file, extra=None) -> dict[str, str]:
    import helm_python as helm

    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    values.update(extra or {})
    out = helm.Chart.load(str(CHART)).render(values, name="inferd", namespace="ml")
    return {k: v for k, v in out.items() if v.strip() and k.endswith(".yaml")}


def test_chart_lints_strict():
    import helm_python as helm

    for values_file in VALUES_FILES:
        values = yaml.safe_load(values_file.read_text()) if values_file else None
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert not report["errors"], report
        assert not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=["defaults", "hpa", "custom-metric", "grpc"])
def test_chart_renders_valid_kubernetes(values_file, tmp_path):
    docs = render(values_file)
    files = []
    for name, text in docs.items():
        path = tmp_path / name.replace("/", "_")
        # Helm leaves the newline after a template's opening `{{- if }}`.
        path.write_text(text.lstrip("\n"))
        files.append(path)
    run([tool("yamllint"), "-s", "-c", ROOT / ".yamllint.yaml", *files])
    crds = ("servicemonitor", "prometheusrule")
    core = [f for f in files if not any(c in f.name for c in crds)]
    # Every render goes through one of the two checks below; the CRDs are there
    # exactly when their values turn them on.
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    for crd, key in zip(crds, ("serviceMonitor", "prometheusRule")):
        wanted = bool(values.get(key, {}).get("enabled"))
        assert any(crd in f.name for f in files) == wanted, (crd, values_file)
    assert any("hpa" in f.name for f in core), "the HPA is on in every CI render"
    run([tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, "--quiet", *core])
    # ServiceMonitor and PrometheusRule are Prometheus Operator CRDs: no bundled
    # schema, so their shape is checked by hand (the rules themselves by promtool,
    # in test_chart_prometheus_rule_is_the_projects_alerts).
    for f in files:
        if "servicemonitor" in f.name:
            sm = yaml.safe_load(f.read_text())
            assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
            assert sm["spec"]["endpoints"][0]["port"] == "http"
        if "prometheusrule" in f.name:
            pr = yaml.safe_load(f.read_text())
            assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["kind"] == "PrometheusRule"
            assert set(pr) == {"apiVersion", "kind", "metadata", "spec"} and set(pr["spec"]) == {"groups"}
            for g in pr["spec"]["groups"]:
                assert set(g) <= {"name", "interval", "rules"} and g["rules"], g
                for r in g["rules"]:
                    assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}, r
                    assert ("alert" in r) != ("record" in r) and r["expr"], r


def manifests(values_file) -> dict[str, dict]:
    return {yaml.safe_load(t)["kind"]: yaml.safe_load(t) for t in render(values_file).values()}


def test_chart_deployment_is_production_shaped():
    m = manifests(None)
    # Scaled by the HPA by default: the Deployment leaves replicas to it.
    assert "replicas" not in m["Deployment"]["spec"]
    hpa = m["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert hpa["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    assert hpa["scaleTargetRef"]["name"] == m["Deployment"]["metadata"]["name"]
    up = {p["type"]: p for p in hpa["behavior"]["scaleUp"]["policies"]}
    down = hpa["behavior"]["scaleDown"]["policies"]
    assert up["Percent"]["value"] >= 100 and up["Pods"]["value"] >= 1
    assert all(p["type"] == "Percent" and p["value"] <= 50 for p in down), down
    # Utilization is a share of the CPU request: the pods must have one.
    pod_resources = m["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert pod_resources["requests"]["cpu"]
    fixed = {
        yaml.safe_load(t)["kind"]: yaml.safe_load(t)
        for t in render(None, {"autoscaling": {"enabled": False}}).values()}
    assert "HorizontalPodAutoscaler" not in fixed and fixed["Deployment"]["spec"]["replicas"] == 3
    assert m["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    pod = m["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    cfg = m["ConfigMap"]["data"]
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = (int(cfg["INFERD_DRAIN_DELAY_MS"]) + int(cfg["INFERD_SHUTDOWN_GRACE_MS"])) / 1000
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    # Every setting the ConfigMap sets is one inferd knows.
    known = inferd_defaults().keys() | {"INFERD_MAX_CONCURRENCY"}
    assert set(cfg) <= known, set(cfg) - known


def test_chart_exposes_grpc_and_can_probe_over_it():
    m = manifests(None)
    c = m["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    assert m["ConfigMap"]["data"]["INFERD_GRPC_LISTEN"] == "0.0.0.0:8081"
    svc = {p["name"]: p for p in m["Service"]["spec"]["ports"]}
    assert svc["grpc"]["targetPort"] == "grpc" and svc["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert "httpGet" in c["readinessProbe"] and "grpc" not in c["readinessProbe"]
    assert "httpGet" in c["livenessProbe"] and "grpc" not in c["livenessProbe"]
    # The port the ConfigMap makes inferd listen on is the one the pod declares.
    listen_port = int(m["ConfigMap"]["data"]["INFERD_GRPC_LISTEN"].rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == listen_port
    policy = manifests(CHART / "ci/custom-metric-values.yaml")["NetworkPolicy"]["spec"]
    assert {"port": "grpc", "protocol": "TCP"} in policy["ingress"][0]["ports"]
    g = manifests(CHART / "ci/grpc-values.yaml")
    c = g["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": 8081} and "httpGet" not in c[probe], probe
    # The startup probe stays on /readyz: it gates the first traffic either way.
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_chart_prometheus_rule_is_the_projects_alerts(tmp_path):
    # A real file, not a symlink (helm package would not follow one out of the
    # chart), and not left out of the package by .helmignore.
    assert not (CHART / "files/alerts.yml").is_symlink() and not (CHART / "files").is_symlink()
    ignored = [l.strip() for l in (CHART / ".helmignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    assert not any(p.rstrip("/") in ("files", "files/alerts.yml", "*.yml") for p in ignored), ignored
    copy = (CHART / "files/alerts.yml").read_text()
    assert copy == (ROOT / "prometheus/alerts.yml").read_text(), \
        "charts/inferd/files/alerts.yml must be a copy of prometheus/alerts.yml"
    assert "PrometheusRule" not in manifests(None)
    rule = manifests(CHART / "ci/grpc-values.yaml")["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load(copy)["groups"]
    # And promtool reads the rendered groups as a rules file.
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    run([tool("promtool"), "check", "rules", f])


def test_chart_refuses_a_grace_period_shorter_than_the_drain():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render(None, {"terminationGracePeriodSeconds": 10})


def test_chart_hpa_scales_on_cpu_and_the_custom_metric():
    hpa = manifests(CHART / "ci/hpa-values.yaml")["HorizontalPodAutoscaler"]
    assert [x["type"] for x in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    m = manifests(CHART / "ci/custom-metric-values.yaml")
    metrics = m["HorizontalPodAutoscaler"]["spec"]["metrics"]
    pods = [x for x in metrics if x["type"] == "Pods"][0]["pods"]
    # The HPA's custom metric is one inferd exports.
    assert pods["metric"]["name"] in exported_metrics()
    assert "replicas" not in m["Deployment"]["spec"]
    assert m["NetworkPolicy"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    env = m["Deployment"]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "inferd-credentials"}} in env


# ---- Prometheus and Grafana -----------------------------------------------------------

def test_prometheus_config_and_rules():
    promtool = tool("promtool")
    run([promtool, "check", "config", "prometheus/prometheus.yml"])
    run([promtool, "check", "rules", "prometheus/alerts.yml"])
    run([promtool, "test", "rules", "alerts.test.yml"], cwd=ROOT / "prometheus")


def test_dashboard_and_alerts_use_exported_metrics():
    known = exported_metrics()
    dash = json.loads((ROOT / "grafana/dashboards/inferd.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "prometheus/alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {family(n) for e in exprs for n in re.findall(r"inferd_[a-z0-9_]+", e)}
    assert used and used <= known, used - known
    # process_*: the prometheus crate's process collector, registered in
    # src/server.rs (tests/connections.rs reads them from a live server).
    process = {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
               "process_resident_memory_bytes", "process_virtual_memory_bytes",
               "process_threads", "process_start_time_seconds"}
    used_process = {n for e in exprs for n in re.findall(r"\bprocess_[a-z0-9_]+", e)}
    assert used_process and used_process <= process, used_process - process
    assert "ProcessCollector::for_self()" in (ROOT / "src/server.rs").read_text()
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "p99", "errors", "queue depth", "in flight", "batch size",
                  "cache hit rate", "log writer", "model versions by state",
                  "refused versions", "swap duration", "requests by version",
                  "resident memory", "file descriptors", "connections closed by reason"):
        assert topic in titles, topic
    # The panels use the provisioned data source.
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in panels)


def test_yaml_files_lint_clean():
    run([tool("yamllint"), "-s", "docker-compose.yml", "docker-compose.gpu.yml", "prometheus",
         "grafana", "charts/inferd/values.yaml", "charts/inferd/Chart.yaml", "charts/inferd/ci",
         ".yamllint.yaml"])


# ---- k6 -------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["lstm-progressive", "text-cache", "spike", "soak"])
def test_k6_scripts_parse(script):
    for profile in ("full", "smoke"):
        out = run([tool("k6"), "inspect", f"{script}.js"], cwd=ROOT / "k6",
                  env={"K6_PROFILE": profile, "PATH": "/usr/bin:/bin"}).stdout
        opts = json.loads(out)
        assert opts["thresholds"], script


def test_chart_tracing_sets_the_standard_otel_variables():
    """Off by default (no OTEL_* at all, so inferd exports nothing); with an
    endpoint, the standard variables inferd reads, a parent-based ratio sampler."""
    data = manifests(None)["ConfigMap"]["data"]
    assert not [k for k in data if k.startswith("OTEL_")], data
    data = manifests(CHART / "ci/grpc-values.yaml")["ConfigMap"]["data"]
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert data["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert data["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert 0 < float(data["OTEL_TRACES_SAMPLER_ARG"]) <= 1
    assert data["OTEL_SERVICE_NAME"] == "inferd"


def test_compose_passes_tracing_through_and_nginx_logs_the_trace_id():
    """compose hands the OTLP settings to every worker from the caller's
    environment (unset: tracing off); nginx's access log has the trace id."""
    env = compose_config("docker-compose.yml")["services"]["inferd"]["environment"]
    assert env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "") == ""
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    fmt = re.search(r"log_format inferd escape=json(.*?);", (ROOT / "nginx/nginx.conf").read_text(), re.S)
    assert '"trace_id":"$upstream_http_x_trace_id"' in fmt.group(1)
