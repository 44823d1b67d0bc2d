"""kdad's benchmarks: speed and memory of every method, measured through the real configs and Lightning loops.

``make bench`` (``python -m bench``) prints the tables and writes JSON; see bench/README.md for what each figure
means and README.md ("Performance") for the figures measured on the project's machines.
"""
