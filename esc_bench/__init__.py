"""`esc-bench`, the load generator and benchmark driver, kept apart from the product it measures:
client worker processes and the native load engine, latency histograms, node resource sampling,
the run that ties them together and its report (cli.py is the command), plus the storage append
and replication-mode comparisons. The node never imports it."""
