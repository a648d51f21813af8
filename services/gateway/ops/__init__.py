"""Operations: the health probe and the Prometheus exposition."""
