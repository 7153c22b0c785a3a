"""Training: the loop, backends, launch, artifacts, tracking."""
