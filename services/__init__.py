"""The stack's services: engine, gateway and metering."""
