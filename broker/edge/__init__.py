"""The edge: where client connections arrive (the listener), the express lane that serves the
common API request on a bare protocol, the aiohttp adapter for every other request, and the
hand-over of a connection between them."""
