"""Multi-device session store for API gateways, backed by Redis."""

__version__ = "0.1.0"
