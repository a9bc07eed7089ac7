"""cluster.yaml, checked without a cluster or a network.

Validity is Ray's own: ``prepare_config`` (AWS defaults merged, setup commands merged, node
type bounds filled) then ``validate_config`` (``ray/autoscaler/ray-schema.json`` through
jsonschema, plus Ray's cross-field checks), the steps ``ray up`` runs before it touches AWS.
The exposure rule (nothing binds all interfaces, the dashboard binds 127.0.0.1) is checked
on the raw text and on the config as ``ray up`` would use it, so a key left out of
cluster.yaml cannot bring back a default that opens the dashboard. Every check is also run
against a broken copy, so a check that never fires fails here.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).parent.parent
CLUSTER = ROOT / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
SHARED = "/mnt/shared"
LOOPBACK = {"127.0.0.1", "localhost"}


def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def prepared(cfg: dict | None = None) -> dict:
    """The config as ``ray up`` validates it (before the AWS look-ups)."""
    return prepare_config(copy.deepcopy(raw() if cfg is None else cfg))


def ray_validate(cfg: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(cfg)))


def strings(node) -> list[str]:
    """Every string in a YAML tree, keys included."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def commands(cfg: dict) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    out = [c for k in keys for c in cfg.get(k) or []]
    for node_type in (cfg.get("available_node_types") or {}).values():
        for k in ("initialization_commands", "worker_setup_commands"):
            out += node_type.get(k) or []
    return out


def is_ray_start(cmd: str) -> bool:
    return re.search(r"\bray\s+start\b", cmd) is not None


def is_head_start(cmd: str) -> bool:
    return is_ray_start(cmd) and re.search(r"--head\b", cmd) is not None


def flag_values(cmd: str, flag: str) -> list[str]:
    pattern = rf"(?<![\w-]){re.escape(flag)}(?:=|\s+)(['\"]?)([^\s'\";]+)\1"
    return [m.group(2) for m in re.finditer(pattern, cmd)]


def exposure_problems(cfg: dict, text: str | None = None) -> list[str]:
    """Everything in a cluster config that would listen beyond loopback or open a port."""
    problems = []
    if text is not None and "0.0.0.0" in text:
        problems.append("0.0.0.0 in the file")
    problems += [f"0.0.0.0 in {s!r}" for s in strings(cfg) if "0.0.0.0" in s]
    starts = [c for c in commands(cfg) if is_ray_start(c)]
    heads = [c for c in starts if is_head_start(c)]
    if not heads:
        problems.append("no `ray start --head` command")
    for cmd in heads:
        if "127.0.0.1" not in flag_values(cmd, "--dashboard-host"):
            problems.append(f"head start without --dashboard-host=127.0.0.1: {cmd!r}")
    for cmd in starts:
        hosts = flag_values(cmd, "--dashboard-host")
        problems += [f"dashboard on {h}: {cmd!r}" for h in hosts if h not in LOOPBACK]
        if "--include-dashboard" in cmd and not hosts:
            problems.append(f"--include-dashboard without a loopback host: {cmd!r}")
    for cmd in commands(cfg):
        for flag in ("--host", "--bind", "--listen", "--ip"):
            problems += [
                f"{flag} {h}: {cmd!r}" for h in flag_values(cmd, flag) if h not in LOOPBACK
            ]
        if "--bind_all" in cmd:
            problems.append(f"--bind_all: {cmd!r}")
    rules = (cfg.get("provider", {}).get("security_group") or {}).get("IpPermissions") or []
    for rule in rules:
        if (rule.get("FromPort"), rule.get("ToPort")) != (22, 22):
            problems.append(f"inbound rule beyond SSH: {rule}")
    return problems


def node_types(cfg: dict) -> tuple[dict, dict]:
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    return head, workers


def is_gpu_instance(instance_type: str) -> bool:
    # p* (P3/P4/P5/P6) and g* (G4dn/G5/G6) are the NVIDIA families
    return re.match(r"^[pg]\d", instance_type) is not None


def first(cmds: list[str], pattern: str) -> int:
    hits = [i for i, c in enumerate(cmds) if re.search(pattern, c)]
    assert hits, f"no command matches {pattern!r} in {cmds}"
    return hits[0]


# -- 1. Ray's own validation ------------------------------------------------------------


def test_validates_with_rays_schema_and_validator():
    cfg = raw()
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(cfg, schema)  # the file itself, before Ray merges any defaults
    validate_config(prepared(cfg))  # what `ray up` runs: defaults, merged commands, bounds
    assert cfg["provider"]["type"] == "aws"


