"""Running model-written programs: bubblewrap confinement and the seccomp filter."""
