"""Pushes the generated dashboards to a running Grafana through its HTTP API
(`grafana-client`), into one folder, replacing older versions; with `--prometheus-url`
also creates the Prometheus datasource they use if Grafana has none of that name.

    python -m dashboards.push --grafana-url http://localhost:3000 [--token T | --user admin --password P]
"""

from __future__ import annotations

import argparse
import sys

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from dashboards.build import load_generated

FOLDER_TITLE = "Tide"
FOLDER_UID = "tide"
DATASOURCE_NAME = "Prometheus"


def connect(url: str, token: str | None, user: str | None, password: str | None) -> GrafanaApi:
    credential = token if token else ((user, password) if user else None)
    return GrafanaApi.from_url(url, credential=credential)


def ensure_folder(api: GrafanaApi) -> str:
    try:
        return api.folder.get_folder(FOLDER_UID)["uid"]
    except GrafanaClientError:
        return api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)["uid"]


def ensure_datasource(api: GrafanaApi, prometheus_url: str) -> None:
    try:
        api.datasource.get_datasource_by_name(DATASOURCE_NAME)
    except GrafanaClientError:
        api.datasource.create_datasource({"name": DATASOURCE_NAME, "type": "prometheus", "url": prometheus_url,
                                          "access": "proxy", "isDefault": True})


def push(api: GrafanaApi, boards: list[dict]) -> list[str]:
    folder_uid = ensure_folder(api)
    pushed = []
    for board in boards:
        api.dashboard.update_dashboard({"dashboard": {**board, "id": None}, "folderUid": folder_uid,
                                        "overwrite": True, "message": "tide dashboards"})
        pushed.append(board["uid"])
    return pushed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grafana-url", required=True)
    parser.add_argument("--token", help="a Grafana service account token")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--prometheus-url", help="create the Prometheus datasource with this URL if missing")
    args = parser.parse_args(argv)
    api = connect(args.grafana_url, args.token, args.user, args.password)
    try:
        if args.prometheus_url:
            ensure_datasource(api, args.prometheus_url)
        pushed = push(api, load_generated())
    except Exception as exc:  # noqa: BLE001 - any failure is reported as one line, not a traceback
        print(f"tide: pushing dashboards to {args.grafana_url} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"pushed {len(pushed)} dashboards to {args.grafana_url} (folder {FOLDER_TITLE!r}): {', '.join(pushed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
