"""hauler.bench: the library behind the `hauler-bench` microbenchmark CLI."""
