import socket

import pytest

from orchestrator.prometheus_runner import PrometheusSettings, PrometheusUnavailable, scrape_config, start_prometheus


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(PrometheusUnavailable, match="already in use"):
            start_prometheus(["127.0.0.1:1"], PrometheusSettings(port=port), tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_scrape_config_lists_every_target_at_the_interval():
    config = scrape_config(["10.0.0.1:8080", "10.0.0.2:8080"], 0.5)
    assert config["global"]["scrape_interval"] == "500ms"
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["10.0.0.1:8080", "10.0.0.2:8080"]
