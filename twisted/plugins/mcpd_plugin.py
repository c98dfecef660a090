from twisted.application.service import ServiceMaker

mcpd = ServiceMaker("mcpd", "mcpd.tap", "Model Context Protocol server daemon", "mcpd")
