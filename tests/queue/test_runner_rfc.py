"""QueueRunner against RFC 5321 §3.8/§4.5.3.1.10, RFC 3463 and RFC 3461/3464 rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mxd.store.interfaces import OutboundMessage, OutboundRecipient
from tests.queue.test_runner import BODY, World, _report


@pytest.fixture
def world(data_dir: Path) -> Any:
    w = World(data_dir)
    yield w
    w.h.close()


def test_552_to_rcpt_is_retried_not_bounced(world: World) -> None:
    """RFC 5321 §4.5.3.1.10: "552 too many recipients" at RCPT defers the recipient (with a
    4.x.x status for its later reports) and sends no failure DSN."""
    world.sink.behaviour.rcpt["y@remote.test"] = "552 5.5.3 too many recipients"
    world.enqueue("x@remote.test", "y@remote.test")
    world.start()
    world.clock.advance(0)
    [m] = world.queued()
    [r] = m.recipients
    assert (r.address, r.attempts, r.last_code, r.last_enhanced) == (
        "y@remote.test", 1, 552, "4.5.3")
    assert world.local.boxes["a@example.org"] == []


@pytest.mark.parametrize("extensions", [("PIPELINING",), ()])
def test_421_to_mail_from_tries_the_next_mx(world: World, extensions: tuple[str, ...]) -> None:
    """RFC 5321 §3.8: a 421 is the server closing the channel, no verdict on the message:
    the next MX host gets the message (with and without PIPELINING)."""
    world.sink.behaviour.extensions = extensions
    world.resolver.add("two.test", "MX", ["10 a.two.test.", "20 b.two.test."])
    world.resolver.add("a.two.test", "A", ["192.0.2.1"])
    world.resolver.add("b.two.test", "A", ["192.0.2.2"])
    world.sink.behaviour.mail["192.0.2.1"] = "421 4.3.2 shutting down"
    world.enqueue("x@two.test")
    world.start()
    world.clock.advance(0)
    assert world.sink.connections == ["192.0.2.1", "192.0.2.2"]
    assert [r.ip for r in world.sink.received] == ["192.0.2.2"]
    assert world.queued() == []


def test_unanswered_connection_is_4_4_1(world: World) -> None:
    """RFC 3463 §3.5: a connection attempt that is not answered is X.4.1 (X.4.2 is for a
    connection that was established)."""
    world.sink.refuse.add("192.0.2.10")
    world.enqueue("x@remote.test")
    world.start()
    world.clock.advance(0)
    [m] = world.queued()
    assert m.recipients[0].last_enhanced == "4.4.1"


def test_local_delivery_with_notify_success_reports_delivered(world: World) -> None:
    """RFC 3464 §2.3.3 / RFC 3461 §6.2.1: final delivery into a local mailbox is "delivered",
    not "relayed" (which is for handing on to an MTA without DSN)."""
    world.local.boxes["b@example.org"] = []
    w = world.h.store.new_blob()
    w.write(BODY)
    world.h.run(world.queue.enqueue(w, OutboundMessage(
        "a@example.org", (OutboundRecipient("b@example.org", notify=frozenset({"SUCCESS"})),))))
    world.start()
    world.clock.advance(0)
    assert len(world.local.boxes["b@example.org"]) == 1
    [dsn] = world.local.boxes["a@example.org"]
    assert _report(dsn)[1]["action"] == "delivered"
