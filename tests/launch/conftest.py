def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: starts a private one-node Slurm cluster (needs slurm-wlm, munge, root)")
