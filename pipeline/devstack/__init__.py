"""The dataflow on one machine: a real local Kafka broker, the stack of processes, the demo and the stack benchmarks."""
