"""nsa_core: the library behind the NSA replication notebooks (see README.md).

Importing it changes nothing in the process: the entry points (the CLI, the trainer,
`reproduce`, the benchmark) apply the settings they need (runtime.py)."""
