"""The deploy/ files' own checks, run by .ci/deploy after hadolint, kubernetes-validate and
systemd-analyze: what those tools cannot see.

- Every target's runwarden command line and RUNWARDEN_* environment goes through runwarden's
  own parser (`runwarden.cli.parse`), as the container or unit would start it: a misspelt
  option or variable, a bad value, or --sidecar with an app command fails here, not on a node.
- The grace-period arithmetic: each target's stop budget covers its pre-stop wait + the drain
  + the app's stop + 5 s, with the numbers read from the files themselves.
- Kubernetes: selectors match the pods, named ports exist, the probes point at the admin port,
  the pod security settings, sidecar mode's shared process namespace and single UID, and no
  service links (a Service named runwarden* would inject RUNWARDEN_* variables: exit 2).
- ECS: the task definition validates against the ECS API's RegisterTaskDefinition input shape
  (botocore's service model, offline), has one essential container, and its health check.
- Nomad: the job parses (python-hcl2) and has the leader task, kill_timeout and /readyz check.
- systemd: KillMode=mixed, Restart=always, TimeoutStopSec, a non-root User=.
- deploy/constraints.txt pins every runtime dependency within pyproject.toml's range.

    python deploy/check.py        # from the repository root; exits 1 on any failure
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import hcl2
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MARGIN = 5
ADMIN_PORT = 8081
PROXY_PORT = 8080

failures: list[str] = []
PARSE: Any = None
"""runwarden's parser as (argv, env) -> (settings, error); None when runwarden is missing."""


def check(ok: object, what: str) -> None:
    """Record `what` as passed or failed."""
    if ok:
        print(f"  ok    {what}")
    else:
        print(f"  FAIL  {what}")
        failures.append(what)


def section(title: str) -> None:
    print(f"\n{title}")


# --- the image ------------------------------------------------------------------------------


