"""The pure core: what a workflow yields (requests), @workflow/@step, the replay driver,
canonical argument text and serialization.

No I/O, no threads, no sqlite3. Imports only `contengine.errors` and `contengine.clock`.
"""
