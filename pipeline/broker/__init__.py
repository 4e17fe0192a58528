"""A real local Apache Kafka broker (KRaft, single node) assembled from Maven Central.

See :mod:`pipeline.broker.runtime`.
"""

from pipeline.broker.runtime import (
    KAFKA_VERSION,
    BrokerError,
    DetachedBroker,
    KafkaBroker,
    assemble,
    cache_root,
    detached_info,
    stop_detached,
)

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "DetachedBroker",
    "KafkaBroker",
    "assemble",
    "cache_root",
    "detached_info",
    "stop_detached",
]
