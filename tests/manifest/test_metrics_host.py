"""The manifest service's /metrics on every interface (``metrics_host =
0.0.0.0``, what a container needs to be scraped), and a metrics host that
is not a bare host refused naming the setting."""

from __future__ import annotations

import pytest

from fleetsuit.settings import ConfigError
from services.manifest.config import ManifestConfig
from services.manifest.server import serve
from tests.support.metrics import answers_elsewhere
from tests.support.ports import free_port


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("0.0.0.0:9103", "metrics_host='0.0.0.0:9103' is not an IP address or a host name (a host only"),
        ("", "metrics_host must not be empty"),
        ("two words", "metrics_host"),
    ],
)
def test_a_metrics_host_that_is_not_a_host_is_refused(value: str, named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        ManifestConfig(metrics_host=value).validate()
    assert named in str(refused.value)


@pytest.mark.parametrize("value", ["0.0.0.0", "::", "127.0.0.1", "fleetsuit-0.fleetsuit"])
def test_every_interface_an_address_or_a_name_is_accepted(value: str) -> None:
    assert ManifestConfig.from_args([], {"FLEETSUIT_METRICS_HOST": value}).metrics_host == value


@pytest.mark.asyncio
@pytest.mark.parametrize(("metrics_host", "elsewhere"), [("0.0.0.0", True), ("127.0.0.1", False)])
async def test_metrics_bound_to_every_interface_answer_on_another_address(
    metrics_host: str, elsewhere: bool
) -> None:
    """127.0.0.2 stands for a scraper's view of the pod: another address of
    the host, which only a server bound to 0.0.0.0 answers on."""
    port = free_port()
    config = ManifestConfig(
        listen="127.0.0.1:0", metrics_host=metrics_host, metrics_port=port, node_id="m1"
    )
    config.validate()
    assert await answers_elsewhere(lambda stop: serve(config, shutdown=stop), port) is elsewhere
