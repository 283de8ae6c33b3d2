"""Performance benchmarks behind `ssl-toolkit bench`."""
