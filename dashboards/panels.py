"""Building blocks shared by every dashboard: the Prometheus datasource variable, the
model/pool/replica variables, and panels that take PromQL.

Every series Tide exports leaves Ray's metrics agents with a `ray_` prefix: vLLM's own
metrics as `ray_vllm_*`, Tide's as `ray_tide_*`, Ray Serve's as `ray_serve_*`."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, stat, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# Label matchers every replica-level query carries.
REPLICAS = 'pool=~"$pool", replica=~"$replica"'
MODEL = 'model_name=~"$model"'
FRONT_DOOR = 'role="ingress"'


def new_dashboard(uid: str, title: str, description: str, replica_variables: bool = True) -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard(title).uid(uid).description(description)
        .tags(["tide", "generated"]).refresh("10s").time("now-30m", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(label_variable("model", "ray_vllm_num_requests_running", "model_name"))
    )
    if replica_variables:
        board = (board
                 .with_variable(label_variable("pool", "ray_tide_replica_up", "pool"))
                 .with_variable(label_variable("replica", 'ray_tide_replica_up{pool=~"$pool"}', "replica")))
    return board


def label_variable(name: str, series: str, label: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name).label(name).datasource(DATASOURCE)
        .query(f"label_values({series}, {label})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True).include_all(True).all_value(".*")
    )


def query(expr: str, legend: str = "") -> Dataquery:
    q = Dataquery().expr(expr).datasource(DATASOURCE)
    return q.legend_format(legend) if legend else q


def quantiles(histogram: str, matchers: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[Dataquery]:
    """p50/p90/p99 of a histogram (`histogram` is the name without `_bucket`)."""
    group = f"le, {by}" if by else "le"
    legend_by = f" {{{{{by}}}}}" if by else ""
    return [
        query(f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{{{matchers}}}[{RATE}])))",
              f"p{round(q * 100)}{legend_by}")
        for q in qs
    ]


def graph(title: str, unit: str, queries: list[Dataquery], description: str = "", width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).span(width).height(8)
    if description:
        panel = panel.description(description)
    for index, q in enumerate(queries):
        panel = panel.with_target(q.ref_id(chr(ord("A") + index)))
    return panel


def single(title: str, unit: str, expr: str, description: str = "", width: int = 6) -> stat.Panel:
    panel = stat.Panel().title(title).unit(unit).datasource(DATASOURCE).span(width).height(4).with_target(query(expr).ref_id("A"))
    return panel.description(description) if description else panel


def choice_variable(name: str, label: str, values: tuple[str, ...], default: str) -> dashboard.CustomVariable:
    return (
        dashboard.CustomVariable(name).label(label).values(",".join(values))
        .current(VariableOption(selected=True, text=default, value=default))
        .options([VariableOption(selected=v == default, text=v, value=v) for v in values])
    )
