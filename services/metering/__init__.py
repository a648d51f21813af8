"""The metering service: durable usage events, cumulative counters and throughput."""
