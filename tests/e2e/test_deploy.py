"""The deployment files in docker/, checked without a container engine.

What can be checked here is checked against the real binary and the repo:
  * docker/compose.yaml and every docker/k8s/*.yaml parse, and they hang
    together (services, volumes, the Secret's keys, the ConfigMap's items);
  * the configs they mount pass `approvalplane config check` (missing secrets
    are only warnings), with the rules they mount, laid out the way the
    container or the kubelet lays them out;
  * the Dockerfile builds a binary Cargo.toml has, copies only paths that
    exist, copies everything `cargo build` needs, and its HEALTHCHECK command
    works against a running server;
  * the k8s probes hit /readyz and /healthz on the config's control port, and
    only the control listener is exposed;
  * the Prometheus alert rules and the Grafana dashboard reference only metric
    names (and labels) that a running server exports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import REPO_ROOT, HTTP_TIMEOUT, base_env, run_cli

DOCKER = REPO_ROOT / "docker"
K8S = DOCKER / "k8s"
OBS = DOCKER / "observability"

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_objects() -> list[dict[str, Any]]:
    out = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        out.extend(load_yaml_docs(p))
    return out


def k8s_one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o.get("kind") == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {K8S}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return k8s_one("Deployment")["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def ap_container(spec: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in all_containers(spec) if "approvalplane" in c.get("image", "")]
    assert len(found) == 1, f"expected one approvalplane container, found {[c['name'] for c in found]}"
    return found[0]


def configmap_data() -> dict[str, str]:
    return k8s_one("ConfigMap")["data"]


def configmap_config() -> dict[str, Any]:
    return tomllib.loads(configmap_data()["approvalplane.toml"])


def config_check(config: Path) -> subprocess.CompletedProcess:
    """`approvalplane config check` with no secrets in the environment."""
    home = config.parent / "home"
    home.mkdir(exist_ok=True)
    return run_cli(["config", "check", "--config", str(config)], cwd=config.parent, env=base_env(home))


def assert_check_ok(cp: subprocess.CompletedProcess, what: str) -> None:
    assert cp.returncode == 0, (f"config check of {what} exited {cp.returncode}\n"
                                f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
    errors = [line for line in cp.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert not errors, f"config check of {what} printed more than warnings:\n{cp.stderr}"


def bundle_hash(cp: subprocess.CompletedProcess) -> str:
    m = re.search(r"bundle (sha256:[0-9a-f]{64})", cp.stdout)
    assert m, f"no bundle hash in config check output: {cp.stdout!r}"
    return m.group(1)


def rule_file_count(cp: subprocess.CompletedProcess) -> int:
    m = re.search(r"\((\d+) rule files", cp.stdout)
    assert m, f"no rule file count in config check output: {cp.stdout!r}"
    return int(m.group(1))


def secret_refs(cfg: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (key path, value) of a *_env or *_file key in a parsed config."""
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            sub = f"{path}.{k}" if path else k
            if isinstance(v, str) and (k.endswith("_env") or k.endswith("_file")) \
                    and k not in ("signing_key_file", "ca_file"):
                yield sub, v
            else:
                yield from secret_refs(v, sub)
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            yield from secret_refs(v, f"{path}[{i}]")


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def host_of(addr: str) -> str:
    return addr.rsplit(":", 1)[0].strip("[]")


# --------------------------------------------------------------------------
# Dockerfile parsing
# --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued instruction"
    return out


def dockerfile_args() -> dict[str, str]:
    args = {}
    for ins, rest in dockerfile_instructions():
        if ins == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
    return args


def expand_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def copy_instructions() -> list[tuple[list[str], list[str], str]]:
    """(flags, sources, destination) of every COPY."""
    out = []
    for ins, rest in dockerfile_instructions():
        if ins not in ("COPY", "ADD"):
            continue
        assert ins == "COPY", "use COPY, not ADD"
        if rest.startswith("["):
            parts = json.loads(rest)
        else:
            parts = shlex.split(rest)
        flags = [p for p in parts if p.startswith("--")]
        paths = [p for p in parts if not p.startswith("--")]
        assert len(paths) >= 2, f"COPY needs a source and a destination: {rest!r}"
        out.append((flags, paths[:-1], paths[-1]))
    return out


