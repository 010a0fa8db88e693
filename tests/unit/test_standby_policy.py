from __future__ import annotations

from policies.snapshot import ClusterSnapshot, Health, PoolSnapshot, ReplicaId, ReplicaSnapshot, Role
from policies.standby import StandbyView, pools_wanting_a_standby

ROLES = (Role.DECODE, Role.COLOCATED)


def pool(name: str, role: Role, *replicas: tuple[Health, int]) -> PoolSnapshot:
    return PoolSnapshot(name, role, len(replicas), tuple(
        ReplicaSnapshot(ReplicaId(f"{name}-{i}"), name, role, health, num_members=members)
        for i, (health, members) in enumerate(replicas)))


def cluster(*pools: PoolSnapshot) -> ClusterSnapshot:
    return ClusterSnapshot(1, 0.0, pools)


SERVING_PAIR = cluster(pool("colocated", Role.COLOCATED, (Health.HEALTHY, 1), (Health.HEALTHY, 1)))


def test_a_pool_with_a_group_to_drop_gets_a_standby():
    assert pools_wanting_a_standby(SERVING_PAIR, StandbyView(), 2, ROLES) == ("colocated",)


def test_draining_replicas_still_make_a_group():
    snapshot = cluster(pool("colocated", Role.COLOCATED, (Health.HEALTHY, 1), (Health.DRAINING, 1)))
    assert pools_wanting_a_standby(snapshot, StandbyView(), 2, ROLES) == ("colocated",)


def test_starting_dead_and_pipeline_replicas_do_not_make_a_group():
    for other in ((Health.STARTING, 1), (Health.DEAD, 1), (Health.HEALTHY, 2)):
        snapshot = cluster(pool("colocated", Role.COLOCATED, (Health.HEALTHY, 1), other))
        assert pools_wanting_a_standby(snapshot, StandbyView(), 2, ROLES) == (), other


def test_one_standby_per_pool_and_none_while_backing_off_starting_or_switching():
    for view in (StandbyView(with_standby=frozenset({"colocated"})), StandbyView(backing_off=frozenset({"colocated"})),
                 StandbyView(starting=frozenset({"colocated"})), StandbyView(switching=True)):
        assert pools_wanting_a_standby(SERVING_PAIR, view, 2, ROLES) == (), view


def test_only_pools_of_the_dropping_roles_and_each_on_its_own():
    snapshot = cluster(pool("prefill", Role.PREFILL, (Health.HEALTHY, 1), (Health.HEALTHY, 1)),
                       pool("decode", Role.DECODE, (Health.HEALTHY, 1), (Health.HEALTHY, 1), (Health.HEALTHY, 1)),
                       pool("colocated", Role.COLOCATED, (Health.HEALTHY, 1), (Health.HEALTHY, 1)))
    assert pools_wanting_a_standby(snapshot, StandbyView(starting=frozenset({"colocated"})), 3, ROLES) == ("decode",)
    assert pools_wanting_a_standby(snapshot, StandbyView(), 2, ROLES) == ("decode", "colocated")
