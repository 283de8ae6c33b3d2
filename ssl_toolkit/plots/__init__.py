"""Plots written into run directories."""
