"""The outbound queue: persistent, Deferred-based delivery with retries and DSNs."""
