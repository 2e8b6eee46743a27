"""gRPC servicers, authentication and roles, interceptors, configuration and the `serve` entry point."""
