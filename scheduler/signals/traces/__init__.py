"""Shipped hourly carbon-intensity traces (CSV) used by the backtest."""
