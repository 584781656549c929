"""Records of one topic gathered into one batch per partition, handed to the producer whole.

aiokafka's ``AIOKafkaProducer.send`` does per-record work (a future per record, the
accumulator's checks, a wait for buffer room) on top of what building the record costs, and the
bridge writes one attempt record per delivery attempt, so that work is a visible share of a
worker's CPU (see BENCHMARKS.md, *Attempt-record batches*). :class:`PartitionBatches` appends
each record to the open batch of its partition (aiokafka's ``BatchBuilder``, the producer's own
format and size limit) and gives the batch to the producer (``send_batch``) when it is full or
``linger`` seconds after its first record, as the producer's own accumulator would. Every
record of a batch shares the batch's acknowledgement: :meth:`PartitionBatches.add` returns a
future that resolves when the broker has acknowledged the batch, or fails with the producer's
error for the whole batch.

- Partitions are chosen as the producer chooses them (its partitioner, the topic's partitions
  from the producer's metadata), so records keyed alike share a partition with records the
  producer writes itself.
- Records of one partition reach the producer in the order they were added: one sender per
  partition hands its batches over in turn (``send_batch`` waits while the partition's previous
  batch is queued in the producer). While it waits, the partition's open batch stays open past
  its linger and takes every record meanwhile: the producer sends one batch per partition per
  produce request, so closing a batch per linger would queue them faster than the broker
  takes them when its answers are slower than the linger.
- A record too big for a batch gets a batch of its own (a builder always takes its first
  record): if the broker refuses it, no other record fails with it.
- :meth:`PartitionBatches.close` hands over what is open and waits for every sender; call it
  before stopping the producer.
- ``settled``, when given, is told of every batch the producer was given once its outcome is
  known: how many records, the seconds from handing it to the producer, and the error (``None``
  when the broker acknowledged it). Cancelled batches (a stopping producer) are not reported.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["PartitionBatches", "Settled"]

#: ``settled(records, seconds, error)``: a batch's outcome (see the module's docstring).
Settled = Callable[[int, float, BaseException | None], None]


class _Batch:
    __slots__ = ("builder", "acknowledged", "due")

    def __init__(self, builder: Any, acknowledged: asyncio.Future[Any]) -> None:
        self.builder = builder
        self.acknowledged = acknowledged
        #: Its linger is over, but the partition's sender was still busy with the batch before.
        self.due = False


def _report(settled: Settled, records: int, handed: float) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback of a batch's acknowledgement telling ``settled`` its outcome."""

    def report(acknowledged: asyncio.Future[Any]) -> None:
        if acknowledged.cancelled():
            return
        seconds = asyncio.get_running_loop().time() - handed
        settled(records, seconds, acknowledged.exception())

    return report


class PartitionBatches:
    """Per-partition batches of ``topic`` for ``producer`` (an ``AIOKafkaProducer``)."""

    def __init__(
        self,
        producer: Any,
        topic: str,
        partitioner: Callable[[bytes | None, list[int], list[int]], int],
        linger: float,
        settled: Settled | None = None,
    ) -> None:
        self._producer = producer
        self._settled = settled
        self._topic = topic
        self._partitioner = partitioner
        self._linger = linger
        self._partitions: list[int] = []
        self._open: dict[int, _Batch] = {}
        self._closed: dict[int, deque[_Batch]] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._timer: asyncio.Handle | None = None
        self._stopping = False

    async def start(self) -> None:
        """Learn the topic's partitions (waits for the producer's metadata of the topic)."""
        self._partitions = list(await self._producer.partitions_for(self._topic))

    def add(self, key: bytes, value: bytes) -> asyncio.Future[Any]:
        """Queue one record; the future resolves when the broker acknowledged its batch."""
        if self._stopping:
            raise RuntimeError("PartitionBatches.add after close()")
        partitions = self._partitions
        partition = self._partitioner(key, partitions, partitions)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._new_batch(partition)
        if batch.builder.append(key=key, value=value, timestamp=None) is None:
            # Full: hand it over and start another, which takes any first record.
            self._hand_over(partition)
            batch = self._new_batch(partition)
            batch.builder.append(key=key, value=value, timestamp=None)
        return batch.acknowledged

    def _new_batch(self, partition: int) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = self._open[partition] = _Batch(self._producer.create_batch(), loop.create_future())
        if self._timer is None:
            self._timer = loop.call_later(self._linger, self._hand_over_all)
        return batch

    def _hand_over_all(self) -> None:
        self._timer = None
        for partition, batch in list(self._open.items()):
            sender = self._senders.get(partition)
            if sender is not None and not sender.done():
                # The producer has not taken the batch before yet: this one stays open and goes
                # to the sender as soon as it has, with everything added meanwhile. Handing it
                # over now would queue one small batch per linger behind the producer, each
                # waiting for a produce request of its own.
                batch.due = True
            else:
                self._hand_over(partition)
        # The producer's view of the topic, for the next records (a topic can grow).
        known = self._producer.client.cluster.partitions_for_topic(self._topic)
        if known:
            self._partitions = list(known)

    def _hand_over(self, partition: int) -> None:
        batch = self._open.pop(partition)
        # Closed: the producer sends it as soon as it can instead of lingering again.
        batch.builder.close()
        self._closed.setdefault(partition, deque()).append(batch)
        sender = self._senders.get(partition)
        if sender is None or sender.done():
            self._senders[partition] = asyncio.get_running_loop().create_task(
                self._send(partition), name=f"batches-{self._topic}-{partition}"
            )

    async def _send(self, partition: int) -> None:
        queue = self._closed[partition]
        while True:
            if not queue:
                open_batch = self._open.get(partition)
                if open_batch is None or not open_batch.due:
                    return
                self._hand_over(partition)  # to this sender, which is still running
            batch = queue.popleft()
            acknowledged = batch.acknowledged
            if self._settled is not None:
                handed = asyncio.get_running_loop().time()
                records = batch.builder.record_count()
                acknowledged.add_done_callback(_report(self._settled, records, handed))
            try:
                sent = await self._producer.send_batch(
                    batch.builder, self._topic, partition=partition
                )
            except asyncio.CancelledError:
                acknowledged.cancel()
                raise
            except Exception as exc:  # refused by the producer: the batch's records failed
                if not acknowledged.done():
                    acknowledged.set_exception(exc)
                continue
            sent.add_done_callback(_copy_to(acknowledged))

    async def close(self) -> None:
        """Hand over the open batches and wait until every batch is with the producer."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        self._hand_over_all()
        senders = [task for task in self._senders.values() if not task.done()]
        if senders:
            await asyncio.gather(*senders, return_exceptions=True)


def _copy_to(target: asyncio.Future[Any]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback giving ``target`` the outcome of the future it is called with."""

    def copy(source: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if source.cancelled():
            target.cancel()
        elif (error := source.exception()) is not None:
            target.set_exception(error)
        else:
            target.set_result(source.result())

    return copy
