"""The certificates the whole program issues under mocks, in a real etcd, with the real step.

Rung 2 meets rung 4: the master's PKI bundle (exactly the secret stdin of `master-pki`) is unpacked
into the real etcd's PKI directory, etcd starts with the rendered settings, and the rendered
`master-flannel-network` step runs against it, RBAC check included.
"""

from __future__ import annotations

import json

import pytest

from components import offline
from tests.etcd_real import RELEASES, EtcdRelease, real_etcd, require_real_etcd
from tests.test_pki import bundle


@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
def test_program_certificates_run_etcd_and_the_flannel_step(dev: offline.Run, release: EtcdRelease) -> None:
    require_real_etcd(release)
    files = bundle(dev, "master")
    step = next(s for s in dev.cluster.steps if s.name == "master-flannel-network")
    with real_etcd(files, release=release) as etcd:
        result = etcd.run_script(step.script)
        # The test etcds predate the RBAC fixes: the fence probe must say so (tests/test_etcd_real.py
        # checks each bypass); everything before it (RBAC, auth, the config) is in place.
        assert result.returncode == 1 and "GHSA-rfx7-8w68-q57q" in result.stderr, result.stderr
        assert "etcd auth enabled" in result.stderr
        flannel = etcd.etcdctl("get", "/coreos.com/network/config", "--print-value-only", identity="flannel-etcd")
        assert flannel.returncode == 0 and json.loads(flannel.stdout)["Backend"]["Type"] == "vxlan"
        for args in (("put", "/registry/x", "1"), ("put", "/coreos.com/network/config", "{}")):
            denied = etcd.etcdctl(*args, identity="flannel-etcd")
            assert denied.returncode != 0 and "permission denied" in denied.stderr
        allowed = etcd.etcdctl("put", "/registry/x", "1", identity="apiserver-etcd-client")
        assert allowed.returncode == 0, allowed.stderr
        anonymous = etcd.etcdctl("get", "/registry/x", identity=None)
        assert anonymous.returncode != 0
