"""Device side of the cost models: built-in device specs, measurement plans, runners and measured profiles."""
