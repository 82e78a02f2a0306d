"""CLI commands, one module per area; ``greenplace.scheduler.cli`` registers them."""
