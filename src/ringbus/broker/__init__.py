"""The embedded broker: queues, topics and services over a ZeroMQ ROUTER, stored in a durable log."""
