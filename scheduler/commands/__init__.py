"""CLI commands, one module per area; ``scheduler.cli`` registers them."""
