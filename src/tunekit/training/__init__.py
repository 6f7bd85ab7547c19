"""Running training: precision choice, memory measurement, and the Trainer wiring."""
