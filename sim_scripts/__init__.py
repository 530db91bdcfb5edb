"""Thin command-line entry points behind the Makefile targets."""
