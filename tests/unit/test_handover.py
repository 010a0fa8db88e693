import pytest

from policies.handover import spread_by_tokens


def test_the_largest_requests_go_first_to_the_least_loaded_member():
    requests = [("a", 100), ("b", 900), ("c", 400), ("d", 500), ("e", 50)]
    placement = spread_by_tokens(requests, ["m0", "m1"])
    assert placement == {"b": "m0", "d": "m1", "c": "m1", "a": "m0", "e": "m1"}
    load = {m: sum(t for r, t in requests if placement[r] == m) for m in ("m0", "m1")}
    assert load == {"m0": 1000, "m1": 950}


def test_every_request_is_placed_once_on_a_listed_destination():
    requests = [(f"r{i}", (i * 37) % 101) for i in range(40)]
    placement = spread_by_tokens(requests, ["m0", "m1", "m2"])
    assert sorted(placement) == sorted(r for r, _ in requests)
    assert set(placement.values()) == {"m0", "m1", "m2"}
    loads = [sum(t for r, t in requests if placement[r] == m) for m in ("m0", "m1", "m2")]
    assert max(loads) - min(loads) <= max(t for _, t in requests)


def test_one_destination_takes_everything_and_none_is_refused():
    assert spread_by_tokens([("a", 3), ("b", 5)], ["pipeline"]) == {"a": "pipeline", "b": "pipeline"}
    assert spread_by_tokens([], ["m0", "m1"]) == {}
    with pytest.raises(ValueError, match="at least one destination"):
        spread_by_tokens([("a", 3)], [])
