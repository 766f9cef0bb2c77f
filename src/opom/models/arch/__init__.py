"""Full-size face-recognition architectures that load the public checkpoints people already have."""