def context_copies() -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context."""
    return [(s, d) for flags, srcs, d in copy_instructions()
            if not any(f.startswith("--from") for f in flags) for s in srcs]


# --------------------------------------------------------------------------
# compose
# --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = load_yaml_docs(DOCKER / "compose.yaml")
    return doc


def ap_services(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in c["services"].items() if s.get("image", "").startswith("approvalplane")
            or "Dockerfile" in json.dumps(s.get("build", ""))}


def test_compose_parses_and_hangs_together():
    c = compose()
    services = c["services"]
    aps = ap_services(c)
    assert len(aps) >= 2, f"compose runs {len(aps)} ApprovalPlane replica(s); two are wanted"
    docker_cfg = tomllib.loads((DOCKER / "approvalplane.toml").read_text())

    # Redis, with the append-only file on.
    redis = [s for s in services.values() if str(s.get("image", "")).startswith("redis")]
    assert len(redis) == 1, "compose has no Redis service"
    assert "--appendonly yes" in " ".join(map(str, redis[0].get("command", []))), \
        "Redis must run with appendonly yes"
    redis_name = [n for n, s in services.items() if s is redis[0]][0]
    assert docker_cfg["store"]["backend"] == "redis"
    assert urllib.parse.urlsplit(docker_cfg["store"]["redis_url"]).hostname == redis_name
    assert docker_cfg["store"].get("hmac_key_env"), "two replicas need store.hmac_key_env"

    # Every upstream in the mounted config is a compose service.
    for up in docker_cfg["upstream"]:
        host = urllib.parse.urlsplit(up["url"]).hostname
        assert host in services, f"upstream {up['name']} points at {host!r}, which is not a compose service"
        port = urllib.parse.urlsplit(up["url"]).port or 80
        env = services[host].get("environment") or {}
        assert str(env.get("PORT")) == str(port), \
            f"upstream {up['name']} expects port {port}; the {host} service sets PORT={env.get('PORT')}"

    listen_port = port_of(docker_cfg["server"]["listen"])
    control_port = port_of(docker_cfg["server"]["control_listen"])
    published: set[str] = set()
    for name, svc in aps.items():
        build = svc["build"]
        assert (DOCKER / build["context"]).resolve() == REPO_ROOT, f"{name}: build context is not the repo root"
        assert (REPO_ROOT / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
        # Every secret the config names is set, with an obviously-demo value.
        env = svc["environment"]
        for key, var in secret_refs(docker_cfg):
            assert key.endswith("_env"), f"docker/approvalplane.toml: use *_env in compose ({key})"
            assert var in env, f"{name}: {key} names {var}, which compose does not set"
            assert "demo" in str(env[var]), f"{name}: {var} must be an obviously-demo value"
        # The config and the rules are mounted where the image expects them.
        mounts = {}
        for v in svc["volumes"]:
            src, dst = v.split(":")[:2]
            mounts[dst] = src
            if src.startswith(".") or src.startswith("/"):
                assert (DOCKER / src).exists(), f"{name}: volume source {src} does not exist"
        assert mounts.get("/etc/approvalplane/approvalplane.toml") == "./approvalplane.toml"
        assert (DOCKER / mounts["/etc/approvalplane/rules"]).resolve() == REPO_ROOT / "rules"
        audit_dir = Path(docker_cfg["audit"]["path"])
        assert any(audit_dir.is_relative_to(dst) for dst in mounts if not mounts[dst].startswith(".")), \
            f"{name}: the audit path {audit_dir} is not on a volume"
        # Both listeners published, on the host's loopback.
        targets = set()
        for p in svc["ports"]:
            host_ip, host_port, container_port = p.split(":")
            assert host_ip == "127.0.0.1", f"{name}: publish on 127.0.0.1 only ({p})"
            assert host_port not in published, f"two replicas publish host port {host_port}"
            published.add(host_port)
            targets.add(int(container_port))
        assert targets == {listen_port, control_port}, f"{name} publishes {targets}"
        assert svc.get("read_only") is True
        assert "ALL" in svc.get("cap_drop", [])

    named = set(c.get("volumes") or {})
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not (src.startswith(".") or src.startswith("/")):
                assert src in named, f"volume {src} is not declared"


def test_k8s_manifests_parse():
    kinds = sorted(o["kind"] for o in k8s_objects())
    for kind in ("ConfigMap", "Deployment", "Secret", "Service"):
        assert kind in kinds, f"{K8S} has no {kind}"
    for o in k8s_objects():
        assert o.get("apiVersion") and o.get("metadata", {}).get("name"), f"incomplete object: {o}"
    (kust,) = load_yaml_docs(K8S / "kustomization.yaml")
    listed = set(kust["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files, f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(files)}"


# --------------------------------------------------------------------------
# the configs pass config check
# --------------------------------------------------------------------------


def test_docker_config_passes_config_check(tmp_path):
    """docker/approvalplane.toml with the repo's rules, as the image lays them out."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(DOCKER / "approvalplane.toml", etc / "approvalplane.toml")
    shutil.copytree(REPO_ROOT / "rules", etc / "rules")
    cp = config_check(etc / "approvalplane.toml")
    assert_check_ok(cp, "docker/approvalplane.toml")
    # Missing secrets are warnings, and every one is named.
    for key, var in secret_refs(tomllib.loads((DOCKER / "approvalplane.toml").read_text())):
        assert var in cp.stderr, f"config check did not warn about the unset {var} ({key})"
    # The same bundle as the repo's own rules directory.
    assert rule_file_count(cp) == len([p for p in (REPO_ROOT / "rules").glob("*.rego")
                                       if not p.stem.endswith("_test")])


