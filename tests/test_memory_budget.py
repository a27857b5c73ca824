"""The default training budget: the smaller of the node's MemAvailable and the container's cgroup headroom."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_mlops.blocks.retrain_policy import TrainingBudget, available_memory, cgroup_headroom

GIB = 2**30


def fake_host(tmp_path: Path, *, node_gib: float, cgroup_line: str = "0::/\n") -> dict[str, str]:
    """A /proc/meminfo, a /proc/self/cgroup and an empty cgroup mount under tmp_path."""
    (tmp_path / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {int(node_gib * 2**20)} kB\n")
    (tmp_path / "cgroup").write_text(cgroup_line)
    (tmp_path / "fs").mkdir()
    return {"meminfo": str(tmp_path / "meminfo"), "cgroup_root": str(tmp_path / "fs"),
            "self_cgroup": str(tmp_path / "cgroup")}


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_a_v2_pod_limit_caps_the_node_memory(tmp_path):
    paths = fake_host(tmp_path, node_gib=64)
    # A 12 GiB pod limit (deployments/prefect.yaml), 3 GiB in use of which 1 GiB is droppable page cache.
    write(Path(paths["cgroup_root"]), memory_max=str(12 * GIB), memory_current=str(3 * GIB),
          memory_stat=f"anon {2 * GIB}\nfile {GIB}\ninactive_file {GIB}\n")
    assert available_memory(**paths) == 10 * GIB
    assert TrainingBudget().memory_limit(available_memory(**paths)) == 5 * GIB
    # A node with less free memory than the pod's headroom: the node's figure.
    assert available_memory(**{**paths, "meminfo": str(write_meminfo(tmp_path, 6))}) == 6 * GIB


def write_meminfo(tmp_path: Path, gib: int) -> Path:
    path = tmp_path / "meminfo-small"
    path.write_text(f"MemAvailable: {gib * 2**20} kB\n")
    return path


def test_no_limit_means_the_node_memory(tmp_path):
    paths = fake_host(tmp_path, node_gib=20)
    write(Path(paths["cgroup_root"]), memory_max="max\n", memory_current=str(5 * GIB))
    assert cgroup_headroom(paths["cgroup_root"], paths["self_cgroup"]) is None
    assert available_memory(**paths) == 20 * GIB


def test_a_v1_limit_in_the_process_cgroup_or_an_ancestor_counts(tmp_path):
    paths = fake_host(tmp_path, node_gib=32, cgroup_line="4:memory:/kubepods/pod1/ctr\n0::/\n")
    memory = Path(paths["cgroup_root"]) / "memory"
    unlimited = str(9223372036854771712)  # v1's "no limit"
    write(memory, memory_limit_in_bytes=unlimited, memory_usage_in_bytes=str(20 * GIB))
    write(memory / "kubepods" / "pod1", memory_limit_in_bytes=str(8 * GIB), memory_usage_in_bytes=str(6 * GIB),
          memory_stat=f"total_inactive_file {GIB}\n")
    write(memory / "kubepods" / "pod1" / "ctr", memory_limit_in_bytes=unlimited,
          memory_usage_in_bytes=str(5 * GIB))
    # The pod's 8 GiB, 6 GiB used less 1 GiB of inactive cache: 3 GiB left, though the node has 32.
    assert cgroup_headroom(paths["cgroup_root"], paths["self_cgroup"]) == 3 * GIB
    assert available_memory(**paths) == 3 * GIB


def test_nothing_readable_is_a_cautious_guess(tmp_path):
    missing = str(tmp_path / "none")
    assert available_memory(meminfo=missing, cgroup_root=missing, self_cgroup=missing) == 4 * GIB


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="Linux only")
def test_this_machine_reports_a_positive_figure():
    assert 0 < available_memory() <= available_memory(cgroup_root="/nonexistent")
