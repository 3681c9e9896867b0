"""Programs built on the engine: the demo and the benchmarks (`contengine demo`, `bench`)."""
