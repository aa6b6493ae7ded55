"""Command-line arguments of each stack component, for both targets.

The compose file (containers) and local/processes.yaml (native binaries) start the same
programs with the same flags; only the topology's paths and addresses differ. Keeping the
flags here means a flag added for one target cannot be forgotten in the other.

Pure: no I/O.
"""

from __future__ import annotations

from stack.ports import HOST_ROOT
from stack.spec import Service, Spec
from stack.topology import Topology


def collector(spec: Spec, topology: Topology) -> list[str]:
    return [f"--config={topology.config_dir('collector')}/config.yaml"]


def prometheus(spec: Spec, topology: Topology) -> list[str]:
    # Prometheus 3 flags. Retention is not among them: 3.8 deprecated --storage.tsdb.retention.*
    # for the config file's storage.tsdb.retention (prometheus.yml), which a reload applies.
    return [
        f"--config.file={topology.config_dir('prometheus')}/prometheus.yml",
        f"--storage.tsdb.path={topology.data_dir('prometheus')}",
        f"--web.listen-address={topology.listen('prometheus', 'http')}",
        "--web.enable-lifecycle",  # POST /-/reload
        # Still a feature flag in 3.x: without it, scraped exemplars (trace ids) are dropped.
        "--enable-feature=exemplar-storage",
    ]


def alertmanager(spec: Spec, topology: Topology) -> list[str]:
    return [
        f"--config.file={topology.config_dir('alertmanager')}/alertmanager.yml",
        f"--storage.path={topology.data_dir('alertmanager')}",
        f"--web.listen-address={topology.listen('alertmanager', 'http')}",
        "--cluster.listen-address=",  # one instance: no gossip port
    ]


def loki(spec: Spec, topology: Topology) -> list[str]:
    return [f"-config.file={topology.config_dir('loki')}/config.yaml"]


def jaeger(spec: Spec, topology: Topology) -> list[str]:
    return [f"--config={topology.config_dir('jaeger')}/config.yaml"]


# Filesystems that are not disks: left out of the filesystem metrics (and so of the fill alert).
FS_TYPES_EXCLUDE = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tmpfs|tracefs)$"


def node_exporter(spec: Spec, topology: Topology) -> list[str]:
    # The default collectors (cpu, meminfo, loadavg, filesystem, diskstats, netdev, ...). In a
    # container the host's /proc, /sys and / are mounted read-only under HOST_ROOT (compose).
    args = [f"--web.listen-address={topology.listen('node_exporter', 'http')}",
            f"--collector.filesystem.fs-types-exclude={FS_TYPES_EXCLUDE}"]
    if not topology.local:
        args += [f"--path.rootfs={HOST_ROOT}", f"--path.procfs={HOST_ROOT}/proc", f"--path.sysfs={HOST_ROOT}/sys"]
    return args


def blackbox(spec: Spec, topology: Topology) -> list[str]:
    return [f"--config.file={topology.config_dir('blackbox')}/blackbox.yml",
            f"--web.listen-address={topology.listen('blackbox', 'http')}"]


def redis(spec: Spec, topology: Topology) -> list[str]:
    # The backplane carries live messages and short history: nothing worth persisting.
    args = ["--port", str(topology.port("redis", "redis")), "--save", "", "--appendonly", "no"]
    if topology.local:
        args += ["--bind", "127.0.0.1"]
    return args


def server_environment(topology: Topology, service: Service, port: int, jwt_secret_file: str,
                       redis_url: str | None) -> dict[str, str]:
    """The instrumented server's settings (it reads OBSGEN_* variables), for every container target."""
    environment = {
        "OBSGEN_HOST": topology.listen_host,
        "OBSGEN_PORT": str(port),
        "OBSGEN_JWT_SECRET_FILE": jwt_secret_file,
        "OBSGEN_BROKER": "redis" if redis_url else "memory",
        "OBSGEN_SERVICE_NAME": service.name,
        "OBSGEN_TELEMETRY": "true",
    }
    if redis_url:
        environment["OBSGEN_REDIS_URL"] = redis_url
    if service.otlp:
        environment["OBSGEN_OTLP_ENDPOINT"] = topology.url("collector", "otlp_http")
        environment["OBSGEN_LOGS"] = "otlp"
    return environment
