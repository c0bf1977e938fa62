"""Performance: throughput benchmarks beside peers, and the fast inference path."""
