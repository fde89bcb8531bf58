"""Backfills of failed thumbnail partitions on a running Dagster instance, through the
webserver's GraphQL API: the same calls the UI's "Materialize failed partitions" makes, so the
backfill shows on the UI's backfill page and the daemon runs it."""

import requests

FAILED_PARTITIONS = """
query FailedPartitions($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetPartitionStatuses {
      __typename
      ... on DefaultPartitionStatuses { failedPartitions materializingPartitions }
    }
  }
}
"""

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""


class BackfillError(RuntimeError):
    pass


def _graphql(url: str, query: str, variables: dict) -> dict:
    try:
        response = requests.post(
            f"{url.rstrip('/')}/graphql", timeout=60, json={"query": query, "variables": variables}
        )
    except requests.ConnectionError as exc:
        raise BackfillError(
            f"no Dagster webserver answers at {url}: start it with `make dev` (a backfill is run "
            "by the instance's daemon, which `make dev` starts too), or pass --url"
        ) from exc
    if response.status_code != 200:
        raise BackfillError(f"{url} answered {response.status_code}: {response.text[:500]}")
    body = response.json()
    if body.get("errors"):
        raise BackfillError("; ".join(e.get("message", str(e)) for e in body["errors"]))
    return body["data"]


def failed_partitions(url: str, assets: list[str]) -> dict[str, list[str]]:
    """The failed partitions of each asset (not those materializing right now)."""
    data = _graphql(url, FAILED_PARTITIONS, {"keys": [{"path": [a]} for a in assets]})
    failed = {}
    for node in data["assetNodes"]:
        statuses = node["assetPartitionStatuses"]
        name = "/".join(node["assetKey"]["path"])
        busy = set(statuses.get("materializingPartitions") or [])
        failed[name] = [p for p in statuses.get("failedPartitions") or [] if p not in busy]
    return failed


def launch_backfill(url: str, asset: str, partitions: list[str]) -> str:
    params = {
        "assetSelection": [{"path": [asset]}],
        "partitionNames": partitions,
        "title": f"dam backfill-failed: {asset}",
        "tags": [{"key": "dam/backfill", "value": "failed-partitions"}],
    }
    result = _graphql(url, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(
            f"the backfill of {asset} was refused: {result.get('message', result['__typename'])}"
        )
    return result["backfillId"]
