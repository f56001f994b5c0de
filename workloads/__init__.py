"""Ray driver programs that run on the ray-gcp cluster; see workloads/README.md."""
