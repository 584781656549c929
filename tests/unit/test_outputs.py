"""bridge.outputs: the cached partitioner picks exactly the partitions aiokafka's default does."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.outputs import CachedPartitioner


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=20),
    count=st.integers(1, 64),
)
def test_same_partition_as_the_default_partitioner(keys: list[bytes], count: int) -> None:
    cached = CachedPartitioner(max_keys=8)
    reference = DefaultPartitioner()
    partitions = list(range(count))
    for key in keys + keys:  # the second round comes from the cache (or after a clear)
        assert cached(key, partitions, partitions) == reference(key, partitions, partitions)


def test_known_values_of_the_java_client() -> None:
    """Utils.murmur2 values from Kafka's own UtilsTest, as the Java producer partitions them."""
    java = {b"21": -973932308, b"foobar": -790332482, b"abc": 479470107}
    partitions = list(range(7))
    for key, signed in java.items():
        assert CachedPartitioner()(key, partitions, partitions) == (signed & 0x7FFFFFFF) % 7


def test_no_key_goes_to_an_available_partition() -> None:
    assert CachedPartitioner()(None, [0, 1, 2], [2]) == 2


def test_the_cache_is_bounded() -> None:
    cached = CachedPartitioner(max_keys=4)
    for n in range(10):
        cached(str(n).encode(), [0, 1], [0, 1])
    assert len(cached._hashes) <= 4