def _unknown_key(c):
    c["dashboard_port"] = 8265


def _wrong_type(c):
    c["max_workers"] = "four"


def _unknown_node_key(c):
    c["available_node_types"]["h100"]["instance_type"] = "p5.48xlarge"


def _string_resource(c):
    c["available_node_types"]["h100"]["resources"]["GPU"] = "8"


def _no_resources(c):
    del c["available_node_types"]["h100"]["resources"]


def _missing_head_type(c):
    c["head_node_type"] = "gpu-head"


def _min_over_max(c):
    c["available_node_types"]["h100"]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    "breaks",
    [
        _unknown_key,
        _wrong_type,
        _unknown_node_key,
        _string_resource,
        _no_resources,
        _missing_head_type,
        _min_over_max,
    ],
)
def test_rays_validator_rejects_broken_copies(breaks):
    cfg = raw()
    breaks(cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError)):
        ray_validate(cfg)


# -- 2. exposure ------------------------------------------------------------------------


def test_nothing_binds_all_interfaces_and_dashboard_is_loopback_only():
    text = CLUSTER.read_text()
    assert exposure_problems(raw(), text) == []
    assert exposure_problems(prepared(), None) == []  # after Ray's defaults are merged in
    heads = [c for c in prepared()["head_start_ray_commands"] if is_head_start(c)]
    assert len(heads) == 1
    assert re.search(r"--dashboard-host(=|\s+)127\.0\.0\.1\b", heads[0])


def _head_cmd(c) -> int:
    return first(c["head_start_ray_commands"], r"ray\s+start")


def _all_interfaces(c):
    i = _head_cmd(c)
    c["head_start_ray_commands"][i] = c["head_start_ray_commands"][i].replace(
        "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"
    )


def _ipv6_any(c):
    i = _head_cmd(c)
    c["head_start_ray_commands"][i] = c["head_start_ray_commands"][i].replace(
        "--dashboard-host=127.0.0.1", "--dashboard-host ::"
    )


def _host_dropped(c):
    i = _head_cmd(c)
    c["head_start_ray_commands"][i] = c["head_start_ray_commands"][i].replace(
        "--dashboard-host=127.0.0.1", ""
    )


def _start_commands_dropped(c):
    del c["head_start_ray_commands"]  # Ray's AWS defaults open the dashboard on all hosts


def _worker_dashboard(c):
    c["worker_start_ray_commands"][-1] += " --include-dashboard=true --dashboard-host=10.0.0.5"


def _worker_include_dashboard(c):
    c["worker_start_ray_commands"][-1] += " --include-dashboard=true"


def _tensorboard_everywhere(c):
    c["head_setup_commands"].append("tensorboard --logdir /mnt/shared/runs --bind_all &")


def _open_port(c):
    c["provider"]["security_group"] = {
        "IpPermissions": [
            {
                "FromPort": 8265,
                "ToPort": 8265,
                "IpProtocol": "tcp",
                "IpRanges": [{"CidrIp": "203.0.113.7/32"}],
            }
        ]
    }


@pytest.mark.parametrize(
    "opens",
    [
        _all_interfaces,
        _ipv6_any,
        _host_dropped,
        _start_commands_dropped,
        _worker_dashboard,
        _worker_include_dashboard,
        _tensorboard_everywhere,
        _open_port,
    ],
)
def test_exposure_check_catches_an_opened_copy(opens):
    cfg = raw()
    opens(cfg)
    assert exposure_problems(cfg, yaml.safe_dump(cfg)) or exposure_problems(prepared(cfg))


# -- 3. structure -----------------------------------------------------------------------


def test_head_is_a_cpu_node_that_runs_no_training():
    head, _ = node_types(prepared())
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0  # tasks and actors go to the workers
    assert not is_gpu_instance(head["node_config"]["InstanceType"])
    assert head["max_workers"] == 0


def test_h100_workers_autoscale_within_bounds():
    cfg = prepared()
    _, workers = node_types(cfg)
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    assert gpu, "no worker node type with GPUs"
    for node_type in gpu.values():
        assert is_gpu_instance(node_type["node_config"]["InstanceType"])
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= cfg["max_workers"]
        assert node_type["resources"]["CPU"] > 0
    h100 = [v for v in gpu.values() if v["node_config"]["InstanceType"] == "p5.48xlarge"]
    assert h100 and all(v["resources"]["GPU"] == 8 for v in h100)
    assert sum(v["min_workers"] for v in workers.values()) <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0
    for node_type in cfg["available_node_types"].values():
        assert node_type["node_config"]["ImageId"], "every node type names its AMI"


