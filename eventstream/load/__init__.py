"""The parts of `esc-bench` (eventstream/loadgen.py): client worker processes, latency
histograms, node resource sampling, the run that ties them together, and its report."""