def test_docker_config_store_is_redis_and_refuses_a_password(tmp_path):
    """The compose config uses the shared store; config check still guards its URL."""
    text = (DOCKER / "approvalplane.toml").read_text()
    assert re.search(r'^backend = "redis"$', text, re.M)
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copytree(REPO_ROOT / "rules", etc / "rules")
    (etc / "approvalplane.toml").write_text(
        text.replace('redis_url = "redis://redis:6379/0"', 'redis_url = "redis://:hunter2@redis:6379/0"'))
    cp = config_check(etc / "approvalplane.toml")
    assert cp.returncode == 64, f"a password in redis_url was accepted:\n{cp.stdout}{cp.stderr}"
    assert "store.redis_url" in cp.stderr


def write_configmap_plain(root: Path) -> Path:
    """The ConfigMap's config and rules in a plain directory: config + rules/."""
    data = configmap_data()
    root.mkdir(parents=True, exist_ok=True)
    (root / "approvalplane.toml").write_text(data["approvalplane.toml"])
    (root / "rules").mkdir()
    for key, text in data.items():
        if key != "approvalplane.toml":
            (root / "rules" / key).write_text(text)
    return root / "approvalplane.toml"


def config_volume() -> dict[str, Any]:
    spec = pod_spec()
    mount = [m for m in ap_container(spec)["volumeMounts"] if m["mountPath"] == "/etc/approvalplane"]
    assert len(mount) == 1, "the approvalplane container does not mount /etc/approvalplane"
    (vol,) = [v for v in spec["volumes"] if v["name"] == mount[0]["name"]]
    return vol


