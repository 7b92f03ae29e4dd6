"""Channels that bring users' messages to the gateway from elsewhere (WeCom)."""
