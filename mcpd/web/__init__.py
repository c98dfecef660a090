"""The HTTP side: the resource tree and the policies that wrap every transport."""
