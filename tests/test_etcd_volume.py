"""etcd's data volume: the rendered kube-ec2-etcd-data script run for real against a block device.

A loop device stands in for the EBS volume. Each run happens in a fresh private mount namespace
whose /dev is a tmpfs holding only that device (plus null/zero/urandom) and the
/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_<id> link a Nitro instance has for it, with a temp
directory over etcd's data directory. Real blkid, mkfs.ext4, mount and findmnt run. A second
namespace is a replaced master: it must find the data the first one left. Needs root.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components import render
from tests.conftest import dev_settings, require_tool

VOLUME_ID = "vol-0123456789abcdef0"
SERIAL_LINK = "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
"""What udev names a Nitro instance's EBS disk by (its serial is the volume id without the dash)."""
SCRIPT = "/usr/local/sbin/kube-ec2-etcd-data"
DATA_DIR = "/var/lib/etcd"
"""etcd.conf.yml's data-dir (checked against the rendered config below)."""


def master_files() -> dict[str, tuple[str, str]]:
    s = dev_settings()
    return render.host_files(s, s.master)


@dataclass
class Disk:
    image: Path
    device: str
    var_lib: Path
    """What the namespace sees at /var/lib (the root volume's): etcd's data must never land in it."""

    def run(
        self, env: dict[str, str] | None = None, link: bool = True, fast_sleep: bool = False, times: int = 1
    ) -> subprocess.CompletedProcess[str]:
        """The rendered script, `times` times, in a fresh mount namespace (a fresh boot of the master)."""
        script = master_files()[SCRIPT][1]
        work = Path(tempfile.mkdtemp(prefix="etcd-data-", dir=self.image.parent))
        (work / "script").write_text(script)
        (work / "bash_env").write_text("sleep() { :; }\n" if fast_sleep else "")
        name = os.path.basename(self.device)
        setup = f"""set -e
mount -t tmpfs tmpfs {work}/dev -o mode=755 2>/dev/null || {{ mkdir -p {work}/dev; mount -t tmpfs tmpfs {work}/dev -o mode=755; }}
cp -a /dev/null /dev/zero /dev/urandom /dev/random {self.device} {work}/dev/
mkdir -p {work}/dev/disk/by-id
{"ln -s ../../" + name + " " + str(work) + "/dev/disk/by-id/" + SERIAL_LINK if link else ":"}
mount --bind {work}/dev /dev
mount --bind {self.var_lib} /var/lib
export BASH_ENV={work}/bash_env
for _ in $(seq {times}); do bash {work}/script; done
"""
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ETCD_VOLUME_ID": VOLUME_ID, **(env or {})}
        argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", setup]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environment)

    def inspect(self, command: str) -> str:
        """Mount the device read-only in a throw-away namespace and run a shell command in it ($M)."""
        mnt = tempfile.mkdtemp(dir=self.image.parent)
        script = f"set -e; mount -o ro {self.device} {mnt}; M={mnt}; {command}"
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the etcd volume tests need root (loop devices, mount namespaces)")
        pytest.skip("needs root")
    for tool in ("losetup", "mkfs.ext4", "blkid", "findmnt", "mountpoint", "unshare"):
        require_tool(tool)
    image = tmp_path / "volume.img"
    image.write_bytes(b"")
    os.truncate(image, 64 * 1024 * 1024)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True).stdout.strip()
    var_lib = tmp_path / "root-volume-var-lib"
    (var_lib / "etcd").mkdir(parents=True)
    try:
        yield Disk(image, device, var_lib)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=20)


def test_mount_path_is_etcds_data_dir_and_etcd_requires_it() -> None:
    files = master_files()
    config = yaml.safe_load(files["/etc/etcd/etcd.conf.yml"][1])
    assert config["data-dir"] == DATA_DIR
    unit = files["/etc/systemd/system/etcd.service"][1].splitlines()
    assert "Requires=etcd-data.service" in unit
    assert any(line.startswith("After=") and "etcd-data.service" in line for line in unit)
    assert f"AssertPathIsMountPoint={DATA_DIR}" in unit  # never on the root volume
    data_unit = files["/etc/systemd/system/etcd-data.service"][1].splitlines()
    assert f"ExecStart={SCRIPT}" in data_unit and "EnvironmentFile=/etc/kube-ec2/etcd-storage.env" in data_unit
    assert "Type=oneshot" in data_unit and "RemainAfterExit=yes" in data_unit


def test_first_boot_formats_a_blank_volume_and_a_replaced_master_keeps_its_data(disk: Disk) -> None:
    first = disk.run()
    assert first.returncode == 0, first.stderr
    assert "has no filesystem: making one" in first.stderr
    assert disk.inspect("blkid -o value -s TYPE " + disk.device).strip() == "ext4"
    # What etcd would leave behind, written through a mount the way etcd sees it.
    subprocess.run(["unshare", "--mount", "bash", "-c",
                    f"mount {disk.device} {DATA_DIR} && mkdir -p {DATA_DIR}/member && echo kept > {DATA_DIR}/member/marker"],
                   check=True, timeout=30)
    second = disk.run()  # the replaced master: same volume, fresh instance
    assert second.returncode == 0, second.stderr
    assert "making one" not in second.stderr and "mounted at /var/lib/etcd" in second.stderr
    assert disk.inspect('cat "$M/member/marker"').strip() == "kept"
    assert disk.inspect('stat -c %a "$M"').strip() == "700"
    assert list((disk.var_lib / "etcd").iterdir()) == []  # nothing landed on the root volume


def test_running_again_on_the_mounted_volume_changes_nothing(disk: Disk) -> None:
    result = disk.run(times=2)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("making one") == 1
    assert "already mounted at /var/lib/etcd" in result.stderr


def test_a_volume_with_any_other_signature_is_never_formatted(disk: Disk) -> None:
    subprocess.run(["mkswap", disk.device], capture_output=True, check=True)
    result = disk.run()
    assert result.returncode != 0
    assert "making one" not in result.stderr
    assert subprocess.run(["blkid", "-o", "value", "-s", "TYPE", disk.device], capture_output=True, text=True).stdout.strip() == "swap"


def test_missing_volume_fails_after_its_bound_and_names_it(disk: Disk) -> None:
    result = disk.run(link=False, fast_sleep=True)
    assert result.returncode == 1
    assert f"volume {VOLUME_ID} did not appear after 600s" in result.stderr
    assert SERIAL_LINK in result.stderr
    assert list((disk.var_lib / "etcd").iterdir()) == []


def test_rejects_a_value_that_is_not_a_volume_id(disk: Disk) -> None:
    result = disk.run(env={"ETCD_VOLUME_ID": "vol-0123; rm -rf /"})
    assert result.returncode == 1 and "is not a volume id" in result.stderr
    unset = disk.run(env={"ETCD_VOLUME_ID": ""})
    assert unset.returncode != 0 and "ETCD_VOLUME_ID is not set" in unset.stderr
