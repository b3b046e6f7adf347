"""Write side: command API, single-writer processor, pure decisions."""
