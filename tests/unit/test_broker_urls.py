"""`CDRFLOW_AMQP_URL` with one node or the nodes of a cluster."""

from __future__ import annotations

import pytest

from cdrflow.amqp import broker_urls, node_address


def test_one_url_is_one_node() -> None:
    assert broker_urls("amqp://guest:guest@127.0.0.1:5672/") == [
        "amqp://guest:guest@127.0.0.1:5672/"
    ]


def test_commas_separate_the_nodes_of_a_cluster_in_their_order() -> None:
    setting = (
        " amqp://u:p@rabbit-1:5672/cdr , amqp://u:p@rabbit-2:5672/cdr,amqp://u:p@rabbit-3/cdr,"
    )
    assert broker_urls(setting) == [
        "amqp://u:p@rabbit-1:5672/cdr",
        "amqp://u:p@rabbit-2:5672/cdr",
        "amqp://u:p@rabbit-3/cdr",
    ]


def test_a_percent_encoded_comma_stays_in_its_password() -> None:
    assert broker_urls("amqp://u:a%2Cb@r1/,amqp://u:a%2Cb@r2/") == [
        "amqp://u:a%2Cb@r1/",
        "amqp://u:a%2Cb@r2/",
    ]


@pytest.mark.parametrize("setting", ["", " , ,"])
def test_no_url_at_all_is_refused(setting: str) -> None:
    with pytest.raises(ValueError, match="no RabbitMQ URL"):
        broker_urls(setting)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("amqp://user:secret@rabbit-2:5712/cdr", "rabbit-2:5712"),
        ("amqp://user:secret@rabbit-2/cdr", "rabbit-2:5672"),
        ("amqps://user:secret@rabbit-2/cdr", "rabbit-2:5671"),
    ],
)
def test_a_node_is_logged_by_address_without_its_credentials(url: str, address: str) -> None:
    assert node_address(url) == address
    assert "secret" not in node_address(url)
