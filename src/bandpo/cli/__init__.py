"""Command-line interface of bandpo."""
