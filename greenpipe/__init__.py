"""greenpipe: a gevent web app feeding a pool of ZeroMQ workers, acknowledged."""

__version__ = "0.1.0"
