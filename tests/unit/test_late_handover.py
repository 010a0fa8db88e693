"""A replica that has handed its requests over (a dropped group's member, or a restoring
pipeline) sends a request submitted afterwards straight on to the destinations, with the
KV it came with, instead of starting it on an engine about to stop."""

import asyncio

from vllm import SamplingParams

from actors.kv.medium import KVHandle, MediumKind
from actors.messages import TokenRequest
from actors.outbox import MigrationNotice
from actors.replica_streams import PARAMETER_DROP_HANDOVER, ChannelStreams
from policies.snapshot import RequestId


class StoppingReplica(ChannelStreams):
    replica_id = "pipeline-0"

    def __init__(self):
        self._init_streams()


def _request(i: int, handle: KVHandle | None) -> TokenRequest:
    return TokenRequest(RequestId(f"r{i}"), list(range(40)), SamplingParams(max_tokens=8), kv_handle=handle)


async def test_a_request_after_the_hand_over_goes_on_to_the_destinations_with_its_kv():
    replica = StoppingReplica()
    assert await replica.hand_over_all(["member-a", "member-b"]) == (0, 0)
    prefilled = KVHandle(MediumKind.DISK, "prefill-0", "node", 32, 1, 1024, path="/tmp/x.kv")
    for i in range(3):
        replica.submit(_request(i, prefilled if i == 0 else None), "channel")
    notices = await replica._outboxes["channel"].take()
    assert notices == [
        MigrationNotice(RequestId("r0"), "pipeline-0", "member-a", prefilled, PARAMETER_DROP_HANDOVER),
        MigrationNotice(RequestId("r1"), "pipeline-0", "member-b", None, PARAMETER_DROP_HANDOVER),
        MigrationNotice(RequestId("r2"), "pipeline-0", "member-a", None, PARAMETER_DROP_HANDOVER),
    ]
    assert not replica._running


async def test_before_a_hand_over_a_request_starts_here():
    replica = StoppingReplica()
    started = []

    async def generate(request):
        started.append(request.request_id)
        return
        yield

    replica.generate = generate
    replica.submit(_request(0, None), "channel")
    await asyncio.gather(*replica._pumps)
    assert started == ["r0"]
