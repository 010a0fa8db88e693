"""Where a replica's running requests go when it hands them all over at once: a
parameter drop's members to their pipeline, a restore's pipeline back to its members.
Pure: (request, tokens) pairs in, a destination per request out.

Largest first, each to the destination holding the fewest tokens so far (ties go to the
first listed), so the members start about equally loaded (greedy LPT scheduling: within
4/3 of the best split)."""

from __future__ import annotations

from collections.abc import Sequence


def spread_by_tokens(requests: Sequence[tuple[str, int]], destinations: Sequence[str]) -> dict[str, str]:
    """Maps each request id of `requests` (id, tokens so far) to one of `destinations`."""
    if not destinations:
        raise ValueError("a hand-over needs at least one destination")
    load = dict.fromkeys(destinations, 0)
    placement = {}
    for request_id, tokens in sorted(requests, key=lambda r: -r[1]):
        destination = min(destinations, key=lambda d: load[d])
        load[destination] += tokens
        placement[request_id] = destination
    return placement