def write_kubelet_projection(root: Path, items: list[dict[str, str]], data: dict[str, str]) -> None:
    """What the kubelet writes for a ConfigMap volume with `items` (its atomic
    writer): the files in a timestamped directory, `..data` pointing at it, and
    one symlink per top-level name pointing into `..data`."""
    ts = root / "..2026_11_23_12_00_00.000000001"
    for it in items:
        p = ts / it["path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(data[it["key"]])
    (root / "..data").symlink_to(ts.name)
    for top in sorted({it["path"].split("/")[0] for it in items}):
        (root / top).symlink_to(f"..data/{top}")


def test_configmap_config_passes_config_check(tmp_path):
    cfg_path = write_configmap_plain(tmp_path / "plain")
    cp = config_check(cfg_path)
    assert_check_ok(cp, "the ConfigMap's approvalplane.toml")
    for key, ref in secret_refs(configmap_config()):
        assert ref in cp.stderr, f"config check did not warn about the missing {ref} ({key})"
    # The rules' own tests pass (a reload runs them before going live).
    rt = run_cli(["rules", "test", str(cfg_path.parent / "rules")], env=base_env(tmp_path))
    assert rt.returncode == 0, f"rules test of the ConfigMap's rules failed:\n{rt.stdout}{rt.stderr}"
    assert re.search(r"^[1-9]\d* passed, 0 failed$", rt.stdout, re.M), rt.stdout


def test_configmap_as_the_kubelet_projects_it(tmp_path):
    """The Deployment's `items` put the config at the top and the rules under
    rules/; mounted that way, config check sees exactly the same bundle."""
    data = configmap_data()
    vol = config_volume()
    assert vol["configMap"]["name"] == k8s_one("ConfigMap")["metadata"]["name"]
    items = vol["configMap"]["items"]
    assert sorted(it["key"] for it in items) == sorted(data), \
        "every ConfigMap key must be projected (and no other)"
    paths = {it["key"]: it["path"] for it in items}
    assert paths["approvalplane.toml"] == "approvalplane.toml"
    rules_rel = configmap_config()["policy"]["rules"]
    for key in data:
        if key != "approvalplane.toml":
            assert paths[key] == f"{rules_rel}/{key}", f"{key} is projected to {paths[key]}"

    plain = config_check(write_configmap_plain(tmp_path / "plain"))
    assert_check_ok(plain, "the ConfigMap (plain layout)")
    mounted = tmp_path / "etc-approvalplane"
    mounted.mkdir()
    write_kubelet_projection(mounted, items, data)
    cp = config_check(mounted / "approvalplane.toml")
    assert_check_ok(cp, "the ConfigMap (kubelet layout)")
    assert rule_file_count(cp) == rule_file_count(plain)
    assert bundle_hash(cp) == bundle_hash(plain), "the projected rules are not the same bundle"


# --------------------------------------------------------------------------
# the Dockerfile matches the repo
# --------------------------------------------------------------------------


def cargo_bins() -> set[str]:
    manifest = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())
    bins = {b["name"] for b in manifest.get("bin", [])}
    if (REPO_ROOT / "src" / "main.rs").is_file():
        bins.add(manifest["package"]["name"])
    bin_dir = REPO_ROOT / "src" / "bin"
    if bin_dir.is_dir():
        bins |= {p.stem for p in bin_dir.glob("*.rs")}
    return bins


def cargo_target_paths() -> list[str]:
    """Every source file cargo needs to load the manifest's targets."""
    manifest = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())
    out = ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs"]
    for kind, default_dir in (("test", "tests"), ("bench", "benches"), ("example", "examples"), ("bin", "src/bin")):
        for t in manifest.get(kind, []):
            out.append(t.get("path") or f"{default_dir}/{t['name']}.rs")
    # The build script: `package.build`, or build.rs at the root, which cargo finds itself.
    script = manifest.get("package", {}).get("build")
    if script is None and (REPO_ROOT / "build.rs").is_file():
        script = "build.rs"
    if isinstance(script, str):
        out.append(script)
    if not (REPO_ROOT / "src" / "lib.rs").exists():
        out.remove("src/lib.rs")
    return out


def covered(rel: str, sources: list[str]) -> bool:
    rel = os.path.normpath(rel)
    for s in sources:
        s = os.path.normpath(s.rstrip("/"))
        if s == "." or rel == s or rel.startswith(s + "/"):
            return True
    return False


