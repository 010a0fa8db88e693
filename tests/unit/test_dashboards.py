"""The dashboards: generated JSON matches their code, queries expand as Grafana expands
them, and the push command talks Grafana's HTTP API (against a stand-in Grafana: no Grafana
server can run here; the real check of every query is tests/integration/test_telemetry.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboards import push
from dashboards.build import load_generated, render
from dashboards.queries import expand, panel_queries, variable_values


def test_generated_json_matches_the_code():
    generated = {f"{board['uid']}.json": board for board in load_generated()}
    assert {name: json.loads(text) for name, text in render().items()} == generated
    assert set(generated) == {"tide-overview.json", "tide-pools.json", "tide-kv-movement.json", "tide-elasticity.json",
                              "tide-energy.json"}


@pytest.mark.parametrize("board", load_generated(), ids=lambda b: b["uid"])
def test_every_panel_queries_the_chosen_prometheus(board):
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "model"} <= names
    queries = panel_queries(board)
    assert queries
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["refId"] for t in panel["targets"])
    for query in queries:
        expanded = expand(query.expr, variable_values(board))
        assert "$" not in expanded, expanded


def test_expand_uses_defaults_and_all():
    board = next(b for b in load_generated() if b["uid"] == "tide-overview")
    values = variable_values(board)
    assert values["ttft_slo"] == "0.5" and values["model"] == ".*"
    assert expand('x{le="$ttft_slo", m=~"${model}"}[$__rate_interval]', values, "2m") == 'x{le="0.5", m=~".*"}[2m]'


class _StandInGrafana(BaseHTTPRequestHandler):
    """Answers the handful of Grafana HTTP API calls the push makes, and records them."""

    calls: list[tuple[str, str, dict | None]] = []
    folders: dict[str, dict] = {}

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path, None))
        if self.path.startswith("/api/folders/") and self.path.rsplit("/", 1)[1] in self.folders:
            return self._answer(200, self.folders[self.path.rsplit("/", 1)[1]])
        self._answer(404, {"message": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, body))
        if self.path == "/api/folders":
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"]}
            return self._answer(200, self.folders[body["uid"]])
        if self.path == "/api/dashboards/db":
            return self._answer(200, {"status": "success", "uid": body["dashboard"]["uid"]})
        if self.path == "/api/datasources":
            return self._answer(200, {"id": 1, "name": body["name"]})
        self._answer(404, {"message": "not found"})

    def log_message(self, *args):
        pass


@pytest.fixture
def grafana():
    _StandInGrafana.calls, _StandInGrafana.folders = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_push_creates_the_folder_datasource_and_every_dashboard(grafana, capsys):
    assert push.main(["--grafana-url", grafana, "--token", "t", "--prometheus-url", "http://prom:9090"]) == 0
    posts = [(path, body) for method, path, body in _StandInGrafana.calls if method == "POST"]
    assert ("/api/datasources", {"name": "Prometheus", "type": "prometheus", "url": "http://prom:9090",
                                 "access": "proxy", "isDefault": True}) in posts
    pushed = [body for path, body in posts if path == "/api/dashboards/db"]
    assert sorted(b["dashboard"]["uid"] for b in pushed) == sorted(b["uid"] for b in load_generated())
    assert all(b["folderUid"] == "tide" and b["overwrite"] for b in pushed)
    assert "pushed 5 dashboards" in capsys.readouterr().out


def test_push_to_an_unreachable_grafana_is_one_clear_line(capsys):
    assert push.main(["--grafana-url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tide: pushing dashboards to http://127.0.0.1:9 failed") and "Traceback" not in err
