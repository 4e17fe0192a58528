"""A real local Apache Kafka broker (KRaft, single node) assembled from Maven Central.

See :mod:`pipeline.devstack.broker.runtime`.
"""

from pipeline.devstack.broker.runtime import (
    KAFKA_VERSION,
    BrokerError,
    DetachedBroker,
    KafkaBroker,
    assemble,
    detached_info,
    stop_detached,
)

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "DetachedBroker",
    "KafkaBroker",
    "assemble",
    "detached_info",
    "stop_detached",
]