def test_dockerfile_build_line_and_copies_match_the_repo():
    ins = dockerfile_instructions()
    args = dockerfile_args()
    froms = [expand_args(rest, args) for i, rest in ins if i == "FROM"]
    assert len(froms) >= 2, "the Dockerfile is not multi-stage"
    assert froms[0].split()[0].startswith("rust:"), f"the build stage is {froms[0]}"
    assert re.match(r"(debian:\S*-slim|gcr\.io/distroless/)", froms[-1].split()[0]), \
        f"the runtime stage is {froms[-1]}"

    runs = [rest for i, rest in ins if i == "RUN" and "cargo build" in rest]
    assert len(runs) == 1, f"expected one RUN with cargo build, found {len(runs)}"
    build = shlex.split(re.search(r"cargo build[^&;|]*", runs[0]).group(0))
    assert "--release" in build and "--locked" in build, build
    assert (REPO_ROOT / "Cargo.lock").is_file()
    binary = build[build.index("--bin") + 1]
    assert binary in cargo_bins(), f"Cargo.toml has no binary {binary!r} (it has {sorted(cargo_bins())})"
    assert f"target/release/{binary}" in runs[0]

    # Every COPY from the context exists in the repo ...
    copies = context_copies()
    for src, _ in copies:
        assert (REPO_ROOT / src).exists(), f"COPY {src}: no such path in the repository"
    # ... and together they hold what cargo needs to build.
    build_sources = [s for s, d in copies if not d.startswith("/etc/")]
    for rel in cargo_target_paths():
        assert covered(rel, build_sources), f"the build stage does not COPY {rel}, which cargo needs"
    # Cargo's own config in the repo changes what is built (the allocator's defaults).
    if (REPO_ROOT / ".cargo" / "config.toml").is_file():
        assert covered(".cargo/config.toml", build_sources), \
            "the build stage does not COPY .cargo/config.toml, which sets build-time defaults"
    for rs in (REPO_ROOT / "src").rglob("*.rs"):
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', rs.read_text()):
            target = os.path.relpath((rs.parent / m.group(1)).resolve(), REPO_ROOT)
            assert covered(target, build_sources), \
                f"{rs.relative_to(REPO_ROOT)} embeds {target}, which the build stage does not COPY"

    # The runtime stage takes the binary the build produced.
    from_build = [(srcs, d) for flags, srcs, d in copy_instructions() if any(f.startswith("--from") for f in flags)]
    assert len(from_build) == 1
    (src,), dest = from_build[0]
    assert src.split("/")[-1] == binary and src in runs[0], \
        f"the runtime copies {src}, which the build RUN does not produce"

    # The shipped config and rules land where the default command looks.
    entry = json.loads([r for i, r in ins if i == "ENTRYPOINT"][-1])
    cmd = json.loads([r for i, r in ins if i == "CMD"][-1])
    assert entry[0] == dest and cmd[0] == "serve"
    config_in_image = cmd[cmd.index("--config") + 1]
    dests = {d: s for s, d in copies}
    assert dests.get(config_in_image) == "docker/approvalplane.toml"
    assert dests.get(str(Path(config_in_image).parent / "rules")) == "rules"

    # Non-root, both listeners, a real health check.
    user = [r for i, r in ins if i == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root"), f"USER {user}"
    exposed = {int(p.split("/")[0]) for i, r in ins if i == "EXPOSE" for p in r.split()}
    docker_cfg = tomllib.loads((DOCKER / "approvalplane.toml").read_text())
    assert {port_of(docker_cfg["server"]["listen"]), port_of(docker_cfg["server"]["control_listen"])} <= exposed
    hc = [r for i, r in ins if i == "HEALTHCHECK"]
    assert len(hc) == 1 and "NONE" not in hc[0].upper().split()


def healthcheck_argv() -> tuple[list[str], dict[str, str]]:
    """The HEALTHCHECK's exec-form command, and the ENV it relies on."""
    (hc,) = [r for i, r in dockerfile_instructions() if i == "HEALTHCHECK"]
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc)
    assert m, f"HEALTHCHECK must use the exec form: {hc}"
    env = {}
    for i, rest in dockerfile_instructions():
        if i == "ENV":
            for part in shlex.split(rest):
                k, _, v = part.partition("=")
                env[k] = v
    return json.loads(m.group(1)), env


def test_dockerfile_healthcheck_probes_a_running_server(approvalplane, fake_upstream):
    """Run the image's HEALTHCHECK command (bash, no curl) against the real server."""
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run the HEALTHCHECK command")
    argv, image_env = healthcheck_argv()
    assert argv[0] in ("bash", "/bin/bash"), "the runtime image has no curl; the check runs in bash"
    up = fake_upstream()
    ap = approvalplane({"upstream": [{"name": "echo", "url": up.url}]},
                       rules={"main.rego": "package approvalplane\n"})
    port_var = [k for k in image_env if "PORT" in k]
    assert port_var, "the HEALTHCHECK's port is not an ENV"
    env = {**base_env(ap.workdir / "home"), port_var[0]: str(port_of(ap.control_listen))}
    ok = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0, f"HEALTHCHECK failed against a healthy server: {ok.stderr}"
    ap.stop()
    env[port_var[0]] = str(port_of(ap.control_listen))
    down = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    assert down.returncode != 0, "HEALTHCHECK passed with nothing listening"


# --------------------------------------------------------------------------
# k8s: probes, exposure, security
# --------------------------------------------------------------------------


