"""`payhooks chaos`: the real system under faults, then an account of every callback
(tests/chaos/run.py)."""
