"""The imperative shell: file descriptors, clocks, signals and kernel configuration."""