def dockerfile(path: Path | None = None) -> dict[str, Any]:
    """The last stage's ENTRYPOINT, CMD, USER, EXPOSE, ENV and HEALTHCHECK, in order."""
    found: dict[str, Any] = {}
    text = (path or DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            found = {"ENV": {}}
        elif word in ("ENTRYPOINT", "CMD"):
            found[word] = json.loads(rest)
        elif word == "USER":
            found[word] = rest.strip()
        elif word == "EXPOSE":
            found[word] = sorted(int(p.split("/")[0]) for p in rest.split())
        elif word == "ENV":
            found["ENV"].update(
                pair.split("=", 1) for pair in shlex.split(rest) if "=" in pair
            )
        elif word == "HEALTHCHECK":
            found[word] = rest
    return found


def healthcheck(name: str, image: Mapping[str, Any]) -> None:
    """For `docker run` and Compose: the image's HEALTHCHECK asks /readyz on the admin port."""
    probe = image.get("HEALTHCHECK", "")
    check(
        f"http://127.0.0.1:{ADMIN_PORT}/readyz" in probe and "--start-period=" in probe,
        f"{name}: HEALTHCHECK on /readyz at the admin port, with a start period",
    )


def images() -> None:
    """deploy/images/: runwarden installed into the images model servers ship in."""
    for path in sorted((DEPLOY / "images").glob("*.Dockerfile")):
        name = f"images/{path.name}"
        section(name)
        image = dockerfile(path)
        check(image.get("EXPOSE") == [PROXY_PORT, ADMIN_PORT], f"EXPOSE {PROXY_PORT} {ADMIN_PORT}")
        healthcheck(name, image)
        text = path.read_text()
        check("/dist/runwarden-*-abi3-*.whl" in text, "installs the abi3 wheel `make wheel` builds")
        env = image.get("ENV", {})
        check(env.get("RUNWARDEN_APP_PROFILE") in ("vllm", "triton"), "sets a model-server profile")
        argv = [*image["ENTRYPOINT"], *image["CMD"]]
        command_line(name, argv, env, sidecar=False)


# --- runwarden's own parser -----------------------------------------------------------------


def runwarden_parse() -> Any:
    try:
        from runwarden.cli import parse
        from runwarden.settings import ConfigError
    except ImportError as exc:
        print(f"  SKIP  runwarden is not importable here ({exc}): options and variables unchecked")
        return None

    def run(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Any, str]:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                return parse(list(argv), dict(env)), ""
        except ConfigError as exc:
            return None, str(exc)
        except SystemExit:
            return None, err.getvalue().strip().splitlines()[-1]

    return run


def command_line(name: str, argv: Sequence[str], env: Mapping[str, str], sidecar: bool) -> None:
    """`argv` as the process is started (runwarden first): runwarden's parser must take it.
    `runwarden run MODULE:APP` (embedded, SPEC E) serves the traffic port itself."""
    embedded = argv[1:2] == ["run"]
    check(
        len(argv) >= 2 and Path(argv[0]).name == "runwarden" and argv[1] in ("serve", "run"),
        f"{name}: starts `runwarden serve` or `runwarden run` ({shlex.join(argv[:2])})",
    )
    has_app = "--" in argv and argv.index("--") < len(argv) - 1
    if embedded:
        check(not sidecar and not has_app, f"{name}: the app is MODULE:APP, in one container")
    else:
        check(
            has_app != sidecar,
            f"{name}: {'no app command (sidecar)' if sidecar else 'an app command after --'}",
        )
    if PARSE is None:
        return
    settings, error = PARSE(argv[1:], env)
    check(
        settings is not None,
        f"{name}: runwarden's parser accepts it{': ' + error if error else ''}",
    )
    if settings is None:
        return
    check(bool(settings.sidecar) == sidecar, f"{name}: sidecar={sidecar}")
    if embedded:
        check(
            settings.admin_port == ADMIN_PORT and settings.port == PROXY_PORT,
            f"{name}: the app on {PROXY_PORT}, admin on {ADMIN_PORT}",
        )
        return
    check(
        settings.admin_port == ADMIN_PORT and settings.port == PROXY_PORT,
        f"{name}: proxy on {PROXY_PORT}, admin on {ADMIN_PORT}",
    )


def timeouts(env: Mapping[str, str], embedded: bool = False) -> tuple[float, float]:
    """The drain and app-stop timeouts the environment sets (both must be set explicitly;
    embedded, there is no app process to stop apart, so the drain alone)."""
    drain = env.get("RUNWARDEN_DRAIN_TIMEOUT_SECONDS")
    stop = "0" if embedded else env.get("RUNWARDEN_APP_STOP_TIMEOUT_SECONDS")
    check(
        drain is not None and stop is not None,
        "RUNWARDEN_DRAIN_TIMEOUT_SECONDS and RUNWARDEN_APP_STOP_TIMEOUT_SECONDS are set",
    )
    return float(drain or 0), float(stop or 0)


def seconds(text: str) -> float:
    """'40s', '5m', '45' (systemd: seconds) -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    scale = {None: 1, "s": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


# --- Kubernetes -----------------------------------------------------------------------------


def subset(small: Mapping[str, str], big: Mapping[str, str]) -> bool:
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def probe_path(container: Mapping[str, Any], probe: str) -> tuple[str | None, int | None]:
    """A container's httpGet probe: its path and its port as a number."""
    get = (container.get(probe) or {}).get("httpGet") or {}
    port = get.get("port")
    if isinstance(port, str):
        named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        port = named.get(port)
    return get.get("path"), port


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def pre_stop_sleep(container: Mapping[str, Any]) -> float:
    handler = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in handler:
        return float(handler["sleep"]["seconds"])
    command = (handler.get("exec") or {}).get("command") or []
    return float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0


def kubernetes(image: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Check every Deployment and Service under deploy/kubernetes; return the pod templates."""
    templates = []
    uid = int(str(image.get("USER", "0")).split(":")[0])
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        services = [d for d in docs if d["kind"] == "Service"]
        for deployment in deployments:
            name = f"{path.name} {deployment['metadata']['name']}"
            section(f"kubernetes: {name}")
            template = deployment["spec"]["template"]
            pod, labels = template["spec"], template["metadata"]["labels"]
            templates.append(template)
            check(
                subset(deployment["spec"]["selector"]["matchLabels"], labels),
                "the selector matches the pod's labels",
            )
            check(
                pod.get("enableServiceLinks") is False,
                "enableServiceLinks: false (no RUNWARDEN_<SERVICE>_* variables)",
            )
            check(pod.get("automountServiceAccountToken") is False, "no service account token")
            security = pod.get("securityContext") or {}
            check(
                security.get("runAsNonRoot") is True and security.get("runAsUser") == uid,
                f"pod runs as non-root UID {uid}, the image's USER",
            )
            annotations = template["metadata"].get("annotations") or {}
            check(
                annotations.get("prometheus.io/scrape") == "true"
                and annotations.get("prometheus.io/port") == str(ADMIN_PORT)
                and annotations.get("prometheus.io/path") == "/metrics",
                "Prometheus scrape annotations: the admin port's /metrics",
            )
            containers = pod["containers"]
            for c in containers:
                sc = c.get("securityContext") or {}
                check(
                    sc.get("allowPrivilegeEscalation") is False
                    and sc.get("readOnlyRootFilesystem") is True
                    and (sc.get("capabilities") or {}).get("drop") == ["ALL"]
                    and sc.get("runAsUser", uid) == uid,
                    f"container {c['name']}: no privilege escalation, read-only root, "
                    f"no capabilities, UID {uid}",
                )
            ours = [c for c in containers if argv_of(c, image)[:1] == ["runwarden"]]
            check(len(ours) == 1, "exactly one container runs runwarden")
            if len(ours) != 1:
                continue
            warden = ours[0]
            env = container_env(warden)
            argv = argv_of(warden, image)
            sidecar = len(containers) > 1
            command_line(f"container {warden['name']}", argv, env, sidecar)
            ports = {p.get("name"): p["containerPort"] for p in warden.get("ports", [])}
            check(
                ports.get("http") == PROXY_PORT and ports.get("admin") == ADMIN_PORT,
                f"ports http {PROXY_PORT} and admin {ADMIN_PORT}",
            )
            check(
                probe_path(warden, "readinessProbe") == ("/readyz", ADMIN_PORT)
                and warden["readinessProbe"].get("periodSeconds", 10) <= 2,
                "readinessProbe: /readyz on the admin port, every 1-2 s",
            )
            check(
                warden["readinessProbe"].get("failureThreshold", 3) >= 2,
                "readinessProbe: failureThreshold >= 2 (one lost probe does not unready a pod)",
            )
            check(
                probe_path(warden, "livenessProbe") == ("/livez", ADMIN_PORT),
                "livenessProbe: /livez on the admin port",
            )
            check(
                probe_path(warden, "startupProbe") == ("/livez", ADMIN_PORT),
                "startupProbe: /livez on the admin port",
            )
            check(
                warden.get("terminationMessagePolicy") == "FallbackToLogsOnError",
                "termination message: runwarden's line, else the log's tail",
            )
            drain, stop = timeouts(env, embedded=argv[1:2] == ["run"])
            pre_stop = pre_stop_sleep(warden)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            check(
                pre_stop >= 5 and grace == pre_stop + drain + stop + MARGIN,
                f"grace {grace} = preStop {pre_stop:g} + drain {drain:g} + stop {stop:g} "
                f"+ {MARGIN}",
            )
            live = warden["livenessProbe"]
            budget = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
            check(
                budget >= drain + stop,
                f"liveness gives up after {budget} s >= drain + stop: runwarden exits first",
            )
            if sidecar:
                check(pod.get("shareProcessNamespace") is True, "shareProcessNamespace: true")
                for c in containers:
                    if c is warden:
                        continue
                    check(
                        "livenessProbe" not in c,
                        f"container {c['name']}: no liveness probe (runwarden stops it)",
                    )
                    check(
                        pre_stop_sleep(c) >= pre_stop + drain,
                        f"container {c['name']}: preStop {pre_stop_sleep(c):g} s >= "
                        f"runwarden's {pre_stop:g} + drain {drain:g}: it serves the drain",
                    )
            else:
                limits = (warden.get("resources") or {}).get("limits") or {}
                check(
                    str(limits.get("nvidia.com/gpu")) == "1"
                    and env.get("RUNWARDEN_GPU_REQUIRED") == "true",
                    "nvidia.com/gpu: 1 and RUNWARDEN_GPU_REQUIRED=true",
                )
            for service in services:
                sname = service["metadata"]["name"]
                check(
                    not sname.lower().startswith("runwarden"),
                    f"Service {sname}: not named runwarden* (service links)",
                )
                check(
                    subset(service["spec"]["selector"], labels), f"Service {sname} selects the pod"
                )
                targets = {p.get("targetPort") for p in service["spec"]["ports"]}
                check(targets <= {"http", PROXY_PORT}, f"Service {sname} targets the proxy port")
    return templates


def argv_of(container: Mapping[str, Any], image: Mapping[str, Any]) -> list[str]:
    """The process a container starts: command (else the image's ENTRYPOINT) + args (else
    the image's CMD, when command is not set)."""
    command = container.get("command")
    if command is not None:
        return [*command, *container.get("args", [])]
    return [*image["ENTRYPOINT"], *container.get("args", image["CMD"])]


def pod_monitor(templates: Sequence[Mapping[str, Any]]) -> None:
    path = DEPLOY / "kubernetes" / "podmonitor.yaml"
    if not path.exists():
        return
    section("kubernetes: podmonitor.yaml (a CRD: kubernetes-validate has no schema for it)")
    monitor = yaml.safe_load(path.read_text())
    check(
        monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor",
        "a monitoring.coreos.com/v1 PodMonitor",
    )
    spec = monitor["spec"]
    check(
        set(spec) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"},
        f"known spec fields ({', '.join(sorted(spec))})",
    )
    endpoints = spec["podMetricsEndpoints"]
    for template in templates:
        name = template["metadata"]["labels"].get("app.kubernetes.io/instance", "?")
        check(
            subset(spec["selector"]["matchLabels"], template["metadata"]["labels"]),
            f"selects the {name} pods",
        )
        ports = {
            p.get("name"): p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        check(
            all(
                ports.get(e["port"]) == ADMIN_PORT and e.get("path") == "/metrics"
                for e in endpoints
            ),
            f"scrapes /metrics on the {name} pods' admin port",
        )


def keda() -> None:
    path = DEPLOY / "kubernetes" / "keda-scaledobject.yaml"
    deployments = {
        d["metadata"]["name"]
        for other in (DEPLOY / "kubernetes").glob("*.yaml")
        for d in yaml.safe_load_all(other.read_text())
        if d and d["kind"] == "Deployment"
    }
    section("kubernetes: keda-scaledobject.yaml (a CRD: kubernetes-validate has no schema for it)")
    scaled = yaml.safe_load(path.read_text())
    check(
        scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject",
        "a keda.sh/v1alpha1 ScaledObject",
    )
    spec = scaled["spec"]
    known = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "cooldownPeriod",
             "pollingInterval", "triggers", "idleReplicaCount", "fallback", "advanced"}  # fmt: skip
    check(set(spec) <= known, f"known spec fields ({', '.join(sorted(spec))})")
    target = spec["scaleTargetRef"]["name"]
    check(target in deployments, f"scales a Deployment of the examples ({target})")
    check(
        1 <= spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"],
        "1 <= minReplicaCount <= maxReplicaCount (a runner is never scaled to zero here)",
    )
    # The metric it reads is one runwarden serves (the core's /metrics families).
    served = (ROOT / "rust" / "metrics" / "live.rs").read_text()
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        check(trigger["type"] == "prometheus", "a prometheus trigger")
        names = set(re.findall(r"\b(runwarden_[a-z_]+)\b", meta["query"]))
        check(
            names and all(f'name: "{n}"' in served for n in names),
            f"its query reads series runwarden serves ({', '.join(sorted(names))})",
        )
        check(float(meta["threshold"]) > 0, f"threshold {meta['threshold']} > 0")


# --- ECS ------------------------------------------------------------------------------------


def ecs(image: Mapping[str, Any]) -> None:
    path = DEPLOY / "ecs" / "task-definition.json"
    section(f"ecs: {path.name}")
    try:
        task = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        check(False, f"valid JSON: {exc}")
        return
    check(True, "valid JSON")
    try:
        import botocore.session
        from botocore.validate import ParamValidator
    except ImportError:
        print("  SKIP  botocore is not installed: the ECS API shape is unchecked")
    else:
        model = botocore.session.get_session().get_service_model("ecs")
        shape = model.operation_model("RegisterTaskDefinition").input_shape
        report = ParamValidator().validate(task, shape)
        check(
            not report.has_errors(),
            "RegisterTaskDefinition accepts it (botocore's ECS model)"
            + (
                ":\n        " + report.generate_report().replace("\n", "\n        ")
                if report.has_errors()
                else ""
            ),
        )
    containers = task.get("containerDefinitions", [])
    essential = [c for c in containers if c.get("essential", True)]
    check(len(essential) >= 1, "an essential container (its exit stops the task)")
    ours = [c for c in containers if c.get("name") == "runwarden"]
    check(len(ours) == 1 and ours[0].get("essential") is True, "container runwarden: essential")
    if len(ours) != 1:
        return
    warden = ours[0]
    env = {e["name"]: e["value"] for e in warden.get("environment", [])}
    argv = [*warden.get("entryPoint", image["ENTRYPOINT"]), *warden.get("command", image["CMD"])]
    command_line("container runwarden", argv, env, sidecar=False)
    health = " ".join(warden.get("healthCheck", {}).get("command", []))
    check(
        health.startswith("CMD python -c") and f"127.0.0.1:{ADMIN_PORT}/livez" in health,
        "healthCheck: python -c against the admin port's /livez (no curl in slim images)",
    )
    ports = {p["containerPort"] for p in warden.get("portMappings", [])}
    check({PROXY_PORT, ADMIN_PORT} <= ports, f"portMappings {PROXY_PORT} and {ADMIN_PORT}")
    drain, stop = timeouts(env)
    timeout = warden.get("stopTimeout", 30)
    check(
        timeout >= drain + stop + MARGIN,
        f"stopTimeout {timeout} >= drain {drain:g} + stop {stop:g} + {MARGIN}",
    )
    check(
        warden.get("user", "root").split(":")[0] == str(image["USER"]).split(":")[0],
        "user: the image's non-root UID",
    )


# --- Nomad ----------------------------------------------------------------------------------


def blocks(items: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """python-hcl2's labelled blocks ([{label: body}, ...]) as (label, body) pairs."""
    for item in items:
        yield from item.items()


def nomad(image: Mapping[str, Any]) -> None:
    path = DEPLOY / "nomad" / "runwarden.nomad.hcl"
    section(f"nomad: {path.name}")
    options = hcl2.SerializationOptions(
        with_comments=False, with_meta=False, strip_string_quotes=True
    )
    try:
        with path.open() as f:
            job = hcl2.load(f, serialization_options=options)
    except Exception as exc:  # the parser's errors have no common base
        check(False, f"parses as HCL2: {exc}")
        return
    check(True, "parses as HCL2 (python-hcl2)")
    found = False
    for _, body in blocks(job.get("job", [])):
        for _, group in blocks(body.get("group", [])):
            for tname, task in blocks(group.get("task", [])):
                if tname != "runwarden":
                    continue
                found = True
                check(task.get("leader") is True, "task runwarden: leader = true")
                check(task.get("driver") == "docker", "task runwarden: docker driver")
                config = task["config"][0]
                env = task.get("env", [{}])[0]
                argv = [
                    *config.get("entrypoint", image["ENTRYPOINT"]),
                    *config.get("args", image["CMD"]),
                ]
                command_line("task runwarden", argv, env, sidecar=False)
                drain, stop = timeouts(env, embedded=argv[1:2] == ["run"])
                kill = seconds(task.get("kill_timeout", "5s"))
                check(
                    kill >= drain + stop + MARGIN,
                    f"kill_timeout {kill:g} s >= drain {drain:g} + stop {stop:g} + {MARGIN}",
                )
                check(
                    seconds(group.get("shutdown_delay", "0s")) >= 5,
                    "the group's shutdown_delay >= 5 s (deregistered before SIGTERM)",
                )
            checks = [c for s in group.get("service", []) for c in s.get("check", [])]
            check(
                any(c.get("path") == "/readyz" and c.get("port") == "admin" for c in checks),
                "a service check on the admin port's /readyz",
            )
            ports = {
                label: p.get("to")
                for n in group.get("network", [])
                for label, p in blocks(n.get("port", []))
            }
            check(
                ports.get("admin") == ADMIN_PORT and ports.get("http") == PROXY_PORT,
                f"ports http -> {PROXY_PORT}, admin -> {ADMIN_PORT}",
            )
            check(bool(group.get("restart")), "a restart block")
    check(found, "a task named runwarden")


# --- systemd --------------------------------------------------------------------------------


def systemd() -> None:
    path = DEPLOY / "systemd" / "runwarden.service"
    section(f"systemd: {path.name}")
    unit: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        unit.setdefault(key.strip(), []).append(value.strip())

    def one(key: str) -> str:
        return unit.get(key, [""])[-1]

    env = dict(shlex.split(v)[0].split("=", 1) for v in unit.get("Environment", []))
    argv = shlex.split(one("ExecStart"))
    check(argv[:1] and argv[0].startswith("/"), "ExecStart: an absolute path")
    command_line("ExecStart", argv, env, sidecar=False)
    check(one("KillMode") == "mixed", "KillMode=mixed (SIGTERM to runwarden only)")
    check(one("Restart") == "always", "Restart=always")
    check(one("User") not in ("", "root", "0"), f"User={one('User')}: not root")
    drain, stop = timeouts(env)
    timeout = seconds(one("TimeoutStopSec") or "90")
    check(
        timeout >= drain + stop + MARGIN,
        f"TimeoutStopSec {timeout:g} >= drain {drain:g} + stop {stop:g} + {MARGIN}",
    )
    check(
        "2" in one("RestartPreventExitStatus").split(), "exit 2 (bad configuration) not restarted"
    )


# --- the image's Python dependencies ----------------------------------------------------------


def constraints() -> None:
    section("deploy/constraints.txt against pyproject.toml")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        print("  SKIP  tomllib needs Python 3.11+")
        return
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for raw in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            check(False, f"{line}: pinned with ==")
        pins[canonicalize_name(req.name)] = specs[0].version if specs else ""
    check(pins, f"{len(pins)} pins, each name==version")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["demo"]]:
        req = Requirement(text)
        pin = pins.get(canonicalize_name(req.name))
        check(
            pin is not None and req.specifier.contains(pin, prereleases=True),
            f"{text}: pinned to {pin} within its range",
        )


def main() -> int:
    global PARSE
    section("runwarden's parser (runwarden.cli.parse)")
    PARSE = runwarden_parse()
    if PARSE is not None:
        check(True, "runwarden is importable: each target's command line and RUNWARDEN_* set")
    image = dockerfile()
    section("Dockerfile (runtime stage)")
    check(image.get("ENTRYPOINT") == ["runwarden", "serve", "--"], "ENTRYPOINT runwarden serve --")
    check(
        image.get("CMD") == ["python", "-m", "runwarden.demo", "--port", "8000"],
        "CMD: the demo model server on port 8000",
    )
    check(image.get("USER", "0").split(":")[0] not in ("0", "root"), f"USER {image.get('USER')}")
    check(image.get("EXPOSE") == [PROXY_PORT, ADMIN_PORT], f"EXPOSE {PROXY_PORT} {ADMIN_PORT}")
    command_line("ENTRYPOINT + CMD", [*image["ENTRYPOINT"], *image["CMD"]], {}, sidecar=False)
    healthcheck("Dockerfile", image)
    images()
    pod_monitor(kubernetes(image))
    keda()
    ecs(image)
    nomad(image)
    systemd()
    constraints()
    print()
    if failures:
        print(f"deploy/check.py: {len(failures)} failed:")
        for what in failures:
            print(f"  - {what.splitlines()[0]}")
        return 1
    print("deploy/check.py: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
