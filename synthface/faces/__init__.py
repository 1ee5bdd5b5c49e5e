"""Face detection, alignment and embedding networks."""
