"""The processing stages, one module each; none of them knows about Kafka."""
