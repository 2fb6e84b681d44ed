#!/usr/bin/env python3
"""Checks compose.yaml and the Dockerfile without a Docker engine (none runs where the tests do).

Usage: .venv/bin/python scripts/check-compose.py PAYSTREAM_BINARY

- compose.yaml parses and validates against the compose-spec JSON schema, vendored as
  deploy/compose-spec.json (github.com/compose-spec/compose-spec, schema/compose-spec.json at
  commit 170098ba07d9, Apache-2.0);
- every service it depends on exists; `service_healthy` only on services with a health check,
  `service_completed_successfully` only on one-shot services; every long-running service has a
  health check;
- every file it mounts exists; every named volume is declared;
- the services built from this repository (the paystream image): each environment variable is one
  that common::config::Config reads (`env = "…"`), each command is a real subcommand of the
  binary (`paystream <command> --help` exits 0), each is scraped by deploy/prometheus.yml;
- the NATS cluster: 3 nodes of the official image, on the nats-server version the tests run
  (scripts/setup.sh), whose routes (in the mounted config) are exactly those nodes, all listed in
  PAYSTREAM_NATS_URL, with PAYSTREAM_REPLICAS=3;
- no NATS password in any environment: each is a compose secret read from a file in ./secrets/
  (ignored by git and by the image build); the NATS nodes mount every variable nats/accounts.conf
  reads as a secret and run through deploy/nats/secrets-env.sh; a paystream service with a NATS user
  reads its password from PAYSTREAM_NATS_PASSWORD_FILE, a secret it mounts;
- the reconciler keeps its data dir (reports, settlement files) in a named volume;
- the Dockerfile is multi-stage, its build strips the binary, its runtime stage runs as a non-root
  user, copies one binary and carries the OCI labels (version and license those of Cargo.toml).

Exits 1 listing every problem found.
"""

import json
import pathlib
import re
import subprocess
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Variables read by the containers' tools, not by paystream's Config.
NON_CONFIG_ENV = {"RUST_LOG"}


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def config_env_vars():
    """Every `env = "…"` of common/src/config.rs: the variables Config reads."""
    text = (ROOT / "common/src/config.rs").read_text(encoding="utf-8")
    names = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', text))
    if len(names) < 10:
        raise SystemExit(f"found only {len(names)} env names in config.rs: parser out of date?")
    return names


def as_list(command):
    if command is None:
        return []
    if isinstance(command, str):
        return command.split()
    return [str(c) for c in command]


def env_names(environment):
    if environment is None:
        return set()
    if isinstance(environment, dict):
        return set(environment)
    return {e.split("=", 1)[0] for e in environment}


def env_dict(environment):
    if isinstance(environment, dict):
        return {k: "" if v is None else str(v) for k, v in environment.items()}
    return dict(e.split("=", 1) if "=" in e else (e, "") for e in environment or [])


