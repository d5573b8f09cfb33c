"""What measures and breaks cdrflow from outside, run by make targets, not by pytest: the
bench (`make bench`, `make profile`), the fault suite (`make chaos`), the cluster failover
(`make cluster-failover`) and the ingress flood. See docs/testing.md and docs/benchmarks.md."""
