"""The relay: connectors dialling in (their admission), the links they become, their sockets,
and the hub that picks a connector for each request."""
