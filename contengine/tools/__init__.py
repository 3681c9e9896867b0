"""Programs built on the engine: the demo and the benchmarks (`contengine demo`, `bench`).

May import the engine and the layers below it (drive, store, core, errors, clock), and
sqlite3 for the benchmark's raw floor; never the command line or the testing kit.
"""
