"""The reference device agent (``fleetsuit device run``) and the fleet
simulator (``fleetsuit device simulate``): the device's side of a gateway
session. Imports the common package and the SUIT library, never a service."""
