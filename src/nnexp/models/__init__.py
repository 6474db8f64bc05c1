"""Built-in model plugins; each module registers one model builder."""
