"""One drive of one run: rebuild it from its log with the driver, run its steps, commit
each outcome; gathers, child runs, the live-generator cache and the threads that drive.

Imports `contengine.store` (through its interface), `contengine.core`, `contengine.errors`
and `contengine.clock`; never the engine, the command line or the tools.
"""
