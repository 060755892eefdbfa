"""The gates of a call (cost reservation, rate-limit lease, claims) end on every path.

No Redis here: a client that is never connected stands in, and the one method of each gate
that would talk to Redis is replaced by a recorder.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import redis

from mitrailleuse.cost.limit import CostLimit, Reservation
from mitrailleuse.pipeline.run_state import RunState
from mitrailleuse.ratelimit import Grant, Limits, RedisLimiter

UNCONNECTED = redis.Redis(host="127.0.0.1", port=1)  # commands would fail: none is sent


class Boom(Exception):
    pass


class DeleteRecorder:
    def __init__(self):
        self.deleted = []

    def delete(self, *names):
        self.deleted.append(names)


@pytest.mark.parametrize("fails", [False, True])
def test_claims_are_freed_whether_the_call_ends_or_raises(fails):
    client = DeleteRecorder()
    run = RunState(client, "r")
    expected = pytest.raises(Boom) if fails else nullcontext()
    with expected, run.holding(["claim:1", "claim:2"]):
        if fails:
            raise Boom
    assert client.deleted == [("claim:1", "claim:2")]


def test_claims_the_records_took_are_not_freed_again():
    client = DeleteRecorder()
    with RunState(client, "r").holding(["claim:1"]) as held:
        held.settled = True  # what store_records(release=held) does
    assert client.deleted == []


@pytest.mark.parametrize(
    ("answer", "given_back"),
    [(Reservation.RESERVED, [0.5]), (Reservation.WAIT, []), (Reservation.EXHAUSTED, [])],
)
def test_a_reservation_is_given_back_on_every_path_and_only_if_made(answer, given_back):
    cost_limit = CostLimit.of_run(UNCONNECTED, "r", limit_usd=1.0)
    returned = []
    cost_limit.reserve = lambda usd, holder: answer
    cost_limit.give_back = lambda usd, holder: returned.append(usd)
    with pytest.raises(Boom), cost_limit.reserved(0.5, "holder") as reservation:
        assert reservation is answer
        raise Boom
    assert returned == given_back


@pytest.mark.parametrize("fails", [False, True])
def test_a_lease_ends_with_the_tokens_the_call_used(fails, monkeypatch):
    monkeypatch.setattr(RedisLimiter, "limits", property(lambda limiter: limiter.configured))
    limiter = RedisLimiter(UNCONNECTED, "openai", "m", Limits(60, 1000, 4))
    released = []
    limiter._release = lambda keys, args: released.append(args)
    expected = pytest.raises(Boom) if fails else nullcontext()
    with expected, limiter.leased(Grant("lease", 100)) as lease:
        if fails:
            raise Boom
        lease.tokens = 42
    assert released == [["lease", 1000, 0 if fails else -58]]


def test_a_lease_ended_with_its_records_is_not_ended_again():
    limiter = RedisLimiter(UNCONNECTED, "openai", "m", Limits(60, None, 4))
    limiter._release = lambda keys, args: pytest.fail("ended twice")
    with limiter.leased(Grant("lease", 100)) as lease:
        lease.ended = True  # as RunState.store_records does
