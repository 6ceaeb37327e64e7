"""RQ workers: follow-up queries, canonical events, deduplication and delivery."""