def test_setup_installs_pinned_torch_before_the_project():
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch==")
    )
    cfg = prepared()  # setup_commands merged into head_ and worker_setup_commands
    for role in ("head_setup_commands", "worker_setup_commands"):
        cmds = cfg[role]
        venv = first(cmds, r"python3\.11 -m venv")
        torch = first(cmds, rf"pip install .*{re.escape(pin)}")
        project = first(cmds, r"pip install .*-e ~/scaling\b")
        assert venv < torch < project, role
    assert first(cfg["head_setup_commands"], r"pip install .*boto3") >= 0  # the autoscaler
    assert raw()["file_mounts"]["~/scaling"] == "."  # the checkout, synced from the repo root


def test_shared_storage_is_mounted_and_the_gpu_configs_point_there():
    cfg = prepared()
    host = cfg["initialization_commands"] + cfg["setup_commands"]
    mount = first(host, rf"\bmount\b.*\s{re.escape(SHARED)}(\s|$)")
    assert "nfs" in host[mount]
    roots = {SHARED} | {
        m.group(1) for c in host for m in re.finditer(rf"ln -s\w* {re.escape(SHARED)} (\S+)", c)
    }
    configs = sorted((ROOT / "jobs" / "configs").glob("gpu-*.yaml"))
    assert configs
    for path in configs:
        run_dir = yaml.safe_load(path.read_text())["run"]["dir"]
        assert any(run_dir.startswith(r + "/") for r in roots), f"{path.name}: {run_dir}"


def test_ray_start_commands_join_the_head_with_token_auth():
    cfg = prepared()
    head = [c for c in cfg["head_start_ray_commands"] if is_head_start(c)][0]
    assert "--port=6379" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = [c for c in cfg["worker_start_ray_commands"] if is_ray_start(c)][0]
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for role in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert cfg[role][0] == "ray stop"
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmd
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# -- 3. node-local disk and EFA ---------------------------------------------------------

NVME = "/mnt/nvme"


def test_nvme_mount_is_a_no_op_on_a_node_without_instance_store(tmp_path):
    """The instance-store commands run on every node: on one without instance store (this
    machine, like the head) they exit 0 and mount or create nothing."""
    import subprocess

    cmds = [c for c in prepared()["initialization_commands"] if NVME in c]
    assert len(cmds) == 2 and "mdadm --create" in cmds[0] and "mount /dev/md0 " + NVME in cmds[0]
    disks = subprocess.run(["lsblk", "-dno", "MODEL"], capture_output=True, text=True).stdout
    if "Instance Storage" in disks or Path(NVME).exists():
        pytest.skip("this machine has instance store or /mnt/nvme: not the head's case")
    for c in cmds:
        p = subprocess.run(["bash", "-c", c], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (c, p.stderr)
    assert not Path(NVME).exists() and not Path("/dev/md0").exists()


def test_gpu_configs_stage_shards_and_checkpoints_on_the_nvme():
    configs = sorted((ROOT / "jobs" / "configs").glob("*gpu*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        assert cfg["data"]["stage_dir"].startswith(NVME + "/"), path.name
        assert cfg["train"]["checkpoint_stage_dir"].startswith(NVME + "/"), path.name


def test_h100_workers_have_efa_on_every_network_card_in_one_placement_group():
    cfg = prepared()
    node = cfg["available_node_types"]["h100"]["node_config"]
    nics = node["NetworkInterfaces"]
    assert sorted(n["NetworkCardIndex"] for n in nics) == list(range(32))  # p5.48xlarge
    assert all(n["InterfaceType"] == "efa" for n in nics)
    assert [n["DeviceIndex"] for n in nics if n["NetworkCardIndex"] == 0] == [0]
    assert {n["DeviceIndex"] for n in nics if n["NetworkCardIndex"]} == {1}
    assert len({n["SubnetId"] for n in nics}) == 1 and len({tuple(n["Groups"]) for n in nics}) == 1
    assert node["Placement"]["GroupName"]
    head = cfg["available_node_types"]["head"]["node_config"]
    assert head["SecurityGroupIds"] == nics[0]["Groups"]  # head and workers talk freely
    start = [c for c in cfg["worker_start_ray_commands"] if is_ray_start(c)][0]
    assert re.search(r"FI_PROVIDER=efa.*ray start", start, re.S)
    assert "ofi-nccl" in start  # NCCL's EFA plugin on the library path
