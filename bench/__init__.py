"""Benchmarks of mcpd against the official MCP Python SDK and a bare Twisted ceiling.

Not a test suite: ``python bench/run.py`` prints figures (see README.rst).
"""
