"""Number formats, weight quantizers, the packed-weight codec and the KV-cache quantizer."""
