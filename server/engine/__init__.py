"""Inference engines behind one interface (``server.engine.base.Engine``)."""