def image_version(image):
    tag = image.rsplit(":", 1)[1] if ":" in image else ""
    m = re.match(r"(\d+)\.(\d+)", tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check(binary):
    problems = []
    compose = load_yaml(ROOT / "compose.yaml")
    schema = json.loads((ROOT / "deploy/compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    for err in sorted(validator.iter_errors(compose), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in err.path) or "(top)"
        problems.append(f"schema: {where}: {err.message}")

    services = compose.get("services", {})
    volumes = set((compose.get("volumes") or {}).keys())
    known_env = config_env_vars() | NON_CONFIG_ENV
    prom = load_yaml(ROOT / "deploy/prometheus.yml")
    scraped = set()
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            scraped.update(sd.get("names", []))
        for sc in job.get("static_configs", []):
            scraped.update(t.split(":")[0] for t in sc.get("targets", []))
    commands_checked = set()
    paystream_services = []

    for name, svc in services.items():
        one_shot = svc.get("restart") == "no"
        if not one_shot and "healthcheck" not in svc:
            problems.append(f"{name}: a long-running service needs a healthcheck")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
            if cond == "service_completed_successfully" and services[dep].get("restart") != "no":
                problems.append(f"{name}: waits for {dep} to complete, which is not one-shot")
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                if not (ROOT / source).exists():
                    problems.append(f"{name}: mounts {source}, which does not exist")
            elif source not in volumes:
                problems.append(f"{name}: named volume {source} is not declared")

        if svc.get("build") in (".", "./") or (svc.get("build") or {}) == {"context": "."}:
            paystream_services.append(name)
            for var in sorted(env_names(svc.get("environment")) - known_env):
                problems.append(f"{name}: sets {var}, which paystream's Config does not read")
            cmd = as_list(svc.get("command"))
            key = tuple(cmd[:2]) if cmd[:1] == ["serve"] else tuple(cmd[:1])
            if not cmd:
                problems.append(f"{name}: no command (the image has no default role)")
            elif key not in commands_checked:
                run = subprocess.run([binary, *key, "--help"], capture_output=True, text=True)
                if run.returncode != 0:
                    problems.append(f"{name}: `paystream {' '.join(key)}` is not a command: {run.stderr.strip()}")
                commands_checked.add(key)
            if not one_shot and name not in scraped:
                problems.append(f"{name}: not scraped by deploy/prometheus.yml")

    for name in scraped - set(services) - {"localhost"}:
        problems.append(f"deploy/prometheus.yml scrapes {name}, which is not a compose service")

    nats = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    if len(nats) != 3:
        problems.append(f"expected a 3-node NATS cluster, found {sorted(nats)}")
    tested = re.search(r"^NATS_SERVER_VERSION=(\S+)$",
                       (ROOT / "scripts/setup.sh").read_text(encoding="utf-8"), re.M).group(1)
    for name, svc in nats.items():
        version = image_version(svc["image"])
        if version is None or version < (2, 11):
            problems.append(f"{name}: {svc['image']}: paystream needs nats-server 2.11 or newer")
        tag = str(svc["image"]).split(":", 1)[1]
        if tag.split("-")[0] != tested:
            problems.append(f"{name}: {svc['image']}: the tests run nats-server {tested}")
        if env_dict(svc.get("environment")).get("SERVER_NAME") != name:
            problems.append(f"{name}: SERVER_NAME must be the service name")
        cmd = as_list(svc.get("command"))
        conf_mounts = [v for v in svc.get("volumes", []) if isinstance(v, str)
                       and v.startswith("./deploy/nats/cluster.conf:")]
        target = conf_mounts[0].split(":")[1] if conf_mounts else None
        if cmd[:1] != ["nats-server"] or target is None or target not in cmd:
            problems.append(f"{name}: must run nats-server with the mounted deploy/nats/cluster.conf")
    conf = (ROOT / "deploy/nats/cluster.conf").read_text(encoding="utf-8")
    routes = set(re.findall(r"nats-route://([a-z0-9-]+):6222", conf))
    if routes != set(nats):
        problems.append(f"deploy/nats/cluster.conf routes {sorted(routes)} ≠ NATS services {sorted(nats)}")
    for name in paystream_services:
        env = env_dict(services[name].get("environment"))
        if "PAYSTREAM_NATS_URL" in env:
            urls = set(re.findall(r"nats://([a-z0-9-]+):4222", env["PAYSTREAM_NATS_URL"]))
            if urls != set(nats):
                problems.append(f"{name}: PAYSTREAM_NATS_URL names {sorted(urls)}, not every NATS node")
            if env.get("PAYSTREAM_REPLICAS") != "3":
                problems.append(f"{name}: PAYSTREAM_REPLICAS must be 3 on the 3-node cluster")

    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    problems += check_secrets(compose, nats, paystream_services)
    problems += check_reconciler_volume(services, paystream_services, dockerfile)
    problems += check_dockerfile(dockerfile)
    return problems, paystream_services


def mounted_secrets(svc):
    """source → path in the container, for each secret a service mounts."""
    out = {}
    for sec in svc.get("secrets") or []:
        if isinstance(sec, str):
            out[sec] = f"/run/secrets/{sec}"
        else:
            target = sec.get("target") or sec["source"]
            out[sec["source"]] = target if target.startswith("/") else f"/run/secrets/{target}"
    return out


def check_secrets(compose, nats, paystream_services):
    problems = []
    services = compose.get("services", {})
    declared = compose.get("secrets") or {}
    for name, spec in declared.items():
        source = (spec or {}).get("file", "")
        if not source.startswith("./secrets/"):
            problems.append(f"secret {name}: expected a file in ./secrets/, found {spec}")
    ignored = {
        ".gitignore": {"/secrets", "secrets", "/secrets/", "secrets/"},
        ".dockerignore": {"secrets", "/secrets", "secrets/"},
    }
    for file, names in ignored.items():
        lines = {l.strip() for l in (ROOT / file).read_text(encoding="utf-8").splitlines()}
        if declared and not lines & names:
            problems.append(f"{file} must leave out secrets/ (the password files)")
    for name, svc in services.items():
        for source in mounted_secrets(svc):
            if source not in declared:
                problems.append(f"{name}: mounts secret {source}, which is not declared")
        for var, value in env_dict(svc.get("environment")).items():
            if re.search(r"NATS_\w*PASSWORD", value) or var.endswith("NATS_PASSWORD") or (
                    var.startswith("NATS_") and var.endswith("_PASSWORD")):
                problems.append(f"{name}: {var}: NATS passwords come from secrets, not the environment")

    accounts = (ROOT / "nats/accounts.conf").read_text(encoding="utf-8")
    wanted = set(re.findall(r"\$(NATS_[A-Z0-9_]+_PASSWORD)", accounts))
    for name, svc in nats.items():
        targets = {path.rsplit("/", 1)[1] for path in mounted_secrets(svc).values()
                   if path.startswith("/run/secrets/")}
        for var in sorted(wanted - targets):
            problems.append(f"{name}: nats/accounts.conf reads ${var}: mount a secret with target {var}")
        entry = as_list(svc.get("entrypoint"))
        script = [v.split(":")[1] for v in svc.get("volumes", []) if isinstance(v, str)
                  and v.startswith("./deploy/nats/secrets-env.sh:")]
        if not script or script[0] not in entry:
            problems.append(f"{name}: the entrypoint must be the mounted deploy/nats/secrets-env.sh")

    for name in paystream_services:
        svc = services[name]
        env = env_dict(svc.get("environment"))
        if "PAYSTREAM_NATS_USER" not in env:
            continue
        path = env.get("PAYSTREAM_NATS_PASSWORD_FILE")
        if path is None:
            problems.append(f"{name}: a NATS user without PAYSTREAM_NATS_PASSWORD_FILE")
        elif path not in mounted_secrets(svc).values():
            problems.append(f"{name}: PAYSTREAM_NATS_PASSWORD_FILE={path} is no secret it mounts")
    return problems


def dockerfile_env(text, key):
    m = re.search(rf"\b{key}=(\S+)", text)
    return m.group(1) if m else None


def check_reconciler_volume(services, paystream_services, dockerfile):
    problems = []
    for name in paystream_services:
        svc = services[name]
        if as_list(svc.get("command"))[:2] != ["serve", "reconciler"]:
            continue
        data_dir = env_dict(svc.get("environment")).get("PAYSTREAM_DATA_DIR") or dockerfile_env(
            dockerfile, "PAYSTREAM_DATA_DIR")
        named = [v for v in svc.get("volumes", []) if isinstance(v, str)
                 and not v.startswith((".", "/")) and v.split(":")[1] == data_dir]
        if not named:
            problems.append(f"{name}: its reports in {data_dir} need a named volume there")
    return problems


def instructions(text):
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def check_dockerfile(text):
    problems = []
    lines = instructions(text)
    froms = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    if len(froms) < 2:
        return ["Dockerfile: not multi-stage"]
    build, runtime = lines[froms[-2]:froms[-1]], lines[froms[-1]:]
    if not any("CARGO_PROFILE_RELEASE_STRIP=symbols" in l or re.search(r"\bstrip\b", l)
               for l in build if l.upper().startswith(("ENV ", "RUN "))):
        problems.append("Dockerfile: the build must strip the binary (CARGO_PROFILE_RELEASE_STRIP=symbols)")
    users = [l.split()[1] for l in runtime if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the runtime stage must switch to a non-root USER")
    copies = [l for l in runtime if l.upper().startswith("COPY ")]
    if len(copies) != 1 or "--from=" not in copies[0]:
        problems.append(f"Dockerfile: the runtime stage should copy one binary from the build: {copies}")
    if not any(l.upper().startswith("ENTRYPOINT") and "paystream" in l for l in runtime):
        problems.append("Dockerfile: the entrypoint should be paystream")
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"',
                             " ".join(l for l in runtime if l.upper().startswith("LABEL "))))
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        if f"org.opencontainers.image.{key}" not in labels:
            problems.append(f"Dockerfile: no org.opencontainers.image.{key} label")
    cargo = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    license_ = re.search(r'^license = "([^"]+)"', cargo, re.M).group(1)
    args = dict(re.findall(r"^ARG (\w+)=(\S*)", "\n".join(runtime), re.M))
    if labels.get("org.opencontainers.image.version") != "${VERSION}" or args.get("VERSION") != version:
        problems.append(f"Dockerfile: the version label must be ARG VERSION, defaulting to {version}")
    if labels.get("org.opencontainers.image.licenses") != license_:
        problems.append(f"Dockerfile: the licenses label must be Cargo.toml's {license_}")
    return problems


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    problems, services = check(sys.argv[1])
    for p in problems:
        print(f"check-compose: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-compose: compose.yaml ok ({len(services)} paystream services checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
