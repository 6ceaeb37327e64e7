"""The aiohttp ingress: verify a callback, store it as an RQ job, answer the provider."""
