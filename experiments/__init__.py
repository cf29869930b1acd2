"""Multi-run tools: the sweep launcher, the report, and analyses built on run directories."""
