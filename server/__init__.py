"""The hagmoe server: REST and gRPC frontends over the engine's client interface."""
