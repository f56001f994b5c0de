"""ray-gcp benchmarks: side-by-side comparisons on the local fake-node Ray cluster.

Run ``python -m bench`` (or ``make bench``); see bench/README.md.
"""
