"""Images, subjects and patch locations: what flows through the pipeline."""
