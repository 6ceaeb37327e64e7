"""Trying payhooks on one machine: `payhooks dev`, `payhooks simulate`, the provider
simulators and a Redis server of its own. None of it runs in production; it imports the
core (`shared`) and nothing imports it but the CLI's commands. Its extra dependencies are
the `sandbox` extra."""
