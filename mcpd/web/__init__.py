"""The HTTP side: the Site and its resource tree (`mcpd.web.site`) and the operator's routes
(`mcpd.web.monitoring`); the policy layer around them is `mcpd.security`."""
