"""Above the services: the ``fleetsuit`` command's entry point (which
registers each service's sub-commands), the local cluster launcher and the
demo. The common package ``fleetsuit`` never imports from here or from any
service; this package may import both."""
