"""The image's HEALTHCHECK asks each command where it serves /healthz, and a command that
serves none (a worker without CDRFLOW_WORKER_PORT, migrate) is not reported unhealthy."""

from __future__ import annotations

import pytest

from cdrflow.healthcheck import health_url

ENTRY = ["/opt/cdrflow/bin/python", "/opt/cdrflow/bin/cdrflow"]


@pytest.mark.parametrize(
    ("args", "environ", "url"),
    [
        (["ingress"], {}, "http://127.0.0.1:8080/healthz"),
        (["ingress", "--host", "10.0.0.5", "--port", "9000"], {}, "http://127.0.0.1:9000/healthz"),
        (["worker"], {"CDRFLOW_WORKER_PORT": "9101"}, "http://127.0.0.1:9101/healthz"),
        (["worker"], {}, None),
        (["worker"], {"CDRFLOW_WORKER_PORT": "0"}, None),
        (["migrate"], {"CDRFLOW_WORKER_PORT": "9101"}, None),
        (["drain-spool"], {}, None),
    ],
)
def test_where_each_command_is_asked(
    args: list[str], environ: dict[str, str], url: str | None
) -> None:
    assert health_url([*ENTRY, *args], environ) == url
