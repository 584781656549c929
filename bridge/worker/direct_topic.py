"""A Faust topic whose records go straight to the pipeline, past Faust's stream and agent.

Faust's conductor hands every fetched record to each channel subscribed to its topic: it decodes
the record into an event (``channel.decode``), then puts the event on the channel's queue
(``queue.full()``, ``queue.put_nowait_enhanced``), or, when the queue is full, awaits
``channel.put``. A stream takes the event from the queue, an agent iterates the stream, and the
acknowledgement goes back through the stream and its sensors. For the events topic, where the
agent only passed each record on to :class:`bridge.delivery.pipeline.Pipeline`, that machinery cost
more CPU per event than the bridge's own matching (BENCHMARKS.md).

:class:`DirectTopic` keeps what matters of Faust: its consumer and fetcher, the conductor and its
flow control (a rebalance stops the hand-off exactly as before), reference-counted
acknowledgements and offset commits. It replaces the rest: the record is its own event (the
topic's keys and values are raw bytes; nothing is decoded), and the "queue" is the pipeline,
which holds records until the subscription table is current (``full()`` while the pipeline holds
as many as it may, ``put`` waits for room). What a stream did for each record is kept: a record
fetched before a rebalance that has happened since is dropped (a stream acknowledges such a
record; this topic leaves it unacknowledged, the safe side: the partition's owner reads it
again from the committed offset); others are counted in by Faust's sensors
(``faust_messages_received_per_topic_total``...) and, once every delivery job they produced has
settled, acknowledged to Faust's consumer and counted out, and the time of the last record taken
from each partition is kept where Faust's stall check looks for it. The stream's other per-event
sensor calls (``faust_total_events``...) are not made for this topic.

The conductor's own per-record work is skipped for these topics: for every fetched record it
takes a lock over its partition-to-callback index, waits for flow control, waits for Faust's
producer buffer to drain (a buffer only table writes fill; the bridge writes no table), and
builds the sets it needs to fan a record out to several channels and decoders. This topic is the
only channel of its topics, so :meth:`DirectTopic.subscribe` puts a hand-off in front of the
conductor's callback that gives records of these topics to the topic directly (waiting for flow
control as the conductor does) and passes every other record to the conductor.

Records taken before a rebalance are matched and delivered even if their partition moves: the
next owner may deliver them again with the same delivery ids (at-least-once, idempotent by id),
and Faust discards commits for partitions this worker no longer owns.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, Protocol

import faust

from bridge.delivery.job import Ack, SourceRef
from bridge.worker.faust_patches import UNBUFFERED, TakenOffsets, taken_offsets

__all__ = ["DirectTopic", "Intake"]


class Intake(Protocol):
    """What a :class:`DirectTopic` hands records to (:class:`bridge.delivery.pipeline.Pipeline`)."""

    def accepts(self) -> bool: ...

    def offer(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None: ...

    async def handle_event(self, raw: bytes | None, source: SourceRef, ack: Ack) -> None: ...


class _Sink:
    """The channel queue the conductor sees: puts go to the intake."""

    __slots__ = ("_topic",)

    def __init__(self, topic: DirectTopic) -> None:
        self._topic = topic

    def full(self) -> bool:
        intake = self._topic.intake
        return intake is None or not intake.accepts()

    def put_nowait_enhanced(
        self,
        value: Any,
        *,
        on_pressure_high: Callable[[], None] | None = None,
        on_pressure_drop: Callable[[], None] | None = None,
    ) -> None:
        topic = self._topic
        intake = topic.intake
        assert intake is not None  # full() said there is room
        if topic.current(value):
            intake.offer(value.value, SourceRef.of(value), topic.acker(value))


class _HandOff:
    """The consumer's callback: records of a direct topic go to its :class:`DirectTopic`, others
    to ``rest``; every record of a topic whose records are acknowledged is first reported to
    ``taken``, once, so that no commit passes it before it is acknowledged
    (``commit_settled_only``, :mod:`bridge.worker.faust_patches.commits`)."""

    __slots__ = ("_direct", "_rest", "_taken", "_acks_enabled_for")

    def __init__(
        self,
        rest: Callable[[Any], Awaitable[None]],
        taken: TakenOffsets,
        acks_enabled_for: Callable[[str], bool],
    ) -> None:
        self._direct: dict[str, DirectTopic] = {}
        self._rest = rest
        self._taken = taken
        self._acks_enabled_for = acks_enabled_for

    def add(self, direct: DirectTopic) -> None:
        for topic in direct.topics:
            self._direct[topic] = direct

    def __call__(self, message: Any) -> Awaitable[None]:
        direct = self._direct.get(message.topic)
        if direct is not None:
            self._taken.take(message.tp, message.offset)
            return direct.take(message)
        if self._acks_enabled_for(message.topic):
            self._taken.take(message.tp, message.offset)
        return self._rest(message)


class DirectTopic(faust.Topic):
    """Raw-bytes topic whose records are handed to an :class:`Intake` by Faust's conductor.

    ``start_intake`` is awaited (inside the running loop) for the first record that finds no
    intake yet; later records go to ``intake`` directly.
    """

    def __init__(
        self,
        app: faust.App,
        topics: list[str],
        start_intake: Callable[[], Awaitable[Intake]],
    ) -> None:
        self.intake: Intake | None = None
        self._start_intake = start_intake
        self._sink = _Sink(self)
        super().__init__(
            app,
            topics=topics,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            acks=True,
            is_iterator=True,
        )

    def subscribe(self) -> None:
        """Register with the conductor: the worker's consumer subscribes to these topics and
        gives their records to :meth:`take`, the rest to the conductor (before the consumer
        exists: Faust's consumer keeps the callback it was created with)."""
        conductor: Any = self.app.topics
        conductor.add(self)
        hand_off = conductor.on_message
        if not isinstance(hand_off, _HandOff):
            # One hand-off for every direct topic of the app: wrapped in one another, each would
            # report the others' records to ``taken`` again, which takes a record reported twice
            # for a seek back and forgets the records before it.
            hand_off = conductor.on_message = _HandOff(
                hand_off, taken_offsets(self.app), conductor.acks_enabled_for
            )
        hand_off.add(self)

    async def take(self, message: Any) -> Any:
        """One fetched record of these topics, as the conductor would hand it to its only
        channel: after flow control allows, counted once, then offered or waited for.

        Returns ``UNBUFFERED``: the record is in no buffer that a rebalance clears (the
        pipeline keeps what it took), so Faust's consumer need not yield to the loop after
        every such record (:mod:`bridge.worker.faust_patches.handoff`)."""
        flow_control = self.app.flow_control
        if not flow_control.is_active():
            await flow_control.acquire()
        message.incref(1)
        sink = self._sink
        if sink.full():
            self.app.sensors.on_topic_buffer_full(message.tp)
            await self.put(message)
        else:
            sink.put_nowait_enhanced(message)
        return UNBUFFERED

    # -- what the conductor calls ---------------------------------------------------------------
    def _compile_decode(self) -> None:
        # Faust compiles a decoder into ``self.decode``; records here stay as fetched.
        self.decode = self._decode  # type: ignore[method-assign]

    async def _decode(self, message: Any, *, propagate: bool = False) -> Any:
        return message

    @property
    def queue(self) -> Any:
        return self._sink

    async def put(self, value: Any) -> None:
        """The conductor's path when :meth:`_Sink.full` said no: wait for room."""
        intake = self.intake
        if intake is None:
            intake = self.intake = await self._start_intake()
        if self.current(value):
            await intake.handle_event(value.value, SourceRef.of(value), self.acker(value))

    # -- what a stream did for each record -------------------------------------------------------
    def current(self, message: Any) -> bool:
        """Count the record in (Faust's sensors), unless it was fetched before a rebalance
        that has happened since: such a record is dropped, as a stream drops it, but left
        unacknowledged; its partition's owner reads it again from the committed offset."""
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            return False
        app.sensors.on_message_in(message.tp, message.offset, message)
        # What a stream's sensor records per event, and what Faust's consumer checks every few
        # seconds: a partition with records to read whose stream took nothing for
        # ``stream_processing_timeout`` (5 minutes) is logged as a stalled stream.
        app.monitor.stream_inbound_time[message.tp] = monotonic()
        return True

    def acker(self, message: Any) -> Ack:
        return functools.partial(self._ack, message)

    def _ack(self, message: Any) -> None:
        if message.ack(self.app.consumer):
            self.app.sensors.on_message_out(message.tp, message.offset, message)
