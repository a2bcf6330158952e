"""Command-line tools for people: correct images, inspect shards, run the benchmarks."""
