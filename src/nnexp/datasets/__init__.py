"""Built-in dataset plugins; each module registers one dataset."""