def resolve_port(container: dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of {container['name']}"
    return named[port]


def test_k8s_probes_and_service_match_the_config():
    cfg = configmap_config()
    control_port = port_of(cfg["server"]["control_listen"])
    listen = cfg["server"]["listen"]
    spec = pod_spec()
    ap = ap_container(spec)

    probes = {k: ap[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for k, get in probes.items():
        assert resolve_port(ap, get["port"]) == control_port, f"{k} is not on control_listen's port"
    if "startupProbe" in ap:
        assert resolve_port(ap, ap["startupProbe"]["httpGet"]["port"]) == control_port
    # Probes come from the kubelet, so the control listener binds every interface.
    assert host_of(cfg["server"]["control_listen"]) in ("0.0.0.0", "::")
    # The agent listener stays inside the pod.
    assert host_of(listen) in ("127.0.0.1", "::1"), f"the sidecar's listen {listen} is not loopback"
    declared = {p["containerPort"] for c in all_containers(spec) for p in c.get("ports", [])}
    assert port_of(listen) not in declared, "the agent listener's port is declared on a container"
    assert not any("hostPort" in p for c in all_containers(spec) for p in c.get("ports", []))
    assert not spec.get("hostNetwork"), "hostNetwork would expose the agent listener"

    svc = k8s_one("Service")
    labels = k8s_one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service selects no pod"
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    for p in svc["spec"]["ports"]:
        assert resolve_port(ap, p.get("targetPort", p["port"])) == control_port, \
            f"the Service exposes port {p}, which is not the control listener"


def test_k8s_pod_security_resources_and_volumes():
    spec = pod_spec()
    cfg = configmap_config()
    ap = ap_container(spec)
    pod_sc = spec.get("securityContext", {})
    for c in all_containers(spec):
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{c['name']} may run as root"
        assert sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: root filesystem is writable"
        assert sc.get("allowPrivilegeEscalation") is False
        assert "ALL" in sc.get("capabilities", {}).get("drop", [])
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c.get("resources", {}).get(part, {})), f"{c['name']}: no {part}"
    if ap in (spec.get("initContainers") or []):
        assert ap.get("restartPolicy") == "Always", "an init container sidecar needs restartPolicy: Always"
    uid = ap.get("securityContext", {}).get("runAsUser", pod_sc.get("runAsUser"))
    assert uid not in (None, 0)

    # The audit path is on an emptyDir; everything else is read-only.
    vols = {v["name"]: v for v in spec["volumes"]}
    audit = Path(cfg["audit"]["path"])
    on = [m for m in ap["volumeMounts"] if audit.is_relative_to(m["mountPath"])]
    assert on and "emptyDir" in vols[on[-1]["name"]], "the audit path is not on an emptyDir"
    assert not on[-1].get("readOnly")
    for m in ap["volumeMounts"]:
        if "emptyDir" not in vols[m["name"]]:
            assert m.get("readOnly") is True, f"{m['mountPath']} should be read-only"

    # Every secret file the config names comes from the Secret volume.
    secret = k8s_one("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for value in list(secret.get("stringData", {}).values()):
        assert "REPLACE" in value.upper() or "PLACEHOLDER" in value.upper(), "Secret values must be placeholders"
    mounts = {m["mountPath"]: vols[m["name"]] for m in ap["volumeMounts"]}
    for key, ref in secret_refs(cfg):
        assert key.endswith("_file"), f"{key}: use *_file so that Secret updates reach SIGHUP"
        vol = mounts.get(str(Path(ref).parent))
        assert vol is not None and vol.get("secret", {}).get("secretName") == secret["metadata"]["name"], \
            f"{key} = {ref} is not in the Secret volume"
        projected = {it["path"]: it["key"] for it in vol["secret"].get("items", [])} or {k: k for k in keys}
        assert projected.get(Path(ref).name) in keys, f"{ref}: no such key in the Secret"
    mode = next(v for v in vols.values() if "secret" in v)["secret"].get("defaultMode", 0o644)
    assert mode & 0o040, "with fsGroup, secret files need group read (e.g. 0440)"


def test_k8s_agent_goes_through_the_sidecar_without_the_upstream_key():
    spec = pod_spec()
    cfg = configmap_config()
    ap = ap_container(spec)
    agents = [c for c in spec["containers"] if c is not ap]
    assert agents, "the pod has no agent container"
    listen_port = port_of(cfg["server"]["listen"])
    upstreams = {u["name"] for u in cfg["upstream"]}
    injected = {Path(u["inject_value_file"]).name for u in cfg["upstream"] if u.get("inject_value_file")}
    for agent in agents:
        env = {e["name"]: e for e in agent.get("env", [])}
        bases = [e["value"] for e in env.values() if "value" in e and e["value"].startswith("http")]
        assert bases, f"{agent['name']} has no base URL pointing at the sidecar"
        for url in bases:
            u = urllib.parse.urlsplit(url)
            assert (u.hostname, u.port) == ("127.0.0.1", listen_port), f"{url} does not go through the sidecar"
            first = u.path.strip("/").split("/")[0]
            assert first == "" or first in upstreams, f"{url}: no upstream named {first!r}"
        assert any(urllib.parse.urlsplit(b).path.strip("/") in upstreams for b in bases)
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] not in injected, f"{agent['name']} gets the upstream credential {ref['key']}"
        for m in agent.get("volumeMounts", []):
            assert not m["mountPath"].startswith("/var/run/secrets/approvalplane")


# --------------------------------------------------------------------------
# observability: names the server exports
# --------------------------------------------------------------------------

# Names Prometheus itself adds to every scrape target.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

OBS_RULES = """\
package approvalplane

allow contains {"id": "read", "reason": "reads pass"} if {
	input.request.method == "GET"
	not input.request.path == "/denied"
}

deny contains {"id": "denied", "reason": "never"} if input.request.path == "/denied"

approval contains {"id": "refund", "reason": "needs a person", "route": "finance",
	"risk": "high", "action": "refund", "escalate_after": "1s", "expires_after": "60s"} if {
	input.request.method == "POST"
	input.request.path == "/refund"
}

approval contains {"id": "short", "reason": "expires fast", "route": "finance",
	"risk": "low", "action": "short", "expires_after": "1s"} if {
	input.request.method == "POST"
	input.request.path == "/short"
}
"""


def exported_metrics(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Sample names the server exports (by its TYPE lines) and the label names
    seen on each."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total", "_created"], "gauge": [""],
                "histogram": ["_bucket", "_count", "_sum", "_created"], "summary": ["_count", "_sum", ""],
                "info": ["_info"], "stateset": [""], "unknown": [""],
                "gaugehistogram": ["_bucket", "_gcount", "_gsum"]}
    for fam in text_string_to_metric_families(text):
        for suf in suffixes[fam.type]:
            names.add(fam.name + suf)
        for s in fam.samples:
            names.add(s.name)
            labels.setdefault(s.name, set()).update(k for k in s.labels if k != "le")
    return names, labels


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\b(approvalplane_[a-z0-9_]+)\b", text))


def selectors(text: str) -> list[tuple[str, set[str]]]:
    """(metric, label names) of every `metric{...}` selector in a PromQL text."""
    out = []
    for m in re.finditer(r"\b([a-z_][a-z0-9_]*)\{([^}]*)\}", text):
        names = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        out.append((m.group(1), names))
    return out


def strings_in(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings_in(v)


def test_alerts_and_dashboard_use_only_exported_metrics(approvalplane, fake_upstream):
    up = fake_upstream()
    dead = fake_upstream(name="dead")
    dead_url = dead.url
    dead.stop()  # nothing listens there any more: forwards fail to connect
    ap = approvalplane(
        {
            "upstream": [{"name": "echo", "url": up.url}, {"name": "gone", "url": dead_url,
                                                           "connect_timeout": "2s"}],
            "agent": [{"id": "bot", "token_env": "BOT_TOKEN"}],
            "approver": [{"id": "alice", "token_env": "ALICE_TOKEN"}, {"id": "carol", "token_env": "CAROL_TOKEN"}],
            "routes": {"finance": {"approvers": ["alice"], "escalate_to": "leads"},
                       "leads": {"approvers": ["carol"]}},
            "audit": {"path": "audit", "checkpoint_interval": "1s"},
        },
        rules={"main.rego": OBS_RULES},
        secrets={"BOT_TOKEN": "bot-token", "ALICE_TOKEN": "alice-token", "CAROL_TOKEN": "carol-token"},
    )
    s = requests.Session()
    s.headers["Authorization"] = "Bearer bot-token"
    # allowed, denied, failed forward, held -> approved, escalated, expired
    assert s.get(ap.proxy_url + "/echo/ok", timeout=HTTP_TIMEOUT).status_code == 200
    assert s.get(ap.proxy_url + "/echo/denied", timeout=HTTP_TIMEOUT).status_code == 403
    assert s.get(ap.proxy_url + "/gone/x", timeout=HTTP_TIMEOUT).status_code == 502
    r = s.post(ap.proxy_url + "/echo/refund", data=b"a=1", headers={"Prefer": "wait=0"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 409, r.text
    refund_id = r.json()["error"]["approval_id"]
    r = s.post(ap.proxy_url + "/echo/short", data=b"a=1", headers={"Prefer": "wait=0"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 409, r.text
    admin = ap.admin("alice-token")
    # Escalation at 1s, expiry at 1s (timers run on the wall clock).
    time.sleep(2.5)
    admin.approve(refund_id)
    assert s.post(ap.proxy_url + "/echo/refund", data=b"a=1", timeout=HTTP_TIMEOUT).status_code == 200

    resp = requests.get(ap.control_url + "/metrics", headers={"Accept": "application/openmetrics-text"},
                        timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text"), resp.headers
    names, labels = exported_metrics(resp.text)

    # the alert rules
    (alerts,) = load_yaml_docs(OBS / "alerts.yaml")
    exprs = []
    for group in alerts["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert rule.get("alert") and rule.get("expr"), f"incomplete rule: {rule}"
            assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), rule["alert"]
            assert rule.get("annotations", {}).get("summary"), rule["alert"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]
            exprs.append((f"alert {rule['alert']}", rule["expr"]))
    alert_text = " ".join(e for _, e in exprs)
    for needed in ("approvalplane_audit_checkpoint_age_seconds", "approvalplane_escalations_total",
                   "approvalplane_upstream_errors_total", "approvalplane_notifier_errors_total",
                   "approvalplane_audit_healthy"):
        assert needed in alert_text, f"no alert uses {needed}"

    # the dashboard
    dash = json.loads((OBS / "grafana-dashboard.json").read_text())
    assert dash["title"] and dash["panels"]
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            exprs.append((f"panel {p['title']!r}", t["expr"]))
    for v in dash["templating"]["list"]:
        for text in strings_in(v.get("query", "")):
            exprs.append((f"variable {v['name']}", text))

    used: set[str] = set()
    for where, expr in exprs:
        for name in referenced(expr):
            used.add(name)
            assert name in names, f"{where} uses {name}, which the server does not export"
        for metric, label_names in selectors(expr):
            if metric in PROMETHEUS_SYNTHETIC:
                continue
            assert metric in names, f"{where} selects {metric}, which the server does not export"
            extra = label_names - labels.get(metric, set()) - {"instance", "job"}
            if metric in labels:  # only when the flow produced samples of it
                assert not extra, f"{where}: {metric} has no label(s) {sorted(extra)} " \
                                  f"(it has {sorted(labels[metric])})"
        # Aggregations and label_values() name labels the metrics carry.
        metrics = referenced(expr)
        if metrics and all(m in labels for m in metrics):
            carried = set().union(*(labels[m] for m in metrics)) | {"le", "instance", "job"}
            grouped = {g.strip() for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                       for g in m.group(1).split(",") if g.strip()}
            grouped |= set(re.findall(r"label_values\(\s*[a-z_0-9]+\s*,\s*([a-zA-Z_]+)\s*\)", expr))
            assert grouped <= carried, f"{where} groups by {sorted(grouped - carried)}, which " \
                                       f"{sorted(metrics)} do not carry"
    # The dashboard and the alerts together cover the list.
    for family in ("approvalplane_decisions_total", "approvalplane_pending_approvals",
                   "approvalplane_approval_latency_seconds_bucket", "approvalplane_upstream_latency_seconds_bucket",
                   "approvalplane_upstream_errors_total", "approvalplane_escalations_total",
                   "approvalplane_approvals_ended_total", "approvalplane_notifier_errors_total",
                   "approvalplane_held_requests", "approvalplane_audit_batch_seconds_bucket",
                   "approvalplane_audit_checkpoint_age_seconds"):
        assert family in used, f"neither the dashboard nor the alerts show {family}"
