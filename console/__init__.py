"""`payhooks console`: pages and an admin API to see every payment's story and act on it."""
