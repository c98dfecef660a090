"""The built-in tool packs and the helpers only they use."""
