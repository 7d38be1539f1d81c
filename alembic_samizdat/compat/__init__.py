"""Compatibility layers for modules written for other tools."""
