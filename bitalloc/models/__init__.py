"""Models as bitalloc sees them: a `Task` (model, calibration data, loss, quality, units)."""
